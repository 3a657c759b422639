"""ONNX export (opset 16 default, contract embedded, torch-vs-ORT check)."""
from .onnx_export import DEFAULT_OPSET, ExportError, export_onnx

__all__ = ["DEFAULT_OPSET", "ExportError", "export_onnx"]
