"""Where the bundled weights live and how class names are read: shared by manifests, plain ONNX
models and the nodes that label detections."""

from __future__ import annotations

from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
COCO_CLASSES = WEIGHTS_DIR / "coco_classes.txt"


def read_class_names(path: Path) -> list[str]:
    """Class names, one per line in the detector's class order (blank lines ignored). OSError if unreadable."""
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
