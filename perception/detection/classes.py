"""Where the bundled weights live and how class names are read: shared by manifests, plain ONNX
models and the nodes that label or judge detections."""

from __future__ import annotations

from pathlib import Path

from perception.config import ConfigError

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
COCO_CLASSES = WEIGHTS_DIR / "coco_classes.txt"


def read_class_names(path: Path) -> list[str]:
    """Class names, one per line in the detector's class order (blank lines ignored). OSError if unreadable."""
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def class_name(class_names: list[str], class_id: int) -> str:
    """The name of `class_id`, or the id itself where the list has no name for it."""
    return class_names[class_id] if 0 <= class_id < len(class_names) else str(int(class_id))


def shown_classes(class_names: list[str], limit: int = 12) -> str:
    """A class list as an error line shows it: the first `limit` names, and how many more."""
    extra = len(class_names) - limit
    return ", ".join(class_names[:limit]) + (f" and {extra} more" if extra > 0 else "")


def detections_class_names(from_model: list[str], classes_file: Path | None) -> list[str]:
    """The names of the class ids in the detections a node reads: `from_model`, the class names of the
    detector's model the launcher found in the graph (node.class_names), else `classes_file`, else
    COCO's (the bundled model's). A classes_file that names other classes than the model is a
    ConfigError: a decision node reading id 0 as "person" from a model whose 0 is "car" would judge
    the wrong objects."""
    if classes_file is None:
        return list(from_model) or read_class_names(COCO_CLASSES)
    try:
        names = read_class_names(classes_file)
    except OSError as exc:
        raise ConfigError(f"classes_file: cannot read {classes_file} ({exc.strerror})") from None
    if from_model and names != list(from_model):
        raise ConfigError(f"classes_file: {classes_file} names {_few(names)}, the detector's model {_few(from_model)}; "
                          "remove classes_file: the launcher takes the names from the model")
    return names


def _few(names: list[str]) -> str:
    return f"{len(names)} classes (" + ", ".join(names[:4]) + (", ..." if len(names) > 4 else "") + ")"
