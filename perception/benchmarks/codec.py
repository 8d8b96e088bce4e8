"""What the message codec costs: encode + decode (with every field validated) per message type.

    python -m perception.benchmarks.codec [--repeat 7] [--loops 2000] [--json F]

Messages as the pipeline sends them: a frame header with its capture and publish stamps,
detections with 10 and with 50 boxes and the detector's stamps, a decision with its target and
the stamps of every hop, a heartbeat with its counters, a watchdog status and a control. The
figure per type is the median over `repeat` rounds of the mean over `loops` encode+decode pairs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from perception.messages import (
    Action, Control, Decision, Detections, FrameHeader, FrameTransport, Heartbeat, Message, NetworkPass, NodeState, Reason, Stamp, SystemState, Target, TopicHealth, TopicState, WatchdogStatus,
)
from perception.codec import decode, encode
from perception.topics import MONITORED

T = 10**15  # a monotonic clock some days after boot, in ns


def _stamps(n: int) -> tuple[Stamp, ...]:
    return tuple(Stamp(f"stage{i}", T + i * 1000) for i in range(n))


def _detections(n: int) -> Detections:
    rng = np.random.default_rng(0)
    boxes = rng.uniform(0, 600, (n, 4)).astype(np.float32)
    boxes[:, 2:] = boxes[:, :2] + 50
    return Detections(frame_id=123, capture_ns=T, stamps=_stamps(8), media_ns=4_000_000_000, image_width=1280,
                      image_height=720, exit_index=1, exit_count=2, boxes=boxes,
                      scores=rng.uniform(0, 1, n).astype(np.float32), class_ids=np.zeros(n, np.uint16),
                      track_ids=np.arange(n, dtype=np.uint32), velocities=rng.normal(0, 5, (n, 2)).astype(np.float32),
                      measured_by=NetworkPass(input_width=544, input_height=320, exit_index=1))


def samples() -> dict[str, Message]:
    return {
        "frame header": FrameHeader(frame_id=123, capture_ns=T, stamps=_stamps(2), media_ns=4_000_000_000, width=1280,
                                    height=720, channels=3, transport=FrameTransport.SHM,
                                    ring="perception-1234abcd-capture", slot=3, seq=9),
        "detections, 10 boxes": _detections(10),
        "detections, 50 boxes": _detections(50),
        "decision": Decision(frame_id=123, capture_ns=T, stamps=_stamps(9), action=Action.BRAKE,
                             reason=Reason.OBJECT_IN_PATH, decided_by="decision", detail="person in path, ttc 1.4 s",
                             target=Target(0, 0.91, (410.0, 220.0, 480.0, 400.0), 1.4)),
        "heartbeat": Heartbeat(frame_id=123, capture_ns=T, node="detector", pid=4321, seq=99, sent_ns=T + 5,
                               state=NodeState.OK, counters={f"counter{i}": i * 7 for i in range(12)}),
        "watchdog status": WatchdogStatus(frame_id=123, capture_ns=T, state=SystemState.NOMINAL, depth_limit=1,
                                          topics=tuple(TopicHealth(t.name, TopicState.OK, 24.9) for t in MONITORED),
                                          counters={f"counter{i}": i for i in range(10)}),
        "control": Control(frame_id=123, capture_ns=T, target="detector", max_depth=1, reason="current ceiling"),
    }


def measure(message: Message, loops: int, repeat: int) -> dict:
    message_type = type(message)
    data = encode(message)
    assert decode(data, message_type) == message
    rounds = []
    for _ in range(repeat):
        start = time.perf_counter_ns()
        for _ in range(loops):
            decode(encode(message), message_type)
        rounds.append((time.perf_counter_ns() - start) / loops / 1000)
    return {"encode_decode_us": round(statistics.median(rounds), 1), "bytes": len(data)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perception.benchmarks.codec", description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--loops", type=int, default=2000)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    results = {name: measure(message, args.loops, args.repeat) for name, message in samples().items()}
    for name, r in results.items():
        print(f"{name:<22} {r['encode_decode_us']:>7.1f} us  {r['bytes']:>6} bytes")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
