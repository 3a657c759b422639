"""Knowledge distillation: dense-output (logit) KD, feature KD, DeiT distillation token;
data-free KD lives in ``data_free`` / ``generator``."""
from .feature_kd import FeatureProjector, feature_kd_loss
from .logit_kd import logit_kd_loss
from .objective import DistillationObjective, KDConfig

__all__ = ["DistillationObjective", "FeatureProjector", "KDConfig", "feature_kd_loss", "logit_kd_loss"]
