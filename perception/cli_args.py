"""Arguments and checks the file-to-file commands share (render, convert, migrate): the class names of
the detector that recorded a drive, and an output that must not exist yet."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from perception.detection.classes import COCO_CLASSES, read_class_names


def add_classes_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--classes", type=Path, default=COCO_CLASSES,
                        help="class names of the detector that recorded the drive, one per line in its order "
                             "(default: COCO's, the bundled model's)")


def read_classes(path: Path, command: str) -> list[str] | None:
    """The names in `path`, or None after one line saying why not."""
    try:
        return read_class_names(path)
    except OSError as exc:
        print(f"{command}: {path}: cannot read class names ({exc.strerror})", file=sys.stderr)
        return None


def output_taken(path: Path, command: str) -> bool:
    """True (after one line) when `path` exists: these commands never overwrite."""
    if path.exists():
        print(f"{command}: {path} exists; remove it or choose another name", file=sys.stderr)
        return True
    return False
