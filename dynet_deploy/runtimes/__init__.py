"""Backends that run a model: PyTorch, onnxruntime, TensorRT (optional, imported lazily)."""
