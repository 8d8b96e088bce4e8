"""Capture node: reads a video file, camera, image folder or synthetic pattern and publishes frames.

Pixels go into a shared-memory ring (decoded in place when the source allows); only a header
crosses ZeroMQ. Paced at the source's frame rate, a fixed rate, or as fast as possible.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

from perception.latency import now_ns
from perception.messages import FrameHeader, FrameTransport, Stamp
from perception.node import FatalInputError, Node, NodeSettings, run_node
from perception.sources import SourceConfig, SourceError, open_source
from perception.timing import RateKeeper

log = logging.getLogger("capture")


@dataclass(frozen=True)
class CaptureConfig:
    source: SourceConfig
    node: NodeSettings = field(default_factory=NodeSettings)
    rate: Literal["source", "max"] | float = "source"  # source: the file's/camera's own fps
    transport: Literal["shm", "inline"] = "shm"  # inline: pixels inside the message (for tcp://)
    ring_slots: int = 8
    max_frames: int | None = None
    topic: str = "frames"
    wait_for_subscribers: int = 0  # replay: hold the first frame until this many consumers listen
    wait_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if isinstance(self.rate, float) and self.rate <= 0:
            raise ValueError(f"rate must be 'source', 'max' or a positive number, got {self.rate}")
        if not 2 <= self.ring_slots <= 256:
            raise ValueError(f"ring_slots must be 2..256, got {self.ring_slots}")


CONFIG = CaptureConfig


def capture(node: Node, config: CaptureConfig) -> None:
    try:
        source = open_source(config.source)
    except SourceError as exc:
        raise FatalInputError(str(exc)) from None
    with source:
        hz = {"source": source.fps, "max": None}.get(config.rate, config.rate)  # type: ignore[arg-type]
        log.info("%s, publishing %s at %s", source.description, config.transport, f"{hz:g} Hz" if hz else "max rate")
        pacer = RateKeeper(hz)
        sender = node.frame_sender(FrameTransport[config.transport.upper()], config.ring_slots)
        if config.wait_for_subscribers and not node.wait_for_subscribers(
            config.topic, config.wait_for_subscribers, config.wait_timeout_s
        ):
            log.warning("only %d of %d subscribers after %.1f s; starting anyway",
                        node.publisher.subscriber_count(config.topic), config.wait_for_subscribers, config.wait_timeout_s)
        shape = None
        frame_id = 0
        while node.ok() and (config.max_frames is None or frame_id < config.max_frames):
            node.sleep_until(pacer.next_deadline())
            reservation = sender.reserve(shape)
            item = source.read(reservation.array if reservation else None)
            if item is None:
                log.info("source ended after %d frames", frame_id)
                break
            frame, media_ns = item
            capture_ns = now_ns()
            shape = shape or frame.shape
            if frame.shape != shape:
                node.count("frames.bad_shape")
                log.warning("frame %s does not match the stream's %s; dropped", frame.shape, shape)
                continue
            frame_id += 1
            header = FrameHeader(
                frame_id=frame_id, capture_ns=capture_ns, stamps=(Stamp("capture", capture_ns),), media_ns=media_ns,
                width=frame.shape[1], height=frame.shape[0], channels=frame.shape[2], transport=sender.transport,
            )
            sender.send(config.topic, frame, header, reservation)
            node.count("frames.sent")
            node.counters["frames.bad_source"] = source.bad_frames
            node.counters["pacing.slips"] = pacer.slips
            node.mark_frame_done(frame_id, capture_ns)


def main(argv: list[str] | None = None) -> int:
    return run_node(__doc__.splitlines()[0], CaptureConfig, capture, argv)


if __name__ == "__main__":
    raise SystemExit(main())
