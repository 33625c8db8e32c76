"""Inference: ``optimize`` (BN folding, SE fusions), exports (ONNX / TorchScript / torch.export / OpenVINO IR),
INT8 quantization, running exported files, and ``benchmark`` (which path is fastest on this CPU). onnx /
onnxruntime / openvino / nncf are imported only when used."""
from .optimize import optimize

__all__ = ['optimize']
