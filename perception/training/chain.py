"""A manifest's ONNX parts run through ONNX Runtime on a real frame, features fed by name: the check
that `perception export` (the parts against the original network) and `perception export --direct`
(a direct graph against the parts) both make."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from perception import REPO

DEFAULT_VERIFY_VIDEO = REPO / "recordings" / "udacity_dashcam.mp4"  # never the evaluation video


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def run_chain(manifest_path: Path, images: np.ndarray, threads: int = 1) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Run every part of a manifest once through onnxruntime, features passed by name.
    Returns all tensors and each part's median latency in ms over a few runs."""
    from perception.detection.manifest import load_manifest

    manifest = load_manifest(manifest_path)
    tensors = {manifest.input.name: images}
    latency_ms = {}
    parts = [(s.name, s.file, s.inputs) for s in manifest.stages] + [(e.name, e.file, e.inputs) for e in manifest.exits if e.file]
    for name, file, inputs in parts:
        session = ort_session(file, threads)
        feeds = {n: tensors[n] for n in inputs}
        times = []
        for _ in range(12):  # the first runs warm caches up; the median ignores them and outliers
            start = time.perf_counter()
            outputs = session.run(None, feeds)
            times.append(time.perf_counter() - start)
        tensors.update(zip((o.name for o in session.get_outputs()), outputs))
        latency_ms[name] = float(np.median(times[2:]) * 1e3)
    return tensors, latency_ms


def verification_frame(video: Path = DEFAULT_VERIFY_VIDEO) -> np.ndarray:
    """A real frame (the first of `video`), or a fixed random image if it cannot be read."""
    import cv2

    capture = cv2.VideoCapture(str(video))
    ok, frame = capture.read()
    capture.release()
    return frame if ok else np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)


def verification_image(video: Path = DEFAULT_VERIFY_VIDEO) -> np.ndarray:
    """verification_frame letterboxed to 416x416."""
    from perception.detection.yolox import letterbox

    return letterbox(verification_frame(video), 416, 416)[0]
