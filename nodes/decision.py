"""Decision node: turns each frame's detections into PROCEED, SLOW or BRAKE with a reason."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from perception.config import check_ranges
from perception.decision import DecisionRules, decision_maker
from perception.detection.classes import detections_class_names
from perception.latency import now_ns
from perception.interface import NodeInterface
from perception.node import NodeSettings, run_node
from perception.graph import Port
from perception.topics import DECISIONS, DETECTIONS

log = logging.getLogger("decision")


@dataclass(frozen=True)
class DecisionConfig:
    node: NodeSettings = field(default_factory=NodeSettings)
    classes_file: Path | None = None  # names of the detector's class ids; default: its model's (node.class_names)
    rules: DecisionRules = field(default_factory=DecisionRules)
    deterministic: bool = False  # deterministic replay (lockstep): nothing is ever stale, nothing is dropped

    def __post_init__(self) -> None:
        check_ranges(self)


CONFIG = DecisionConfig
INPUTS = {"detections": Port(DETECTIONS)}
OUTPUTS = (DECISIONS,)


def check(config: DecisionConfig) -> None:
    decision_maker(config.rules, detections_class_names(config.node.class_names, config.classes_file))


def decide(node: NodeInterface, config: DecisionConfig) -> None:
    maker = decision_maker(config.rules, detections_class_names(config.node.class_names, config.classes_file), node.name)
    detections = node.subscribe("detections", DETECTIONS, latest=False)
    actions: Counter = Counter()
    while node.ok():
        if detections in node.poll(0.1):
            for received in detections.receive():
                if not config.deterministic and now_ns() - received.message.capture_ns > config.node.budget_ms * 1e6:
                    node.count("detections.stale")
                    continue
                decision = maker.decide(received.message, now_ns())
                node.publish(DECISIONS, decision)
                actions[decision.action.name] += 1
                node.count(f"decisions.{decision.action.name.lower()}")
                node.mark_frame_done(decision.frame_id, decision.capture_ns)
    log.info("decisions %s", dict(actions))


def main(argv: list[str] | None = None) -> int:
    return run_node(__doc__.splitlines()[0], DecisionConfig, decide, argv, check)


if __name__ == "__main__":
    raise SystemExit(main())
