"""Training, export and PyTorch reference code for the adaptive-depth detector (needs the `train` extra: torch, onnx)."""
