"""Structured pruning of ViT heads and MLP width (Torch-Pruning)."""
from evit_training.prune.vit_pruning import (PruneResult, apply_pruned_architecture,
                                             count_macs_params, prune_vit, pruned_architecture)

__all__ = ["PruneResult", "apply_pruned_architecture", "count_macs_params",
           "prune_vit", "pruned_architecture"]
