"""Inference: ``optimize`` (BN folding, SE fusions), exports (ONNX / TorchScript / torch.export),
INT8 quantization and running exported files. onnx / onnxruntime are imported only when used."""
from .optimize import optimize

__all__ = ['optimize']
