"""Other engines on placed memory: ONNX Runtime sessions and PyTorch modules, one per node."""
