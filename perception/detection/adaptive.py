"""Run a staged detector to the exit a depth policy chooses, one frame at a time.

Stages run at most once per frame and keep their outputs, so going deeper after looking at a
shallow exit continues from the kept features instead of starting over. Every part's duration
is recorded, both for the detections message and for the running latency estimates the
deadline policy plans with.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from perception.config import ConfigError
from perception.detection.manifest import Manifest
from perception.detection.yolox import Letterbox, check_frame, decode, fitted_input_size, letterbox
from perception.engines.base import Engine, Session
from perception.latency import now_ns


class LatencyEstimator:
    """A pessimistic running estimate of each part's duration: the p90 of its recent runs."""

    def __init__(self, window: int = 64, quantile: float = 90.0) -> None:
        self._samples: dict[str, deque[int]] = {}
        self._window = window
        self._quantile = quantile
        self._cache: dict[str, int] = {}

    def add(self, part: str, duration_ns: int) -> None:
        self._samples.setdefault(part, deque(maxlen=self._window)).append(duration_ns)
        self._cache.pop(part, None)

    def estimate_ns(self, part: str) -> int:
        if part not in self._cache:
            samples = self._samples.get(part)
            self._cache[part] = int(np.percentile(samples, self._quantile)) if samples else 0
        return self._cache[part]


@dataclass
class FrameInference:
    """The state of one frame's inference: tensors computed so far and what each part took."""

    tensors: dict[str, np.ndarray]
    box: Letterbox
    stages_done: int = -1
    timings: list[tuple[str, int, int]] = field(default_factory=list)  # (part, end_ns, duration_ns)
    raw_exits: dict[int, np.ndarray] = field(default_factory=dict)


def open_part(engine: Engine, name: str, file: Path, inputs: list[str], outputs: list[str],
              dimensions: dict[str, int] | None) -> Session:
    """Open one model part and check that its graph takes and gives the tensors the manifest names
    and, when `dimensions` is None (inputs fitted to each frame), takes inputs of any size.

    Checked here, where every engine's sessions are opened, so a wrong or swapped file is one
    ConfigError naming file, part and names at load, not a KeyError on the first frame."""
    session = engine.open(file, name, dimensions)
    found_inputs, found_outputs = list(session.input_names), list(session.output_names)
    if sorted(found_inputs) != sorted(inputs) or sorted(found_outputs) != sorted(outputs):
        session.close()
        raise ConfigError(f"model file {file} does not match part {name} of its manifest: expected inputs "
                          f"{_names(inputs)} -> outputs {_names(outputs)}, found inputs {_names(found_inputs)} "
                          f"-> outputs {_names(found_outputs)}")
    fixed = {n: list(shape) for n, shape in session.input_shapes.items() if any(isinstance(d, int) for d in shape[2:])}
    if dimensions is None and fixed:
        session.close()
        raise ConfigError(f"model file {file} (part {name}) has inputs of fixed size {fixed}, but its manifest's "
                          "input.fit_aspect feeds each frame's own size: export it with named dimensions "
                          "(perception export) or set fit_aspect to false")
    return session


def _names(names: list[str]) -> str:
    return "[" + ", ".join(names) + "]"


