"""Inference engines behind one interface: ONNX Runtime (default), TensorRT, PyTorch (reference)."""

from perception.engines.base import Engine, EngineConfig, EngineUnavailable, Session, TensorRTConfig, create_engine

__all__ = ["Engine", "EngineConfig", "EngineUnavailable", "Session", "TensorRTConfig", "create_engine"]
