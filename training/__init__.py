"""evit_training: compress vision transformers into small detectors for evit_perception.

Installed as ``evit_training`` (setup.py maps training/ onto that name). Teacher training,
knowledge distillation (logit, feature, data-free), structured pruning, quantization, ONNX
export and TensorRT engine builds, with a stage-by-stage report.
"""
__version__ = "0.1.0"