class AdaptiveDetector:
    def __init__(self, manifest: Manifest, engine: Engine, score_threshold: float = 0.3, nms_threshold: float = 0.45) -> None:
        self.manifest = manifest
        self.engine = engine
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.estimator = LatencyEstimator()
        spec = manifest.input
        # A frame's input is padded only to the next multiple of the largest stride where the graphs
        # and the engine allow it; otherwise to the manifest's full size, which the sessions are pinned to.
        self.fits_aspect = spec.fit_aspect and engine.any_input_size
        self._input_multiple = max(manifest.strides)  # a fitted input's sides: multiples of the largest stride
        dimensions = None if self.fits_aspect else manifest.dimensions(spec.width, spec.height)
        self._stages: list[Session] = [open_part(engine, s.name, s.file, s.inputs, s.outputs, dimensions)
                                       for s in manifest.stages]
        self._exits: list[Session | None] = [open_part(engine, e.name, e.file, e.inputs, [e.output], dimensions)
                                             if e.file else None for e in manifest.exits]
        self._input_buffer = np.empty((1, 3, spec.height, spec.width), np.float32)

    @property
    def exit_count(self) -> int:
        return len(self.manifest.exits)

    def begin(self, frame: np.ndarray) -> FrameInference:
        """Preprocess a frame (the caller may release the frame's buffer afterwards)."""
        spec = self.manifest.input
        start = now_ns()
        check_frame(frame)
        size = (spec.width, spec.height)
        if self.fits_aspect:
            size = fitted_input_size(frame.shape[1], frame.shape[0], spec.width, spec.height, self._input_multiple)
        if self._input_buffer.shape[2:] != size[::-1]:  # a new frame size: rare, one allocation
            self._input_buffer = np.empty((1, 3, size[1], size[0]), np.float32)
        tensor, box = letterbox(frame, spec.width, spec.height, spec.pad_value, out=self._input_buffer, input_size=size)
        end = now_ns()
        return FrameInference(tensors={spec.name: tensor}, box=box, timings=[("preprocess", end, end - start)])

    def run_exit(self, inference: FrameInference, exit_index: int) -> np.ndarray:
        """Run whatever stages exit `exit_index` still needs, then its head; returns its raw output."""
        if exit_index in inference.raw_exits:
            return inference.raw_exits[exit_index]
        spec = self.manifest.exits[exit_index]
        self.run_stages(inference, spec.after_stage)
        session = self._exits[exit_index]
        if session is None:
            raw = inference.tensors[spec.output]
        else:
            raw = self._timed(inference, spec.name, session, spec.inputs)[spec.output]
        inference.raw_exits[exit_index] = raw
        return raw

    def run_stages(self, inference: FrameInference, last_stage: int) -> None:
        """Run the trunk up to and including stage `last_stage`, from where this frame stands."""
        while inference.stages_done < last_stage:
            stage_index = inference.stages_done + 1
            stage = self.manifest.stages[stage_index]
            self._timed(inference, stage.name, self._stages[stage_index], stage.inputs)
            inference.stages_done = stage_index

    def _timed(self, inference: FrameInference, part: str, session: Session, inputs: list[str]) -> dict[str, np.ndarray]:
        start = now_ns()
        outputs = session.run({name: inference.tensors[name] for name in inputs})
        end = now_ns()
        inference.tensors.update(outputs)
        inference.timings.append((part, end, end - start))
        self.estimator.add(part, end - start)
        return outputs

    def decode(self, inference: FrameInference, raw: np.ndarray, score_threshold: float | None = None,
               nms_threshold: float | None = None):
        return decode(raw, inference.box, tuple(self.manifest.strides),
                      self.score_threshold if score_threshold is None else score_threshold,
                      self.nms_threshold if nms_threshold is None else nms_threshold)

    def remaining_cost_ns(self, inference: FrameInference, exit_index: int) -> int:
        """Estimated time to get exit `exit_index`'s output from where this frame's inference stands."""
        spec = self.manifest.exits[exit_index]
        cost = sum(self.estimator.estimate_ns(self.manifest.stages[i].name)
                   for i in range(inference.stages_done + 1, spec.after_stage + 1))
        if spec.file is not None and exit_index not in inference.raw_exits:
            cost += self.estimator.estimate_ns(spec.name)
        return cost

    def warm_up(self, frame: np.ndarray, runs: int = 3) -> None:
        """Run every part a few times: first runs are slow, and the deadline policy needs estimates."""
        for _ in range(runs):
            inference = self.begin(frame)
            for exit_index in range(self.exit_count):
                self.run_exit(inference, exit_index)

    def close(self) -> None:
        for session in [*self._stages, *self._exits]:
            if session is not None:
                session.close()
