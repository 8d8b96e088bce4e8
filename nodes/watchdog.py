"""Watchdog node: enforces the capture-to-decision budget, fails safe, degrades depth.

Publishes fail-safe BRAKE decisions on the decisions topic (consumers listen to the decision node
and to the watchdog), depth ceilings on the control topic, and a WatchdogStatus every status period
(perception.topics).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Annotated

from perception.config import Range, check_ranges

from perception.latency import now_ns
from perception.interface import NodeInterface
from perception.node import NodeSettings, run_node
from perception.timing import Periodic
from perception.config import ConfigError
from perception.graph import Port
from perception.topics import CONTROL, DECISIONS, DETECTIONS, FRAMES, HEARTBEAT, WATCHDOG_STATUS
from perception.watchdog import Outputs, WatchdogCore, WatchdogRules

log = logging.getLogger("watchdog")


@dataclass(frozen=True)
class WatchdogConfig:
    node: NodeSettings = field(default_factory=NodeSettings)
    rules: WatchdogRules = field(default_factory=WatchdogRules)
    status_period_ms: Annotated[float, Range(1, 60_000)] = 100.0
    control_period_ms: Annotated[float, Range(1, 60_000)] = 1000.0  # re-send the ceiling so a restarted detector learns it

    def __post_init__(self) -> None:
        check_ranges(self)


CONFIG = WatchdogConfig
INPUTS = {
    "frames": Port(FRAMES),  # each gets its deadline
    "detections": Port(DETECTIONS, required=False),  # for the topic monitor only
    "decisions": Port(DECISIONS),  # each answers its frame
    "heartbeats": Port(HEARTBEAT),  # the nodes it watches: any silent past heartbeat_timeout_ms is down
}
OUTPUTS = (DECISIONS, WATCHDOG_STATUS, CONTROL)  # fail-safes; its state; depth ceilings for the readers of `control`


def watch(node: NodeInterface, config: WatchdogConfig) -> None:
    publishers = {FRAMES: node.input_publishers("frames"), DETECTIONS: node.input_publishers("detections"),
                  DECISIONS: node.input_publishers("decisions")}
    targets = node.settings.readers.get(CONTROL.output, [])
    if len(targets) > 1:
        raise ConfigError(f"node {node.name}: its control is read by {', '.join(targets)}: one depth ceiling "
                          f"is for one detector (give each detector its own watchdog)")
    core = WatchdogCore(config.rules, node.name, now_ns(), node.input_publishers("heartbeats"), publishers,
                        targets[0] if targets else None, config.node.budget_ms)
    frames = node.subscribe("frames", FRAMES, latest=False)
    detections = node.subscribe("detections", DETECTIONS, latest=False, optional=True)
    decisions = node.subscribe("decisions", DECISIONS, latest=False)
    heartbeats = node.subscribe("heartbeats", HEARTBEAT, latest=False)
    status_due, control_due = Periodic(config.status_period_ms / 1e3, True), Periodic(config.control_period_ms / 1e3, True)
    node.mark_frame_done(0, 0)
    while node.ok():
        wake = core.next_wakeup_ns()
        timeout_s = 0.05 if wake is None else max(0.0, min(0.05, (wake - now_ns()) / 1e9))
        ready = node.poll(timeout_s)
        # Frames before decisions: a decision for a frame that arrived in the same batch answers it.
        if frames in ready:
            for received in frames.receive():
                core.on_message(FRAMES, now_ns())
                core.on_frame(received.message, received.clock_uncertainty_ns)
        if detections in ready:
            for _ in detections.receive():
                core.on_message(DETECTIONS, now_ns())
        if decisions in ready:
            for received in decisions.receive():
                if received.message.decided_by != node.name:
                    publish(node, core.on_decision(received.message, now_ns(), received.clock_uncertainty_ns))
        if heartbeats in ready:
            for received in heartbeats.receive():
                core.on_heartbeat(received.message, now_ns())
        publish(node, core.tick(now_ns()))
        if status_due.due():
            node.publish(WATCHDOG_STATUS, core.status())
            node.counters.update(core.counters)
        if control_due.due():
            node.publish(CONTROL, core.control_now())
    log.info("%s", " ".join(f"{k} {v}" for k, v in core.status().counters.items()))


def publish(node: NodeInterface, out: Outputs) -> None:
    for decision in out.decisions:
        node.publish(DECISIONS, decision)
        log.warning("fail-safe BRAKE for frame %d: %s: %s", decision.frame_id, decision.reason.name, decision.detail)
    for control in out.controls:
        node.publish(CONTROL, control)
        log.warning("depth ceiling -> %d: %s", control.max_depth, control.reason)


def main(argv: list[str] | None = None) -> int:
    return run_node(__doc__.splitlines()[0], WatchdogConfig, watch, argv)


if __name__ == "__main__":
    raise SystemExit(main())
