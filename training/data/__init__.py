"""Training data: synthetic aerial scenes and flights, COCO JSON / YOLO-txt loaders."""
from .synthetic import CLASS_NAMES, generate_dataset, render_scene

__all__ = ["CLASS_NAMES", "generate_dataset", "render_scene"]
