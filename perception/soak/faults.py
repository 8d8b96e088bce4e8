"""The faults a soak injects: signals to node processes, bad messages from a rogue publisher, CPU load.

kill     SIGKILL a node: the launcher restarts it, the watchdog brakes meanwhile.
stop     SIGSTOP a node, SIGCONT after a random time, half the time shorter than its hang timeout
         (it must resume, not be restarted) and half the time longer (the launcher must kill and
         restart it).
term     SIGTERM nobody ordered: the node leaves as failed (exit 143) and is restarted.
garbage  random bytes, a truncated message, a valid message of the wrong kind, an empty or
         hostile (deeply nested) payload, a well-formed message with an impossible field.
forged   well-formed messages that lie: stamps from the future, decisions and detections about
         frames capture never sent, a decision naming a real frame with another capture stamp,
         a frame in another run's shared memory.
load     a busy-looping process for a few seconds (not in the default set: on a 2-core machine
         the watchdog, unless at SCHED_FIFO as the vehicle launch file runs it, is late behind it).

The rogue publishes at its own endpoint, which the soak adds to the nodes' inputs (perception.soak.
command): a rogue cannot take over a node's bound ipc endpoint, and a soak must not edit the
launch's files. It never forges what the pipeline cannot tell from the truth (a decision with a
real frame's id and capture stamp, or a frame in this run's ring): inside the 0700 run directory
that is the camera's or the decision node's own voice.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zmq

from perception.benchmarks.watchdog import burn_cpu
from perception.messages import (
    Action, Decision, Detections, FrameHeader, FrameTransport, Heartbeat, Message, NodeState, Reason, Stamp,
)
from perception.codec import encode
from perception.topics import DECISIONS, DETECTIONS, FRAMES, Topic
from perception.transport import Publisher, resolve_endpoint

FAULT_KINDS = ("kill", "stop", "term", "garbage", "forged", "load")
DEFAULT_FAULTS = ("kill", "stop", "term", "garbage", "forged")
PROCESS_FAULTS = frozenset({"kill", "stop", "term"})
MESSAGE_FAULTS = frozenset({"garbage", "forged"})
ROGUE = "soak-rogue"  # an external publisher of the soak's launch (LaunchFile.external), at ipc://{run_dir}/soak-rogue.pub
FOREIGN_FRAME_IDS = 1_000_000_000  # ids of forged frames and decisions: far above any real frame's
MS = 1_000_000


@dataclass(frozen=True)
class Fault:
    t_ns: int
    kind: str
    target: str  # a node, or for message faults the topics written to
    detail: str
    pid: int | None = None


def forged(message: Message, **fields: object) -> bytes:
    """Wire bytes of `message` with `fields` replaced, skipping the checks a sender runs: what a
    buggy or hostile publisher could send."""
    import copy

    bad = copy.copy(message)
    for name, value in fields.items():
        object.__setattr__(bad, name, value)
    return encode(bad)


class ProcessFaults:
    """Signals through pidfds: a SIGCONT due later can never reach a process that reused the pid."""

    def __init__(self) -> None:
        self._resume: list[tuple[int, int]] = []  # (due ns, pidfd) of stopped processes

    def send(self, pid: int, signum: int) -> bool:
        """False when the process is already gone."""
        fd = _pidfd(pid)
        if fd is None:
            return False
        try:
            return _send(fd, signum)
        finally:
            os.close(fd)

    def stop(self, pid: int, until_ns: int) -> bool:
        """SIGSTOP now, SIGCONT at `until_ns` (tick); False when the process is already gone."""
        fd = _pidfd(pid)
        if fd is None:
            return False
        if not _send(fd, signal.SIGSTOP):
            os.close(fd)
            return False
        self._resume.append((until_ns, fd))
        return True

    def tick(self, now_ns: int) -> None:
        """SIGCONT every stopped process whose time is up (if the launcher has not killed it)."""
        due = [(t, fd) for t, fd in self._resume if t <= now_ns]
        self._resume = [(t, fd) for t, fd in self._resume if t > now_ns]
        for _, fd in due:
            _send(fd, signal.SIGCONT)
            os.close(fd)

    def stopped(self) -> int:
        return len(self._resume)

    def close(self) -> None:
        self.tick(2**63 - 1)


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        return None


def _send(fd: int, signum: int) -> bool:
    try:
        signal.pidfd_send_signal(fd, signum)
    except ProcessLookupError:
        return False
    return True


class Load:
    """Busy-looping processes (perception.benchmarks.watchdog.burn_cpu), each for its own time."""

    def __init__(self) -> None:
        self._context = mp.get_context("spawn")  # never fork a process that runs threads and ZeroMQ
        self._running: list[tuple[int, mp.Process, object]] = []

    def start(self, until_ns: int) -> None:
        stop = self._context.Event()
        process = self._context.Process(target=burn_cpu, args=(stop,), daemon=True)
        process.start()
        self._running.append((until_ns, process, stop))

    def tick(self, now_ns: int) -> None:
        for item in [r for r in self._running if r[0] <= now_ns]:
            self._running.remove(item)
            _, process, stop = item
            stop.set()
            process.join(2)
            if process.is_alive():
                process.kill()
                process.join()
            process.close()

    def close(self) -> None:
        self.tick(2**63 - 1)


class Rogue:
    """A publisher of garbage and forged messages on the topics the soak let it reach."""

    def __init__(self, context: zmq.Context, run_dir: Path, topics: list[Topic], rng: random.Random) -> None:
        self.publisher = Publisher(context, resolve_endpoint(ROGUE, run_dir))
        self.topics = topics
        self.rng = rng
        self.sent: dict[str, int] = {}  # variant -> messages

    def close(self) -> None:
        self.publisher.close()

    def inject(self, kind: str, now_ns: int, last_frame: FrameHeader | None) -> str:
        """A burst of 1-8 messages of `kind` (garbage or forged); returns what was sent."""
        sent = []
        for _ in range(self.rng.randint(1, 8)):
            topic = self.rng.choice(self.topics)
            makers = self._garbage(topic, now_ns) if kind == "garbage" else self._forged(topic, now_ns, last_frame)
            variant, payload = makers[self.rng.choice(sorted(makers))]()
            self.publisher.socket.send_multipart([topic.name.encode(), payload], flags=zmq.NOBLOCK)
            self.sent[variant] = self.sent.get(variant, 0) + 1
            sent.append(f"{topic.name} {variant}")
        return ", ".join(sent)

    def _foreign_id(self) -> int:
        return FOREIGN_FRAME_IDS + self.rng.randrange(10**6)

    def _valid(self, topic: Topic, now_ns: int) -> Message:
        """A message this topic carries, about a frame capture never sent."""
        frame_id = self._foreign_id()
        if topic is FRAMES:
            return FrameHeader(frame_id=frame_id, capture_ns=now_ns, media_ns=0, width=640, height=480, channels=3,
                               transport=FrameTransport.SHM, ring="perception-00000000-rogue-1", slot=0, seq=1)
        if topic is DETECTIONS:
            return Detections(frame_id=frame_id, capture_ns=now_ns, image_width=640, image_height=480,
                              exit_index=0, exit_count=2, boxes=np.array([[280, 300, 360, 470]], np.float32),
                              scores=np.array([0.9], np.float32), class_ids=np.array([0], np.uint16))
        return Decision(frame_id=frame_id, capture_ns=now_ns, action=Action.PROCEED, reason=Reason.CLEAR,
                        decided_by="decision")

    def _garbage(self, topic: Topic, now_ns: int) -> dict:
        valid = self._valid(topic, now_ns)
        wire = encode(valid)
        wrong = Heartbeat(frame_id=0, capture_ns=0, node="rogue", pid=1, seq=1, sent_ns=0, state=NodeState.OK)
        impossible = {FRAMES: {"ring": "a/b", "width": 0, "stamps": tuple(Stamp(f"s{i}", now_ns) for i in range(32))},
                      DETECTIONS: {"image_width": 0, "scores": np.array([2.0], np.float32),
                                   "boxes": np.array([[np.nan, 0, 1, 1]], np.float32)},
                      DECISIONS: {"decided_by": "../x", "stamps": (Stamp("a", now_ns), Stamp("b", now_ns - 1))}}[topic]
        field, value = self.rng.choice(sorted(impossible.items(), key=lambda item: item[0]))
        return {
            "random bytes": lambda: ("random bytes", self.rng.randbytes(self.rng.randint(1, 4096))),
            "truncated": lambda: ("truncated", wire[: self.rng.randint(1, len(wire) - 1)]),
            "wrong kind": lambda: ("wrong kind", encode(wrong)),
            "empty": lambda: ("empty", b""),
            "nested": lambda: ("nested", b"[" * 100_000),
            "impossible field": lambda: (f"impossible {field}", forged(valid, **{field: value})),
        }

    def _forged(self, topic: Topic, now_ns: int, last_frame: FrameHeader | None) -> dict:
        valid = self._valid(topic, now_ns)
        future = now_ns + 10_000 * MS
        makers = {"future stamp": lambda: ("future stamp", forged(valid, capture_ns=future, stamps=())),
                  "unknown frame": lambda: ("unknown frame", encode(valid))}
        if topic is DECISIONS:
            makers["far future"] = lambda: ("far future", forged(valid, capture_ns=2**62))
            if last_frame is not None:  # a real frame's id with another capture stamp
                makers["wrong capture"] = lambda: ("wrong capture", forged(valid, frame_id=last_frame.frame_id,
                                                                           capture_ns=last_frame.capture_ns + 1))
        return makers
