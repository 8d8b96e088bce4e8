"""perception: a low-latency autonomous perception pipeline."""

from pathlib import Path

__version__ = "0.1.0"

# The checkout: bundled recordings, configs and launch files live beside the package (editable install).
REPO = Path(__file__).resolve().parents[1]
