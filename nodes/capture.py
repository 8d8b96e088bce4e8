"""Capture node: reads a video file, camera, stream, image folder, recording or synthetic pattern and publishes frames.

Pixels go into a shared-memory ring (decoded in place when the source allows); only a header
crosses ZeroMQ. Paced at the source's frame rate, a fixed rate, or as fast as possible. Frames
that change size mid-stream (a camera switching mode) go out at their new size, counted as
`frames.resized` (perception.transport.FrameSender gives them a ring that holds them).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Annotated, Literal

from perception.config import PositiveInt, Range, check_ranges
from perception.latency import now_ns
from perception.messages import FrameTransport, Stamp
from perception.node import DeviceLostError, FatalInputError, InputUnavailableError, Node, NodeSettings, run_node
from perception.live_sources import DeviceError
from perception.sources import SourceConfig, SourceError, open_source
from perception.graph import Port
from perception.timing import Pacer
from perception.topics import DECISIONS, FRAMES, HEARTBEAT

log = logging.getLogger("capture")


@dataclass(frozen=True)
class CaptureConfig:
    source: SourceConfig
    node: NodeSettings = field(default_factory=NodeSettings)
    # source: the recorded timeline (a camera: as it delivers); max: as fast as frames come; or frames per second
    rate: Literal["source", "max"] | Annotated[float, Range(0, 1000, low_open=True)] = "source"
    speed: Annotated[float, Range(0.001, 1000)] = 1.0  # rate source: play the recorded timeline this many times faster
    lockstep_timeout_s: Annotated[float, Range(0.01, 3600)] = 10.0
    transport: Literal["shm", "inline"] = "shm"  # inline: pixels inside the message (for tcp://)
    ring_slots: Annotated[int, Range(2, 256)] = 8
    max_frames: PositiveInt | None = None
    wait_for_subscribers: Annotated[int, Range(0, 1000)] = 0  # replay: hold the first frame until this many consumers listen
    wait_timeout_s: Annotated[float, Range(0, 3600)] = 10.0

    def __post_init__(self) -> None:
        check_ranges(self)


CONFIG = CaptureConfig
INPUTS = {
    "lockstep": Port(DECISIONS, required=False),  # deterministic replay: frame N+1 after a decision about N
    "ready": Port(HEARTBEAT, required=False),  # the first frame once these nodes run their loops (models loaded, warm)
}
OUTPUTS = (FRAMES,)


def capture(node: Node, config: CaptureConfig) -> None:
    try:
        source = open_source(config.source)
    except DeviceError as exc:
        raise InputUnavailableError(str(exc)) from None
    except SourceError as exc:
        raise FatalInputError(str(exc)) from None
    with source:
        pacer = Pacer(config.rate, config.speed, source.paced_by_device)
        log.info("%s, publishing %s, %s", source.description, config.transport, pacer.describe())
        sender = node.frame_sender(FrameTransport[config.transport.upper()], config.ring_slots)
        decisions = node.subscribe("lockstep", DECISIONS, latest=False, optional=True)
        if config.wait_for_subscribers and not node.wait_for_subscribers(
            FRAMES, config.wait_for_subscribers, config.wait_timeout_s
        ):
            log.warning("only %d of %d subscribers after %.1f s; starting anyway",
                        node.publisher.subscriber_count(FRAMES), config.wait_for_subscribers, config.wait_timeout_s)
        if node.input_edges("ready"):
            silent = node.wait_for_nodes("ready", config.wait_timeout_s)
            if silent:
                log.warning("%s not running after %.1f s; starting anyway", ", ".join(silent), config.wait_timeout_s)
        shape = None
        frame_id = 0
        while node.ok() and (config.max_frames is None or frame_id < config.max_frames):
            reservation = sender.reserve(shape)
            try:
                item = source.read(reservation.array if reservation else None)
            except SourceError as exc:
                raise input_error(exc) from None
            if item is None:
                log.info("source ended after %d frames", frame_id)
                break
            frame, media_ns = item
            if frame.shape != shape:
                if shape is not None:  # a camera switching mode, an image folder of mixed sizes
                    node.count("frames.resized")
                    log.info("frames change size at frame %d: %dx%d -> %dx%d", frame_id + 1, shape[1], shape[0],
                             frame.shape[1], frame.shape[0])
                shape = frame.shape
                sender.prepare(shape)  # a ring that holds it, before the frame is stamped
            node.sleep_until(pacer.deadline(media_ns))
            capture_ns = now_ns()
            frame_id += 1
            sender.send(frame, frame_id=frame_id, capture_ns=capture_ns, media_ns=media_ns,
                        stamps=(Stamp("capture", capture_ns),), reservation=reservation)
            node.count("frames.sent")
            node.counters["frames.bad_source"] = source.bad_frames
            node.mark_frame_done(frame_id, capture_ns)
            if decisions is not None and not wait_for_decision(node, decisions, frame_id, config.lockstep_timeout_s):
                node.count("lockstep.timeouts")
                log.warning("no decision about frame %d within %.1f s; going on", frame_id, config.lockstep_timeout_s)


def input_error(exc: SourceError) -> Exception:
    """A lost camera is retried by the launcher; a bad file is not."""
    return DeviceLostError(str(exc)) if isinstance(exc, DeviceError) else FatalInputError(str(exc))


def wait_for_decision(node: Node, decisions, frame_id: int, timeout_s: float) -> bool:
    deadline = now_ns() + int(timeout_s * 1e9)
    while node.ok() and now_ns() < deadline:
        if decisions in node.poll(0.05) and any(r.message.frame_id >= frame_id for r in decisions.receive()):
            return True
    return not node.ok()


def main(argv: list[str] | None = None) -> int:
    return run_node(__doc__.splitlines()[0], CaptureConfig, capture, argv)


if __name__ == "__main__":
    raise SystemExit(main())
