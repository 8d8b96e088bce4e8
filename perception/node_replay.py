"""Per-node replay, as openpilot's process_replay: one node body fed its recorded inputs in-process
(perception.testing), its outputs diffed field by field against what the recording holds.

    perception replay recordings/udacity_approach.mcap --node decision [--decision rules.brake_height=0.9]

A regression in one node is found without running the others, and named to the field. The node
runs with the config of its entry in launch/replay.yaml (the overrides given on top), made
deterministic where the node has the switch. Recorded stamps are shifted into the past before they
are fed (a recording made on a machine up longer than this one would be "in the future"), and the
outputs shifted back before the diff.

An input whose recorded output is missing was dropped by the recorded node for reasons of timing
(too old to act on when it arrived; the watchdog braked): it is not fed either, so the node's state
(hysteresis) evolves as it did, and it is reported as not compared.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from perception import REPO
from perception.config import ConfigError
from perception.latency import now_ns
from perception.launch import build_graph, load_launch_file, resolve_node_config
from perception.messages import Message, Stamp
from perception.recording_reader import RecordingReader
from perception.testing import TestingNode
from perception.topics import DECISIONS, DETECTIONS, Topic

PIPELINE_LAUNCH = REPO / "launch" / "replay.yaml"
SHIFT_MARGIN_NS = 10_000_000_000  # the newest recorded stamp is fed this far in the past


@dataclass(frozen=True)
class NodeReplay:
    """How one node is replayed: the recorded topic fed to each input, the output it is judged by,
    which recorded messages on that output are its own, and how they are compared."""

    body: str  # the body function of its module in nodes/
    inputs: dict[str, Topic]
    output: Topic
    is_own: Callable[[Message, str], bool]  # (recorded output, node name) -> whether this node sent it
    ignore: tuple[str, ...] = ("stamps",)  # fields never compared: when each stage ran
    tolerances: dict[str, float] = dataclasses.field(default_factory=dict)  # field -> absolute tolerance


REPLAYS: dict[str, NodeReplay] = {
    # A time to collision is a least-squares fit: another machine's floating point (a numpy build's
    # LAPACK, before perception.decision summed exactly) moves its last digits, not the decision.
    "decision": NodeReplay(body="decide", inputs={"detections": DETECTIONS}, output=DECISIONS,
                           is_own=lambda message, name: message.decided_by == name, tolerances={"ttc_s": 1e-6}),
}


def shift(message: Message, offset_ns: int) -> Message:
    """`message` with its capture stamp and stage stamps moved by `offset_ns`."""
    return dataclasses.replace(message, capture_ns=message.capture_ns + offset_ns,
                               stamps=tuple(Stamp(s.stage, s.t_ns + offset_ns) for s in message.stamps))


def field_differences(recorded: Message, replayed: Message, ignore: tuple[str, ...],
                      tolerances: dict[str, float], prefix: str = "") -> Iterator[str]:
    """'field: recorded -> replayed' for every field that differs beyond its tolerance."""
    for f in dataclasses.fields(recorded):
        if f.name in ignore:
            continue
        a, b = getattr(recorded, f.name), getattr(replayed, f.name)
        name = prefix + f.name
        if dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b):
            yield from field_differences(a, b, ignore, tolerances, f"{name}.")
        elif isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
            a, b = np.asarray(a), np.asarray(b)
            if a.shape != b.shape or not np.allclose(a, b, rtol=0, atol=tolerances.get(f.name, 0.0)):
                yield f"{name}: {np.round(a, 3).tolist()} -> {np.round(b, 3).tolist()}"
        elif isinstance(a, float) and isinstance(b, float):
            if not (a == b or abs(a - b) <= tolerances.get(f.name, 0.0)):
                yield f"{name}: {float(a):.10g} -> {float(b):.10g}"  # enough digits to see any difference past a tolerance
        elif a != b:
            yield f"{name}: {_show(a)} -> {_show(b)}"


def _show(value: object) -> str:
    return value.name if hasattr(value, "name") and hasattr(value, "value") else repr(value)


@dataclass
class NodeReplayResult:
    compared: int
    not_compared: list[int]  # frames whose input the recorded node dropped (no recorded output)
    differences: list[str]


def replay_node(recording: Path, name: str, overrides: dict[str, object]) -> NodeReplayResult:
    """Feed node `name` of launch/replay.yaml its inputs recorded in `recording` and diff its outputs.
    ConfigError (one line) for a node that cannot be replayed this way or a bad override."""
    if name not in REPLAYS:
        raise ConfigError(f"--node {name}: per-node replay knows {', '.join(REPLAYS)}")
    how = REPLAYS[name]
    launch = load_launch_file(PIPELINE_LAUNCH)
    entry = next((n for n in launch.nodes if n.name == name), None)
    if entry is None:
        raise ConfigError(f"--node {name}: {PIPELINE_LAUNCH} has no node {name!r}")
    entry = dataclasses.replace(entry, params={**entry.params, **overrides, "deterministic": True})
    graph = build_graph(dataclasses.replace(launch, nodes=[entry if n.name == name else n for n in launch.nodes]),
                        str(PIPELINE_LAUNCH))
    _, config = resolve_node_config(entry, str(PIPELINE_LAUNCH), launch.budget_ms, graph)
    body = getattr(importlib.import_module(f"nodes.{entry.node}"), how.body)

    fed_topics = set(how.inputs.values())
    recorded = list(RecordingReader(recording).messages(fed_topics | {how.output}))
    own = {m.frame_id: m for topic, _, m in recorded if topic is how.output and how.is_own(m, name)}
    inputs = [(topic, m) for topic, _, m in recorded if topic in fed_topics]
    offset = _offset([m for _, m in inputs])
    node = TestingNode(name, inputs=graph.inputs_of(name))
    not_compared = []
    for topic, message in inputs:
        if message.frame_id not in own:
            not_compared.append(message.frame_id)
            continue
        node.feed(topic, shift(message, offset))
    body(node, config)
    replayed = {m.frame_id: shift(m, -offset) for m in node.published(how.output)}
    differences = []
    for frame_id, a, b in by_frame(own, replayed, "not in the recording", "no output in this replay", differences):
        differences += [f"frame {frame_id}: {line}" for line in field_differences(a, b, how.ignore, how.tolerances)]
    return NodeReplayResult(len(own), sorted(set(not_compared)), differences)


def by_frame(before: dict, after: dict, only_after: str, only_before: str,
             differences: list[str]) -> Iterator[tuple[int, object, object]]:
    """(frame id, before, after) for the frames both have, in order; a frame only one has is a line
    in `differences` (`only_after` when `before` lacks it, `only_before` when `after` does)."""
    for frame_id in sorted(before.keys() | after.keys()):
        a, b = before.get(frame_id), after.get(frame_id)
        if a is None or b is None:
            differences.append(f"frame {frame_id}: {only_after if a is None else only_before}")
        else:
            yield frame_id, a, b


def _offset(messages: list[Message]) -> int:
    """How far to move recorded stamps so that the newest lies SHIFT_MARGIN_NS in the past."""
    newest = max((max([m.capture_ns, *(s.t_ns for s in m.stamps)]) for m in messages), default=0)
    return now_ns() - SHIFT_MARGIN_NS - newest
