"""The launcher's last brake: when a critical node failed for good, the launch keeps braking for
FAILSAFE_HOLD_S before it stops every node, publishing the BRAKE itself where a failed watchdog no
longer can."""

from __future__ import annotations

import logging
import time
from typing import Callable, Sequence

import zmq

from perception.latency import now_ns
from perception.launch.process import ManagedNode
from perception.messages import Action, Decision, Reason, Stamp
from perception.security import CurveServer, Identity
from perception.topics import DECISIONS
from perception.transport import Publisher

log = logging.getLogger("launch")

# How long the launch keeps braking before it stops every node, and how often the launcher repeats a
# dead watchdog's brake (consumers reconnect to its endpoint within ZeroMQ's 100 ms reconnect interval).
FAILSAFE_HOLD_S = 0.5
FAILSAFE_REPEAT_S = 0.1


def hold_fail_safe(context: zmq.Context, identity: Identity | None, nodes: Sequence[ManagedNode], failure: str,
                   wait: Callable[[float], None]) -> None:
    """Brake for FAILSAFE_HOLD_S before stopping a launch whose critical node failed for good
    (`failure` says which and how). A watchdog still running brakes by itself (the failed node's last
    heartbeats said FAILED: node down); a failed watchdog has left its endpoint free, and the launcher
    publishes a fail-safe BRAKE there in its place, to the consumers connected to it. `wait(timeout_s)`
    does the launcher's own work (heartbeats) in between."""
    publishers: list[tuple[Publisher, CurveServer | None]] = []
    for managed in nodes:
        if managed.spec.node == "watchdog" and managed.state == "failed":
            curve = CurveServer(context, identity) if managed.key and identity else None
            try:
                publishers.append((Publisher(context, managed.bind, curve=curve), curve))
            except RuntimeError as exc:
                log.error("cannot publish the fail-safe in place of %s: %s", managed.spec.name, exc)
                if curve is not None:
                    curve.stop()
    deadline = time.monotonic() + FAILSAFE_HOLD_S
    next_brake = 0.0
    while (now := time.monotonic()) < deadline:
        if publishers and now >= next_brake:
            next_brake = now + FAILSAFE_REPEAT_S
            brake = fail_safe_decision(nodes, failure)
            for publisher, _ in publishers:
                publisher.publish(DECISIONS, brake)
        wait(max(0.0, min(next_brake, deadline) - time.monotonic()))
    for publisher, curve in publishers:
        publisher.close(linger_ms=100)
        if curve is not None:
            curve.stop()
    if publishers:
        log.warning("fail-safe BRAKE published in place of the failed watchdog for %.1f s", FAILSAFE_HOLD_S)


def fail_safe_decision(nodes: Sequence[ManagedNode], failure: str) -> Decision:
    """A BRAKE from the launcher about the newest frame any of its nodes reported (none: frame 0, now)."""
    now = now_ns()
    beats = [m.heartbeat for m in nodes if m.heartbeat is not None and 0 < m.heartbeat.capture_ns <= now]
    newest = max(beats, key=lambda beat: beat.frame_id, default=None)
    frame_id, capture_ns = (newest.frame_id, newest.capture_ns) if newest else (0, now)
    return Decision(frame_id=frame_id, capture_ns=capture_ns, stamps=(Stamp("launcher", now),),
                    action=Action.BRAKE, reason=Reason.NODE_DOWN, decided_by="launcher",
                    detail=f"critical node {failure}: pipeline stopping")
