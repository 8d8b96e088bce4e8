"""The detector over a frame sequence: its policy plans each frame, then the network runs at the
planned input size and depth, or the last frame's boxes are carried by optical flow; one tracker
gives every detection an id and a velocity either way.

Per frame: (1) for a policy that may propagate, the frame is prepared for flow (a small grey image);
a new frame size or a scene cut (mean grey change above `flow.scene_cut`)
resets the tracks. (2) The policy gets a FrameContext and returns a Plan; the signals it asks for
(the tracks moved by flow, the change outside them) are computed then, once. (3) A network frame
runs to the planned exit (perception.detection.planning.run_to_exit), is decoded low enough for the
tracker's second association (ByteTrack keeps low-score boxes), and updates the tracker. A propagated
frame publishes the last output moved by flow, with the same ids and velocities; a tracked box whose
flow failed (a still or occluded object) as its Kalman prediction. The tracker itself learns only from
network frames: it is not run on propagated ones, which keeps them cheap (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Callable, TypeVar

import numpy as np

from perception.detection.network import StagedNetwork
from perception.detection.outputs import Outcome, Output
from perception.detection.planning import FrameContext, Plan, Policy, run_to_exit
from perception.detection.risk import NO_RISK, RiskRules
from perception.detection.yolox import check_frame
from perception.latency import now_ns
from perception.messages import LEVEL_PROPAGATE, NetworkPass
from perception.tracking.change import change_outside, tiny
from perception.tracking.flow import BoxFlow, FlowConfig, FlowFrame, FlowResult, frame_change
from perception.tracking.tracker import Track, Tracker, TrackerConfig

T = TypeVar("T")
log = logging.getLogger(__name__)
WARMED_LATE_FRAME_SIZES = 4  # frame sizes warmed as they come (_warm_next_size); later ones are not


class FrameDetector:
    def __init__(self, network: StagedNetwork, policy: Policy, tracker: TrackerConfig, flow: FlowConfig,
                 score_threshold: float, margin_ms: float = 2.0, risk: RiskRules | None = None) -> None:
        """`risk`: the decision node's rules, assessed on every frame's output for the next frame's plan."""
        self.network = network
        self.policy = policy
        self.risk_rules = risk
        self._risk = NO_RISK
        self.tracker_config = tracker
        self.tracker = Tracker(tracker)
        self.flow = BoxFlow(flow)
        self.score_threshold = score_threshold
        self.margin_ns = int(margin_ms * 1e6)
        self.levels: Counter = Counter()  # exit index or LEVEL_PROPAGATE -> frames
        self.sizes: Counter = Counter()  # "WxH" input -> network frames
        self.reasons: Counter = Counter()  # the plans' reasons, first word
        self.resets: Counter = Counter()
        self._previous: FlowFrame | None = None
        self._tiny: dict[int, np.ndarray] = {}  # id(FlowFrame) -> its tiny image (change), made when first asked
        self._last = Output.empty()  # what later frames may carry by flow
        self._last_pass: NetworkPass | None = None  # the network pass that measured it
        self._tracks: list[Track] = []  # the tracker's active confirmed tracks after the last network frame
        self._shape: tuple[int, ...] | None = None
        self._network_at: tuple[int, int] | None = None  # (frame number, t_ns) of the last network frame
        self._full_size_at: int | None = None  # t_ns of the last network frame at the full pixel budget
        self._frame_number = 0
        self._t_ns: int | None = None  # the last frame's place on the source's timeline
        self._full_pixels = max(policy.budgets())  # the policy's full size
        self._cold: dict[tuple[int, int], list[int]] = {}  # frame size -> budgets still to warm (_warm_next_size)

    @property
    def exit_count(self) -> int:
        return self.network.exit_count

    def process(self, frame: np.ndarray, t_ns: int, deadline_ns: int | None = None, max_exit: int | None = None) -> Outcome:
        """Detections (scoring at least the score threshold) for the next frame of the sequence, taken at
        `t_ns` on its source's timeline; `deadline_ns` (monotonic) and `max_exit` bound the network."""
        # As the network would, before flow or warming touch it: one error, the same under every policy.
        check_frame(frame)
        warm_ns = self._warm_next_size(frame.shape[1], frame.shape[0]) if self.network.compiles_per_input_size else 0
        started = now_ns()
        self._frame_number += 1
        if self._shape is not None and self._shape != frame.shape:
            self.reset("frame size")
        elif self._t_ns is not None and t_ns < self._t_ns:
            self.reset("time backwards")  # a source started again (a restarted capture): its past is not this one's
        self._shape, self._t_ns = frame.shape, t_ns
        current = None
        if self.policy.propagates:
            current = self.flow.prepare(frame)
            if self._previous is not None and frame_change(self._previous, current) > self.flow.config.scene_cut:
                self.reset("scene cut")
        spent = [now_ns() - started if current is not None else 0]  # flow and signals: time before any network
        context = self._context(frame, t_ns, deadline_ns, max_exit, current, spent)
        plan = self.policy.plan(context)
        self._tiny = {id(current): self._tiny[id(current)]} if id(current) in self._tiny else {}
        self._previous = current
        self.reasons[plan.why.split(":")[0].split(",")[0]] += 1
        if plan.propagate:
            outcome = self._propagated(context.moved(), t_ns, frame.shape, plan)
        else:
            outcome = self._network(frame, plan, t_ns, deadline_ns, max_exit)
        outcome.flow_ns, outcome.warm_ns = spent[0], warm_ns
        self.levels[outcome.level] += 1
        if self.risk_rules is not None:
            self._risk = self.risk_rules.assess(outcome.output, frame.shape[1], frame.shape[0], t_ns, outcome.measured_by,
                                                outcome.level == LEVEL_PROPAGATE)
        return outcome

    def _warm_next_size(self, width: int, height: int) -> int:
        """On an engine whose first run at an input size is costly (a GPU: ~100 ms), warm one input size
        of this frame size that the policy may run and that is not warm yet, before the frame: a
        later fall to a smaller size under a deadline then runs warm. Smallest first: a frame made late
        by the warming falls back to the smallest size, which is then warm, rather than paying a second
        first run. One a frame, since each costs about a frame's budget and the node heartbeats only
        between frames; for the first few frame sizes that needed it (a folder of mixed sizes pays
        each first run as before). The time taken (ns), 0 if none. `frame_sizes` in the detector's
        config warms them at start instead."""
        pending = self._cold.get((width, height))
        if pending is None:
            if len(self._cold) >= WARMED_LATE_FRAME_SIZES:
                return 0
            pending, sizes = [], set()
            for budget in sorted(self.policy.budgets()):  # smallest first; one budget per input size
                size = self.network.input_size(width, height, budget)[1]
                if size not in self.network.warmed and size not in sizes:
                    pending.append(budget)
                    sizes.add(size)
            if not pending:
                return 0  # nothing to warm: not counted against the frame sizes warmed late
            self._cold[(width, height)] = pending
            log.warning("frame size %dx%d was not warmed up: its %d input sizes are warmed one a frame "
                        "(list it in the detector's frame_sizes to warm it at start)", width, height, len(pending))
        while pending:
            started = now_ns()
            if self.network.warm_at(pending.pop(0), (width, height), runs=1) is not None:
                return now_ns() - started
        return 0

    def reset(self, reason: str) -> None:
        """Forget tracks and the previous frame (a new size, a scene cut, a torn frame)."""
        self.tracker.reset(reason)
        self.resets[reason] += 1
        self._previous = None
        self._tiny = {}
        self._risk = NO_RISK
        if self.risk_rules is not None:
            self.risk_rules.reset()
        self._last = Output.empty()
        self._last_pass = None
        self._tracks = []
        self._network_at = self._full_size_at = None

    def _context(self, frame: np.ndarray, t_ns: int, deadline_ns: int | None, max_exit: int | None,
                 current: FlowFrame | None, spent: list[int]) -> FrameContext:
        height, width = frame.shape[:2]
        last, previous = self._last, self._previous

        def moved() -> FlowResult:
            if previous is None or current is None:
                return FlowResult.unmoved(last.boxes)
            return self.flow.propagate(previous, current, last.boxes)

        def change(enough: float) -> float:
            if previous is None or current is None:
                return 1.0
            return change_outside(self._tiny_of(previous), self._tiny_of(current), last.boxes[last.track_ids > 0],
                                  (height, width), enough=enough)

        network_at = self._network_at
        return FrameContext(
            t_ns=t_ns, width=width, height=height, deadline_ns=deadline_ns,
            max_exit=self.exit_count - 1 if max_exit is None else max_exit, network=self.network,
            tracks=[t for t in self._tracks if t.frames_since_update == 0], risk=self._risk,
            carried_track_ids=last.track_ids,
            frames_since_network=None if network_at is None else self._frame_number - network_at[0] - 1,
            ms_since_network=None if network_at is None else (t_ns - network_at[1]) / 1e6,
            ms_since_full_size=None if self._full_size_at is None else (t_ns - self._full_size_at) / 1e6,
            moved=_timed_once(moved, spent), change=_timed_once(change, spent),
        )

    def _tiny_of(self, flow_frame: FlowFrame) -> np.ndarray:
        if id(flow_frame) not in self._tiny:
            self._tiny[id(flow_frame)] = tiny(flow_frame.gray)
        return self._tiny[id(flow_frame)]

    def _network(self, frame: np.ndarray, plan: Plan, t_ns: int, deadline_ns: int | None, max_exit: int | None) -> Outcome:
        inference = self.network.begin(frame, plan.pixels)
        ceiling = self.exit_count - 1 if max_exit is None else max_exit
        ceiling = ceiling if plan.max_exit is None else plan.max_exit  # the policy spent the watchdog's as a cost
        # Where the policy spent the watchdog's ceiling as full depth at a smaller size (costed as the direct
        # graph), no frame runs the dearer parts in its place to refresh their estimates.
        level = run_to_exit(self.network, inference, plan.exit_index, deadline_ns, ceiling, self.margin_ns,
                            refresh=plan.max_exit is None)
        low = min(self.score_threshold, self.tracker_config.low_score)  # the tracker's second association
        boxes, scores, class_ids = self.network.decode(inference, inference.raw_exits[level], low)
        update = self.tracker.update(boxes, scores, class_ids, t_ns, (frame.shape[1], frame.shape[0]))
        # Snapshots taken once: only a network frame changes the tracker (0.15 ms a frame for 15 tracks).
        self._tracks = self.tracker.tracks
        output = Output(boxes.astype(np.float32), scores.astype(np.float32), class_ids.astype(np.uint16),
                        update.detection_track_ids.astype(np.uint32), self._velocities(update.detection_track_ids))
        # Carried by later frames: the boxes they may publish and the tracked ones (the policy watches
        # their flow). Not the low-score boxes nobody tracks: an evaluation decodes at far lower scores,
        # and flowing boxes no frame publishes costs points in every Lucas-Kanade call.
        carried = max(self.score_threshold, self.tracker_config.low_score)
        self._last = output.select((output.scores >= carried) | (output.track_ids > 0))
        self._last_pass = NetworkPass(input_width=inference.size[0], input_height=inference.size[1], exit_index=level)
        self._network_at = (self._frame_number, t_ns)
        if plan.pixels is None or plan.pixels >= self._full_pixels:
            self._full_size_at = t_ns
        self.sizes[f"{inference.size[0]}x{inference.size[1]}"] += 1
        return Outcome(level, inference.size, plan.why, output.select(output.scores >= self.score_threshold), inference, 0,
                       self._last_pass)

    def _propagated(self, moved: FlowResult, t_ns: int, shape: tuple[int, ...], plan: Plan) -> Outcome:
        last = self._last
        boxes = moved.boxes.astype(np.float32)
        # A tracked box keeps the flow's centre and takes its size from the track's motion model, which
        # knows how fast it grows (flow rarely trusts a scale from a few points: an approaching car would
        # seem to stop growing, and the decision node's time to collision with it); one whose flow failed
        # (a still or occluded object) is the prediction. The filter itself learns only on network frames:
        # updating it with every flow box cost 0.2 ms a frame for no AP50 (PETS09 1-400, every 3rd frame).
        if (last.track_ids > 0).any():
            predicted = self.tracker.predict_boxes(t_ns)
            ids = last.track_ids.tolist()
            rows = [row for row, track_id in enumerate(ids) if track_id > 0 and track_id in predicted]
            if rows:
                box = np.stack([predicted[ids[row]] for row in rows])
                centre = (boxes[rows, :2] + boxes[rows, 2:]) / 2
                half = (box[:, 2:] - box[:, :2]) / 2
                carried = np.where(moved.ok[rows, None], np.concatenate((centre - half, centre + half), axis=1), box)
                # A constant-velocity model shrinking fast enough predicts no box at all (width or height
                # at or below 0, as after a few noisy measurements of a far object): the flow's box then.
                sized = (half > 0).all(axis=1)
                boxes[np.asarray(rows)[sized]] = carried[sized]
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, shape[1])  # as the network's boxes are: within the frame
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, shape[0])
        self._last = Output(boxes, last.scores, last.class_ids, last.track_ids, last.velocities)
        output = self._last.select(self._last.scores >= self.score_threshold)
        return Outcome(LEVEL_PROPAGATE, None, plan.why, output, None, 0, self._last_pass)

    def _velocities(self, track_ids: np.ndarray) -> np.ndarray:
        by_id = {t.track_id: t.velocity for t in self._tracks}
        return np.array([by_id.get(int(tid), (0.0, 0.0)) for tid in track_ids], np.float32).reshape(-1, 2)


def _timed_once(compute: Callable[..., T], spent: list[int]) -> Callable[..., T]:
    """`compute`, run at most once (its first arguments stand), its time added to spent[0]."""
    result: list[T] = []

    def once(*args) -> T:  # noqa: ANN002
        if not result:
            started = now_ns()
            result.append(compute(*args))
            spent[0] += now_ns() - started
        return result[0]

    return once
