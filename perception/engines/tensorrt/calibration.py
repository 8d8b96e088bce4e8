"""INT8 calibration on real video frames, on the CPU, into the table ONNX Runtime's TensorRT provider reads.

The provider does not calibrate: it sets each tensor's dynamic range from a table (trt_int8_calibration_
table_name). The table is made here with onnxruntime.quantization's entropy (KL-divergence) calibrator,
the approach of TensorRT's own IInt8EntropyCalibrator2, on frames letterboxed exactly as the detector
feeds them. That runs on any CPU; it needs the `onnx` package, which onnxruntime.quantization imports.

Only a part whose single input is the [1,3,H,W] image can be calibrated on frames (the full model,
stage0); later stages and exit heads take feature maps and are built in fp16.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import onnxruntime as ort

from perception.engines.base import EngineUnavailable
from perception.engines.tensorrt.cache import atomic_write

log = logging.getLogger(__name__)


def static_input_shape(name: str, shape: tuple[Any, ...]) -> tuple[int, ...]:
    """The shape an input is calibrated for: a dynamic batch dimension (ONNX Runtime reports it as a name,
    None or -1) becomes 1, one frame at a time; any other dynamic dimension left is an error, since nothing
    here would know what to pick (named ones get their sizes in image_input)."""
    dims = [d if isinstance(d, int) and d >= 0 else -1 for d in shape]
    if any(d < 0 for d in dims[1:]):
        raise EngineUnavailable(f"input {name} has dynamic dimensions {dims} beyond the batch and no sizes for them "
                                "(the detector and build-engine pin them to the manifest's input size)")
    return tuple(1 if d < 0 else d for d in dims)


def image_input(onnx_path: Path, part_name: str,
                dimensions: Mapping[str, int] | None = None) -> tuple[str, tuple[int, int, int, int]]:
    """The single [1,3,H,W] input a part must have to be calibrated on letterboxed frames; its named
    dimensions take their values from `dimensions` (the sizes the engine is built for)."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    inputs = [(i.name, tuple(i.shape)) for i in session.get_inputs()]
    if len(inputs) == 1:
        name, shape = inputs[0]
        fixed = static_input_shape(name, tuple((dimensions or {}).get(d, d) if isinstance(d, str) else d for d in shape))
        if len(fixed) == 4 and fixed[0] == 1 and fixed[1] == 3:
            return name, fixed  # type: ignore[return-value]
    raise EngineUnavailable(f"{part_name}: int8 calibration feeds letterboxed frames, but its inputs are {inputs}; "
                            "build this part in fp16")


def calibration_batches(video: Path | None, frames: int, width: int, height: int,
                        pad_value: float = 114.0) -> Iterator[np.ndarray]:
    """Up to `frames` letterboxed frames of a real video as float32 [1,3,height,width] batches, as the
    detector preprocesses them. Checks the video now, not on the first batch."""
    from perception.sources import SourceError, VideoFileSource

    if video is None:
        raise EngineUnavailable("int8 needs a calibration video (tensorrt.calibration_video / --calibration-video)")
    try:
        source = VideoFileSource(Path(video))
    except SourceError as exc:
        raise EngineUnavailable(f"int8 calibration: {exc}") from None
    return _letterboxed_frames(source, frames, width, height, pad_value)


def _letterboxed_frames(source: Any, frames: int, width: int, height: int, pad_value: float) -> Iterator[np.ndarray]:
    from perception.detection.yolox import letterbox

    count = 0
    try:
        while count < frames:
            item = source.read()
            if item is None:
                log.warning("calibration video %s has only %d of the %d frames asked for", source.path, count, frames)
                return
            batch, _ = letterbox(item[0], width, height, pad_value)
            count += 1
            yield batch
    finally:
        source.close()


class _Frames:
    """onnxruntime.quantization's CalibrationDataReader protocol: feeds, then None."""

    def __init__(self, input_name: str, batches: Iterator[np.ndarray]) -> None:
        self.input_name = input_name
        self.batches = batches
        self.count = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        if batch is None:
            return None
        self.count += 1
        return {self.input_name: batch}


def write_calibration_table(onnx_path: Path, part_name: str, table_path: Path, video: Path | None, frames: int,
                            dimensions: Mapping[str, int] | None = None) -> int:
    """Calibrate `onnx_path` on up to `frames` frames of `video` and write the provider's table to
    `table_path`; returns the number of frames used. `dimensions`: as for image_input."""
    try:
        from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator
        from onnxruntime.quantization.quant_utils import write_calibration_table as write_tables
    except ImportError as exc:
        raise EngineUnavailable(f"int8 calibration needs onnxruntime.quantization, which cannot import ({exc}); "
                                "pip install onnx") from None
    name, (_, _, height, width) = image_input(onnx_path, part_name, dimensions)
    batches = calibration_batches(video, frames, width, height)
    first = next(batches, None)
    if first is None:
        raise EngineUnavailable(f"int8 calibration: {video} gave no frames")
    reader = _Frames(name, itertools.chain([first], batches))
    with tempfile.TemporaryDirectory(dir=table_path.parent, prefix=".calibration.") as work:
        # The calibrator prints its progress; keep it out of a node's stdout.
        progress = io.StringIO()
        with contextlib.redirect_stdout(progress):
            calibrator = create_calibrator(onnx_path, augmented_model_path=str(Path(work) / "augmented.onnx"),
                                           calibrate_method=CalibrationMethod.Entropy,
                                           providers=["CPUExecutionProvider"])
            calibrator.collect_data(reader)
            write_tables(calibrator.compute_data(), work)
        log.debug("%s: calibration output: %s", part_name, progress.getvalue().strip())
        atomic_write(table_path, (Path(work) / "calibration.flatbuffers").read_bytes())
    log.info("%s: int8 calibration table %s from %d frames of %s", part_name, table_path, reader.count, video)
    return reader.count
