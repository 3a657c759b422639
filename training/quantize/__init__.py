"""Quantization of exported detectors: FP16 for GPUs, INT8 static QDQ with sensitivity analysis."""
