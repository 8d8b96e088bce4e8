"""Detector node: runs the adaptive-depth detector on the newest frame and publishes detections.

Each frame gets a deadline from its capture time (budget minus what decision and publication
need); the depth policy plans against it. With the `adaptive` policy a gate may run no network
at all and move the last frame's tracks by optical flow (perception/detection/temporal.py).
Every detection carries its track id and velocity (one tracker, perception/tracking). Frames
already older than `stale_ms` when picked up are dropped, never processed late. A Control message
from the watchdog caps the depth.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np

from perception.config import ConfigError, Range, ScoreThreshold
from perception.detection.adaptive import AdaptiveDetector
from perception.detection.manifest import WEIGHTS_DIR, load_manifest
from perception.detection.policy import PolicyConfig
from perception.detection.temporal import RiskRules, TemporalConfig, TemporalDetector
from perception.engines import EngineConfig, EngineUnavailable, create_engine
from perception.latency import BudgetMs, now_ns, percentiles_ms, since_capture_ns
from perception.messages import LEVEL_PROPAGATE, Control, Detections, FrameHeader, NodeState, Stamp
from perception.node import FatalInputError, Node, NodeSettings, run_node
from perception.topics import CONTROL, DETECTIONS, FRAMES
from perception.shm_ring import FrameOverwritten, RingError
from perception.timing import Periodic

log = logging.getLogger("detector")


@dataclass(frozen=True)
class DetectorConfig:
    node: NodeSettings = field(default_factory=NodeSettings)
    model: Path = WEIGHTS_DIR / "yolox_nano_exits.json"  # a manifest (perception/detection/manifest.py)
    engine: EngineConfig = field(default_factory=EngineConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    temporal: TemporalConfig = field(default_factory=TemporalConfig)  # gate, tracker and optical flow
    frames_from: str | list[str] = "capture"  # node name(s) or endpoint URL(s)
    control_from: str | None = None  # the watchdog's node name, to accept depth ceilings from it
    budget_ms: BudgetMs = 100.0  # capture to published decision
    reserve_ms: BudgetMs = 15.0  # of the budget, kept for the decision node and the hops after detection
    stale_ms: BudgetMs = 50.0  # a frame older than this when picked up is dropped
    score_threshold: ScoreThreshold = 0.3
    nms_threshold: Annotated[float, Range(0, 1, low_open=True)] = 0.45
    report_period_s: Annotated[float, Range(0.1, 3600)] = 5.0
    # Deterministic replay: ignore deadlines, staleness and depth ceilings, which all depend on
    # wall-clock timing, so the same recording gives the same detections run after run.
    deterministic: bool = False

    def __post_init__(self) -> None:
        if not self.reserve_ms < self.budget_ms:
            raise ValueError(f"need reserve_ms < budget_ms, got {self.reserve_ms} and {self.budget_ms}")


CONFIG = DetectorConfig


def check(config: DetectorConfig) -> None:
    """The manifest and every model file it names exist, and the risk gate's rules name classes of its
    model; loading the networks themselves is left to the node."""
    manifest = load_manifest(config.model)
    if config.temporal.gate.risk:
        try:
            RiskRules.from_decision_config(config.temporal.gate.decision_config, manifest.class_names())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"temporal.gate.decision_config: {exc}") from None


def open_detector(config: DetectorConfig) -> TemporalDetector:
    try:
        manifest = load_manifest(config.model)
        engine = create_engine(config.engine)
        detector = AdaptiveDetector(manifest, engine, config.score_threshold, config.nms_threshold)
        temporal = TemporalDetector(detector, config.policy, config.temporal)
    except (ConfigError, EngineUnavailable, ValueError) as exc:
        raise FatalInputError(str(exc)) from None
    # Seed the latency estimates and get first-run costs out of the way before real frames. A frame
    # of the input's own size fills all of it, the costliest a fitted input can be: the deadline
    # policy starts from estimates that are pessimistic, never optimistic, whatever the camera's aspect.
    detector.warm_up(np.full((manifest.input.height, manifest.input.width, 3), 114, np.uint8))
    log.info("%s with %d exits on %s, policy %s", manifest.name, detector.exit_count, engine.describe(), config.policy.kind)
    return temporal


class DepthCeiling:
    """The deepest exit the watchdog allows now (it lowers it when the budget gets tight)."""

    def __init__(self, exit_count: int) -> None:
        self.exit_count = exit_count
        self.max_exit = exit_count - 1

    @property
    def degraded(self) -> bool:
        return self.max_exit < self.exit_count - 1

    def apply(self, command: Control, node_name: str) -> None:
        if command.target not in (node_name, "*"):
            return
        ceiling = max(0, min(command.max_depth, self.exit_count - 1))
        if ceiling != self.max_exit:
            log.info("depth ceiling %d -> %d (%s)", self.max_exit, ceiling, command.reason)
        self.max_exit = ceiling


def detect(node: Node, config: DetectorConfig) -> None:
    temporal = open_detector(config)
    detector = temporal.detector
    frames = node.subscribe(config.frames_from, FRAMES, latest=True)
    control = node.subscribe(config.control_from, CONTROL, latest=False) if config.control_from else None
    receiver = node.frame_receiver()
    ceiling = DepthCeiling(detector.exit_count)
    latencies: deque[int] = deque(maxlen=500)
    exits: Counter = Counter()
    reporting = Periodic(config.report_period_s)
    node.state = NodeState.OK
    try:
        while node.ok():
            ready = node.poll(0.1)
            if control is not None and control in ready:
                for received in control.receive():
                    if not config.deterministic:
                        ceiling.apply(received.message, node.name)
                node.state = NodeState.DEGRADED if ceiling.degraded else NodeState.OK
            if frames in ready:
                for received in frames.receive():
                    message = process_frame(node, config, temporal, receiver, received, ceiling.max_exit)
                    if message is not None:
                        node.publish(DETECTIONS, message)
                        latencies.append(since_capture_ns(message))
                        exits[message.level] += 1
            if reporting.due():
                report(node, frames, latencies, exits)
    finally:
        report(node, frames, latencies, exits)
        detector.close()


def process_frame(node: Node, config: DetectorConfig, temporal: TemporalDetector, receiver, received, max_exit: int):
    header: FrameHeader = received.message
    picked_ns = now_ns()
    if not config.deterministic and picked_ns - header.capture_ns > config.stale_ms * 1e6:
        node.count("frames.stale")
        return None
    deadline_ns = header.capture_ns + int((config.budget_ms - config.reserve_ms) * 1e6)
    try:
        view = receiver.view(received)
        # The source's timeline drives the tracker (and so velocities): a replay tracks as the drive did.
        outcome = temporal.process(view.array, header.media_ns, None if config.deterministic else deadline_ns, max_exit)
        if not view.still_valid():
            temporal.reset("torn frame")  # what the tracker just learned may come from a torn frame
            raise FrameOverwritten("overwritten while in use")
    except FrameOverwritten:
        node.count("frames.overwritten")
        return None
    except (RingError, ValueError) as exc:
        node.count("frames.bad")
        log.warning("frame %d unusable: %s", header.frame_id, exc)
        return None
    stamps = header.stamps + (Stamp("det.recv", picked_ns),)
    if outcome.flow_ns:  # the adaptive policy's optical flow and gate, before any network
        stamps += (Stamp("det.flow", picked_ns + outcome.flow_ns),)
    if outcome.inference is not None:
        stamps += tuple(Stamp(f"det.{part}", end) for part, end, _ in outcome.inference.timings)
    out = outcome.output
    count_outcome(node, outcome, temporal)
    if now_ns() > deadline_ns:
        node.count("frames.late")
    node.mark_frame_done(header.frame_id, header.capture_ns)
    return Detections(
        frame_id=header.frame_id, capture_ns=header.capture_ns, stamps=stamps + (Stamp("det.post", now_ns()),),
        media_ns=header.media_ns, image_width=header.width, image_height=header.height, exit_index=outcome.level,
        exit_count=temporal.detector.exit_count, boxes=out.boxes, scores=out.scores, class_ids=out.class_ids,
        track_ids=out.track_ids, velocities=out.velocities,
    )


def count_outcome(node: Node, outcome, temporal: TemporalDetector) -> None:
    node.count("propagate" if outcome.level == LEVEL_PROPAGATE else f"exit{outcome.level}")
    for reason, n in temporal.resets.items():
        node.counters[f"tracks.reset.{reason.replace(' ', '_')}"] = n


def report(node: Node, frames, latencies: deque, exits: Counter) -> None:
    stats = percentiles_ms(latencies)
    if stats:
        log.info("capture->detections ms p50 %.1f p99 %.1f max %.1f | exits %s",
                 stats["p50"], stats["p99"], stats["max"], dict(sorted(exits.items())))
    dropped = " ".join(f"{k.split('.', 1)[1]} {v}" for k, v in sorted(node.counters.items()) if k.startswith("frames."))
    log.info("frames received %d superseded %d malformed %d | %s", frames.received, frames.superseded,
             frames.malformed, dropped or "none dropped")


def main(argv: list[str] | None = None) -> int:
    return run_node(__doc__.splitlines()[0], DetectorConfig, detect, argv, check)


if __name__ == "__main__":
    raise SystemExit(main())
