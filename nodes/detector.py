"""Detector node: runs the detector on the newest frame and publishes detections.

Each frame gets a deadline from its capture time (budget minus what decision and publication
need); the policy plans against it: input size, depth, or no network at all, the last frame's
tracks moved by optical flow (perception/detection: builder, policies, frames). Every detection
carries its track id and velocity (one tracker, perception/tracking). Frames already older than
`stale_ms` when picked up are dropped, never processed late. A Control message from the watchdog
caps the depth.
"""

from __future__ import annotations

import logging
import os
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Annotated

import cv2

from perception.config import ConfigError, Range, check_ranges
from perception.detection.builder import DetectorSettings, build_detector, check_settings
from perception.detection.frames import FrameDetector
from perception.detection.outputs import detections_message
from perception.engines import EngineUnavailable
from perception.latency import BudgetMs, now_ns, percentiles_ms, since_capture_ns
from perception.messages import LEVEL_PROPAGATE, Control, Detections, FrameHeader, NodeState
from perception.interface import NodeInterface
from perception.node import FatalInputError, NodeSettings, run_node
from perception.graph import Port
from perception.topics import CONTROL, DETECTIONS, FRAMES
from perception.shm_ring import FrameOverwritten, RingError
from perception.timing import Periodic

log = logging.getLogger("detector")


@dataclass(frozen=True)
class DetectorConfig(DetectorSettings):
    node: NodeSettings = field(default_factory=NodeSettings)
    reserve_ms: BudgetMs = 15.0  # of the budget, kept for the decision node and the hops after detection
    stale_ms: BudgetMs = 50.0  # a frame older than this when picked up is dropped
    report_period_s: Annotated[float, Range(0.1, 3600)] = 5.0
    # Deterministic replay: ignore deadlines, staleness and depth ceilings, which all depend on
    # wall-clock timing, so the same recording gives the same detections run after run.
    deterministic: bool = False

    def __post_init__(self) -> None:
        check_ranges(self)
        if not self.reserve_ms < self.node.budget_ms:
            raise ValueError(f"need reserve_ms < the launch's budget_ms, got {self.reserve_ms} and {self.node.budget_ms}")


CONFIG = DetectorConfig
INPUTS = {"frames": Port(FRAMES), "control": Port(CONTROL, required=False)}  # control: the watchdog's depth ceilings
OUTPUTS = (DETECTIONS,)


def check(config: DetectorConfig) -> None:
    """The manifest and every model file it names exist and the risk rule names classes of the model;
    loading the networks is left to the node."""
    check_settings(config)


def open_detector(config: DetectorConfig) -> FrameDetector:
    # OpenCV's own thread pool (resize, optical flow) would compete with ONNX Runtime's threads for the
    # same cores on every frame: the node's OpenCV work runs on its thread alone (docs/BENCHMARKS.md).
    cv2.setNumThreads(int(os.environ.get("PERCEPTION_OPENCV_THREADS", "1")))
    try:
        detector = build_detector(config)
    except (ConfigError, EngineUnavailable, ValueError) as exc:
        raise FatalInputError(str(exc)) from None
    network = detector.network
    log.info("%s with %d exits on %s, policy %s, %d pixels", network.manifest.name, network.exit_count,
             network.engine.describe(), config.policy.kind, network.pixels)
    return detector


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


def detect(node: NodeInterface, config: DetectorConfig) -> None:
    detector = open_detector(config)
    frames = node.subscribe("frames", FRAMES, latest=True)
    control = node.subscribe("control", CONTROL, latest=False, optional=True)
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
                    message = process_frame(node, config, detector, receiver, received, ceiling.max_exit)
                    if message is not None:
                        node.publish(DETECTIONS, message)
                        latencies.append(since_capture_ns(message))
                        exits[message.level] += 1
            if reporting.due():
                report(node, frames, latencies, exits)
    finally:
        report(node, frames, latencies, exits)
        detector.network.close()


def process_frame(node: NodeInterface, config: DetectorConfig, detector: FrameDetector, receiver, received,
                  max_exit: int) -> Detections | None:
    header: FrameHeader = received.message
    picked_ns = now_ns()
    if not config.deterministic and picked_ns - header.capture_ns > config.stale_ms * 1e6:
        node.count("frames.stale")
        return None
    deadline_ns = header.capture_ns + int((config.node.budget_ms - config.reserve_ms) * 1e6)
    try:
        view = receiver.view(received)
        # The source's timeline drives the tracker (and so velocities): a replay tracks as the drive did.
        outcome = detector.process(view.array, header.media_ns, None if config.deterministic else deadline_ns, max_exit)
        if not view.still_valid():
            detector.reset("torn frame")  # what the tracker just learned may come from a torn frame
            raise FrameOverwritten("overwritten while in use")
    except FrameOverwritten:
        node.count("frames.overwritten")
        return None
    except (RingError, ValueError) as exc:
        node.count("frames.bad")
        log.warning("frame %d unusable: %s", header.frame_id, exc)
        return None
    node.count("propagate" if outcome.level == LEVEL_PROPAGATE else f"exit{outcome.level}")
    if outcome.input_size is not None:  # the input the policy chose: a deadline may shrink it
        node.count(input_counter(node.counters, outcome.input_size))
    for reason, n in detector.resets.items():
        node.counters[f"tracks.reset.{reason.replace(' ', '_')}"] = n
    if now_ns() > deadline_ns:
        node.count("frames.late")
    node.mark_frame_done(header.frame_id, header.capture_ns)
    return detections_message(outcome, frame_id=header.frame_id, capture_ns=header.capture_ns, media_ns=header.media_ns,
                              image_width=header.width, image_height=header.height, exit_count=detector.exit_count,
                              stamps=header.stamps, received_ns=picked_ns, done_ns=now_ns())


def input_counter(counters: dict[str, int], size: tuple[int, int], most: int = 8) -> str:
    """The counter of an input size, `input.WxH`; past `most` sizes, `input.other`: a source whose
    frames keep changing size must not grow the heartbeat past its counter limit."""
    key = f"input.{size[0]}x{size[1]}"
    if key in counters or sum(k.startswith("input.") and k != "input.other" for k in counters) < most:
        return key
    return "input.other"


def report(node: NodeInterface, frames, latencies: deque, exits: Counter) -> None:
    stats = percentiles_ms(latencies)
    if stats:
        log.info("capture->detections ms p50 %.1f p99 %.1f max %.1f | exits %s",
                 stats["p50"], stats["p99"], stats["max"], dict(sorted(exits.items())))
        log.info("input sizes %s", {k.split(".", 1)[1]: v for k, v in sorted(node.counters.items()) if k.startswith("input.")})
    dropped = " ".join(f"{k.split('.', 1)[1]} {v}" for k, v in sorted(node.counters.items()) if k.startswith("frames."))
    log.info("frames received %d superseded %d malformed %d | %s", frames.received, frames.superseded,
             frames.malformed, dropped or "none dropped")


def main(argv: list[str] | None = None) -> int:
    return run_node(__doc__.splitlines()[0], DetectorConfig, detect, argv, check)


if __name__ == "__main__":
    raise SystemExit(main())
