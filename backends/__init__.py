"""vitgraph.backends: lowering of the checked IR to PyTorch and to ONNX (imported lazily by name)."""
