"""Small image classifiers used to study distillation offline: scikit-learn's bundled digits
upscaled to 32x32 and tiny timm ViT classifiers (teacher and student).

Used by the data-free KD benchmark and tests; nothing here downloads anything.
"""
from evit_training.classification.digits import DigitsDataset, load_digits_split
from evit_training.classification.models import (CLASSIFIER_CONFIGS, ViTClassifier, create_classifier,
                                                   load_classifier, save_classifier)
from evit_training.classification.train import evaluate_accuracy, train_classifier

__all__ = ["CLASSIFIER_CONFIGS", "DigitsDataset", "ViTClassifier", "create_classifier", "evaluate_accuracy",
           "load_classifier", "load_digits_split", "save_classifier", "train_classifier"]
