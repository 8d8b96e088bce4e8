"""Run a staged detector, at the input size and to the exit a policy chooses, one frame at a time.

Stages run at most once per frame and keep their outputs, so going deeper after looking at a
shallow exit continues from the kept features instead of starting over. A frame that starts by
asking for an exit with a direct graph (manifest.py) runs that one graph instead of the parts. A
frame's input is sized by a pixel budget (yolox.budget_input) where the graphs allow any size, else
the manifest's fixed size. Every part's duration is recorded, per input size, both for the detections message and for
the running latency estimates that policies plan with.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from perception.config import ConfigError
from perception.detection.manifest import Manifest
from perception.detection.yolov8 import decode_yolov8
from perception.detection.yolox import Letterbox, budget_input, check_frame, decode, letterbox
from perception.engines.base import Engine, Session
from perception.latency import now_ns


Size = tuple[int, int]  # an input's (width, height)

# A direct graph commits a frame to its exit: under a deadline it runs only while the frame would still
# end in time at this many times its estimated cost. Nearer the deadline the parts run, which can stop
# at a shallower exit after a slow stage.
DIRECT_SLACK = 3.0
# Under a deadline, one in this many frames that could run a direct graph runs its parts instead: the
# parts' estimates plan the frames near a deadline, and only frames run part by part refresh them.
PARTS_REFRESH_EVERY = 8
# A direct graph's estimate resting on fewer runs than this at a size is capped at its parts'.
DIRECT_SETTLED = 8


class LatencyEstimator:
    """A pessimistic running estimate of each part's duration at each input size: the p90 of its
    recent runs there. A size not run yet is estimated from the most run one, in proportion to
    pixels (a network's cost grows with its input's area)."""

    def __init__(self, window: int = 64, quantile: float = 90.0) -> None:
        self._samples: dict[tuple[str, Size], deque[int]] = {}
        self._window = window
        self._quantile = quantile
        self._cache: dict[tuple[str, Size], int] = {}

    def add(self, part: str, size: Size, duration_ns: int) -> None:
        self._samples.setdefault((part, size), deque(maxlen=self._window)).append(duration_ns)
        self._cache.pop((part, size), None)

    def runs(self, part: str, size: Size) -> int:
        """How many runs of `part` at `size` the estimate rests on (the window's)."""
        return len(self._samples.get((part, size), ()))

    def estimate_ns(self, part: str, size: Size) -> int:
        key = (part, size)
        if key not in self._cache:
            samples = self._samples.get(key)
            if samples:
                self._cache[key] = int(np.percentile(samples, self._quantile))
            else:
                known = [(len(v), s) for (p, s), v in self._samples.items() if p == part]
                if not known:
                    return 0
                _, nearest = max(known)
                return int(self.estimate_ns(part, nearest) * size[0] * size[1] / (nearest[0] * nearest[1]))
        return self._cache[key]


@dataclass
class FrameInference:
    """The state of one frame's inference: tensors computed so far and what each part took."""

    tensors: dict[str, np.ndarray]
    box: Letterbox
    stages_done: int = -1
    timings: list[tuple[str, int, int]] = field(default_factory=list)  # (part, end_ns, duration_ns)
    raw_exits: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def size(self) -> Size:
        return self.box.input_width, self.box.input_height


@dataclass
class Detected:
    """One frame's detections from StagedNetwork.detect: boxes (N, 4 xyxy, frame pixels), scores, class ids."""

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    exit_index: int
    inference: FrameInference


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


class StagedNetwork:
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
        self.input_multiple = max(manifest.strides)  # a fitted input's sides: multiples of the largest stride
        self.pixels = spec.default_pixels  # the input budget a frame gets unless a policy asks for another
        dimensions = None if self.fits_aspect else manifest.dimensions(spec.width, spec.height)
        self._stages: list[Session] = [open_part(engine, s.name, s.file, s.inputs, s.outputs, dimensions)
                                       for s in manifest.stages]
        self._exits: list[Session | None] = [open_part(engine, e.name, e.file, e.inputs, [e.output], dimensions)
                                             if e.file else None for e in manifest.exits]
        self._direct: list[Session | None] = [
            open_part(engine, e.direct_name, e.direct_file, [spec.name], [e.output], dimensions)
            if e.direct_file is not None and engine.runs_direct_graphs else None for e in manifest.exits]
        self._input_buffers: dict[Size, np.ndarray] = {}  # one per input size in use: a policy may alternate
        self.warmed: set[Size] = set()  # input sizes warmed up (warm)
        # Per (exit, input size): frames under a deadline that could have run its direct graph, and frames
        # on which only its own estimate kept it out (PARTS_REFRESH_EVERY).
        self._could_run_direct: dict[tuple, int] = {}
        self._ran: set[tuple[str, Size]] = set()  # (part, input size) run at least once

    @property
    def exit_count(self) -> int:
        return len(self.manifest.exits)

    def input_size(self, frame_width: int, frame_height: int, pixels: int | None = None) -> tuple[Size, Size]:
        """(fit box, input size) of a frame: under the pixel budget `pixels` (default the manifest's)
        where the graphs take any size, else the manifest's fixed size."""
        spec = self.manifest.input
        if not self.fits_aspect:
            return (spec.width, spec.height), (spec.width, spec.height)
        return budget_input(frame_width, frame_height, pixels or self.pixels, self.input_multiple)

    def begin(self, frame: np.ndarray, pixels: int | None = None) -> FrameInference:
        """Preprocess a frame at the input `pixels` gives it (the caller may release the frame's buffer afterwards)."""
        spec = self.manifest.input
        start = now_ns()
        check_frame(frame)
        box, size = self.input_size(frame.shape[1], frame.shape[0], pixels)
        buffer = self._input_buffers.get(size)
        if buffer is None:
            if len(self._input_buffers) >= 8:  # frame sizes and budgets in use are few; a stream of new ones is not kept
                self._input_buffers.clear()
            buffer = self._input_buffers[size] = np.empty((1, 3, size[1], size[0]), np.float32)
        tensor, letterboxed = letterbox(frame, box[0], box[1], spec.pad_value, out=buffer, input_size=size,
                                        rgb=spec.channels == "rgb", pixel_scale=spec.pixel_scale)
        end = now_ns()
        self.estimator.add("preprocess", size, end - start)
        return FrameInference(tensors={spec.name: tensor}, box=letterboxed, timings=[("preprocess", end, end - start)])

    def has_direct(self, exit_index: int) -> bool:
        return self._direct[exit_index] is not None

    def run_exit(self, inference: FrameInference, exit_index: int) -> np.ndarray:
        """Run whatever stages exit `exit_index` still needs, then its head; returns its raw output.
        On a frame nothing has run on yet, the exit's direct graph where it has one."""
        if exit_index in inference.raw_exits:
            return inference.raw_exits[exit_index]
        spec = self.manifest.exits[exit_index]
        direct = self._direct[exit_index]
        if direct is not None and inference.stages_done < 0 and not inference.raw_exits:
            raw = self._timed(inference, spec.direct_name, direct, [self.manifest.input.name])[spec.output]
            inference.raw_exits[exit_index] = raw
            return raw
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
        if (part, inference.size) in self._ran:
            self.estimator.add(part, inference.size, end - start)
        else:
            if len(self._ran) >= 256:  # sizes in use are few; a stream of new ones is not kept (their next run is skipped again)
                self._ran.clear()  # a part's first run at an input size allocates for it (docs/ARCHITECTURE.md, Detection): not a cost to plan with
            self._ran.add((part, inference.size))
        return outputs

    def decode(self, inference: FrameInference, raw: np.ndarray, score_threshold: float | None = None,
               nms_threshold: float | None = None):
        layout = decode_yolov8 if self.manifest.output_layout == "yolov8" else decode
        return layout(raw, inference.box, tuple(self.manifest.strides),
                      self.score_threshold if score_threshold is None else score_threshold,
                      self.nms_threshold if nms_threshold is None else nms_threshold)

    def remaining_cost_ns(self, inference: FrameInference, exit_index: int) -> int:
        """Estimated time to get exit `exit_index`'s output from where this frame's inference stands, part by part."""
        return self._cost_ns(inference.size, inference.stages_done, exit_index, exit_index in inference.raw_exits)

    def direct_fits(self, size: Size, exit_index: int, deadline_ns: int | None, margin_ns: int) -> bool:
        """Whether a new frame at `size` may run exit `exit_index`'s direct graph: it has one and, under a
        deadline, the frame would still end `margin_ns` before it at DIRECT_SLACK times its estimated cost."""
        if self._direct[exit_index] is None:
            return False
        return _fits_with_slack(self._direct_ns(size, exit_index), deadline_ns, margin_ns)

    def _direct_ns(self, size: Size, exit_index: int) -> int:
        """A direct graph's estimate. While it rests on few runs at this size (DIRECT_SETTLED), never above
        its parts' where they have been measured: it does their work in fewer calls, and a slow first
        run believed would keep it from running again. Once settled, its own: it is what runs most."""
        name = self.manifest.exits[exit_index].direct_name
        direct_ns = self.estimator.estimate_ns(name, size)
        if self.estimator.runs(name, size) >= DIRECT_SETTLED:
            return direct_ns
        parts_ns = self._parts_ns(size, exit_index)
        return min(direct_ns, parts_ns) if parts_ns > 0 else direct_ns

    def runs_direct(self, size: Size, exit_index: int, deadline_ns: int | None, margin_ns: int,
                    refresh: bool = True) -> bool:
        """direct_fits, except for one in PARTS_REFRESH_EVERY such frames at each size under a deadline
        (counted here, when `refresh`), which run part by part to keep the parts' estimates current;
        and where only its own estimate keeps it out, one in PARTS_REFRESH_EVERY runs it to refresh that."""
        if not self.direct_fits(size, exit_index, deadline_ns, margin_ns):
            # Its own estimate says no. Where the parts (the same work in more calls) would fit with the
            # same slack, one such frame in PARTS_REFRESH_EVERY runs it anyway: an estimate raised by a
            # loaded spell is refreshed only by running, and would otherwise keep it out for good.
            parts_ns = self._parts_ns(size, exit_index)
            if (deadline_ns is None or not refresh or self._direct[exit_index] is None or parts_ns <= 0
                    or not _fits_with_slack(parts_ns, deadline_ns, margin_ns)):
                return False
            return self._count((exit_index, size, "probe")) % PARTS_REFRESH_EVERY == 0
        if deadline_ns is None or not refresh:
            return True
        return self._count((exit_index, size)) % PARTS_REFRESH_EVERY != 0

    def _count(self, key: tuple) -> int:
        if key not in self._could_run_direct and len(self._could_run_direct) >= 64:
            self._could_run_direct.clear()
        self._could_run_direct[key] = count = self._could_run_direct.get(key, 0) + 1
        return count

    def frame_cost_ns(self, size: Size, exit_index: int, deadline_ns: int | None = None, margin_ns: int = 0) -> int:
        """Estimated time of a new frame at input `size` to exit `exit_index`, preprocessing included, by
        the way it would run: its direct graph where that fits the deadline (direct_fits), else part by part."""
        if self.direct_fits(size, exit_index, deadline_ns, margin_ns):
            network_ns = self._direct_ns(size, exit_index)
        else:
            network_ns = self._parts_ns(size, exit_index)
        return self.estimator.estimate_ns("preprocess", size) + network_ns

    def _parts_ns(self, size: Size, exit_index: int) -> int:
        """Estimated time of the parts of a new frame at `size` to exit `exit_index`."""
        return self._cost_ns(size, -1, exit_index, False)

    def _cost_ns(self, size: Size, stages_done: int, exit_index: int, exit_done: bool) -> int:
        spec = self.manifest.exits[exit_index]
        cost = sum(self.estimator.estimate_ns(self.manifest.stages[i].name, size)
                   for i in range(stages_done + 1, spec.after_stage + 1))
        if spec.file is not None and not exit_done:
            cost += self.estimator.estimate_ns(spec.name, size)
        return cost

    def detect(self, frame: np.ndarray, exit_index: int = -1, pixels: int | None = None,
               score_threshold: float | None = None) -> Detected:
        """One frame on its own, to one exit (-1: the deepest) at one input budget: for tools that
        look at single frames (a detector over a sequence is perception.detection.frames)."""
        inference = self.begin(frame, pixels)
        exit_index = exit_index % self.exit_count
        boxes, scores, class_ids = self.decode(inference, self.run_exit(inference, exit_index), score_threshold)
        return Detected(boxes, scores, class_ids, exit_index, inference)

    def warm_up(self, frame: np.ndarray, runs: int = 3, pixels: tuple[int | None, ...] = (None,)) -> None:
        """Run every part a few times at each input budget in `pixels`: first runs are slow, and
        policies plan with the estimates."""
        for budget in pixels:
            for _ in range(runs):
                inference = self.begin(frame, budget)
                for exit_index in range(self.exit_count):
                    self.run_stages(inference, self.manifest.exits[exit_index].after_stage)  # part by part
                    self.run_exit(inference, exit_index)
                for exit_index in range(self.exit_count):
                    if self.has_direct(exit_index):
                        self.run_exit(self.begin(frame, budget), exit_index)

    def warm(self, budgets: Iterable[int], frame_sizes: Sequence[Size] = (), runs: int = 3) -> list[Size]:
        """Warm every part up at each pixel budget in `budgets` on a square frame (it fills about all of
        a budget: the cost estimates start pessimistic, never optimistic, whatever the camera's aspect)
        and on a frame of each (width, height) in `frame_sizes`, skipping input sizes already warmed.
        Returns the input sizes warmed now."""
        warmed = []
        for budget in budgets:
            side = max(32, int(budget ** 0.5))
            for frame_size in ((side, side), *frame_sizes):
                if (size := self.warm_at(budget, frame_size, runs)) is not None:
                    warmed.append(size)
        return warmed

    def warm_at(self, budget: int, frame_size: Size, runs: int = 3) -> Size | None:
        """Warm every part up at the input size a (width, height) frame runs at under `budget`; that
        size, or None where it was warm already."""
        width, height = frame_size
        _, size = self.input_size(width, height, budget)
        if size in self.warmed:
            return None
        self.warm_up(np.full((height, width, 3), 114, np.uint8), runs, pixels=(budget,))
        self.warmed.add(size)
        return size

    @property
    def compiles_per_input_size(self) -> bool:
        """Whether the engine's first run at an input size is costly (Engine.compiles_per_input_size)."""
        return self.engine.compiles_per_input_size

    def close(self) -> None:
        for session in [*self._stages, *self._exits, *self._direct]:
            if session is not None:
                session.close()


def _fits_with_slack(cost_ns: int, deadline_ns: int | None, margin_ns: int) -> bool:
    """Whether a frame starting now ends `margin_ns` before the deadline at DIRECT_SLACK times `cost_ns`."""
    return deadline_ns is None or now_ns() + margin_ns + DIRECT_SLACK * cost_ns <= deadline_ns
