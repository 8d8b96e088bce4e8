"""perception: a low-latency autonomous perception pipeline."""

__version__ = "0.1.0"
