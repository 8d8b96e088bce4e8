"""Monitor node: consumes frames, checks their pixels arrive intact, reports rate and latency.

Optionally writes one JSON line per frame (the launch tests and the handoff checks read it).
"""

from __future__ import annotations

import json
import logging
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from perception.config import Range, check_ranges

from perception.latency import now_ns, percentiles_ms, since_capture_ns, stage_durations_ns
from perception.messages import FrameHeader
from perception.node import Node, NodeSettings, run_node
from perception.graph import Port
from perception.topics import FRAMES
from perception.shm_ring import FrameOverwritten, RingError
from perception.sources import read_frame_index
from perception.timing import Periodic

log = logging.getLogger("monitor")


@dataclass(frozen=True)
class MonitorConfig:
    node: NodeSettings = field(default_factory=NodeSettings)
    latest: bool = False  # true: only ever look at the newest frame, as a detector would
    record: Path | None = None  # JSON lines, one per frame
    report_period_s: Annotated[float, Range(0.1, 3600)] = 5.0
    window: Annotated[int, Range(1, 1_000_000)] = 300  # frames in the rolling latency window

    def __post_init__(self) -> None:
        check_ranges(self)


CONFIG = MonitorConfig
INPUTS = {"frames": Port(FRAMES)}
OUTPUTS = ()


def monitor(node: Node, config: MonitorConfig) -> None:
    frames = node.subscribe("frames", FRAMES, latest=config.latest)
    receiver = node.frame_receiver()
    latencies: deque[int] = deque(maxlen=config.window)
    record = open(config.record, "a", buffering=1) if config.record else None
    reporting = Periodic(config.report_period_s)
    try:
        while node.ok():
            if frames in node.poll(0.1):
                for received in frames.receive():
                    header = received.message
                    entry = inspect(node, receiver, received)
                    latencies.append(entry["latency_ns"])
                    node.mark_frame_done(header.frame_id, header.capture_ns)
                    if record:
                        record.write(json.dumps(entry) + "\n")
            if reporting.due():
                report(node, latencies)
    finally:
        report(node, latencies)
        if record:
            record.close()


def inspect(node: Node, receiver, received) -> dict:
    header: FrameHeader = received.message
    received_ns = now_ns()
    entry = {"frame_id": header.frame_id, "capture_ns": header.capture_ns, "media_ns": header.media_ns,
             "ring": header.ring, "shape": list(header.shape)}
    try:
        view = receiver.view(received)
        entry["pixel_index"] = read_frame_index(view.array)
        entry["mean"] = round(float(view.array[::8, ::8].mean()), 3)
        entry["intact"] = view.still_valid()
        node.count("frames.ok" if entry["intact"] else "frames.overwritten")
    except FrameOverwritten:
        entry["intact"] = False
        node.count("frames.overwritten")
    except RingError as exc:
        entry["intact"] = False
        entry["error"] = str(exc)
        node.count("frames.unreadable")
    header = header.stamped("monitor", now_ns())
    entry["received_ns"] = received_ns
    entry["latency_ns"] = since_capture_ns(header, received_ns)
    entry["stages_ns"] = stage_durations_ns(header.capture_ns, header.stamps)
    return entry


def report(node: Node, latencies: deque[int]) -> None:
    stats = percentiles_ms(latencies)
    if stats:
        log.info("frames ok=%d overwritten=%d | capture->monitor ms p50 %.3f p99 %.3f max %.3f (last %d)",
                 node.counters.get("frames.ok", 0), node.counters.get("frames.overwritten", 0),
                 stats["p50"], stats["p99"], stats["max"], len(latencies))


def main(argv: list[str] | None = None) -> int:
    return run_node(__doc__.splitlines()[0], MonitorConfig, monitor, argv)


if __name__ == "__main__":
    raise SystemExit(main())
