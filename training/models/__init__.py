"""ViT detectors: timm backbones, CenterNet-style head, named configs, checkpoints."""
from .configs import CONFIGS, DEFAULT_CLASS_NAMES, config_names, resolve_config
from .decode import decode_detections
from .detector import ViTDetector, create_detector

__all__ = ["CONFIGS", "DEFAULT_CLASS_NAMES", "ViTDetector", "config_names", "create_detector",
           "decode_detections", "resolve_config"]
