"""Record drives, replay them through the full pipeline, compare runs, and benchmark the pipeline.

    perception record OUTPUT.mcap --source VIDEO|IMAGE_DIR|RECORDING | --camera N  [--frames N]
    perception replay RECORDING [--speed 1.0|max] [--decision KEY=VALUE]... [--save D.jsonl] [--compare REF.jsonl]
                      [--json R] [--plots DIR] [--foxglove [PORT]]
    perception bench [--recording R | --synthetic 1280x720] [--rate HZ] [--duration S] [--load N] [--json R] [--plots DIR]
                     [--baseline] [--foxglove [PORT]]

Every run is the real pipeline (capture -> detector -> decision -> watchdog, and a recorder when
recording) as processes under the launcher, as launch/replay.yaml defines it. `--speed max`
replays deterministically: the capture node sends the next frame only after a decision about the
previous one, and the detector ignores wall-clock deadlines, so the same recording and config give
the same decisions and exits run after run; `--compare` checks that against a saved reference,
like openpilot's process replay. `record` opens its source and checks its output folder (writable,
`min_free_mb` free) before starting anything (a bad one is one line, exit 2), ends the run when the
recorder cannot go on (out of space), and never leaves an empty file or reports a failed run as
recorded. `--foxglove` adds the live view (nodes/viewer.py, docs/LIVE_VIEW.md) to a replay or a bench.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from perception.config import ConfigError, command_line_overrides
from perception.detection.builder import DetectorSettings
from perception.ros2bag import is_ros2_bag
from perception.node_replay import by_frame, replay_node
from perception.pipeline import count_recorded_frames, pipeline_launch, run_pipeline, with_live_view
from perception.report import Collected, build_report, format_report, write_outputs
from perception.visualization import add_foxglove_argument

EXIT_DIFFERENT = 1
EXIT_BAD_INPUT = 2


# -- compare ------------------------------------------------------------------------------


def decision_rows(collected: Collected) -> list[dict]:
    """One line per frame decided by the decision node, with the detections it was based on."""
    detections = {d.frame_id: d for d in collected.detections}
    rows = []
    for _, decision in sorted(((t, d) for t, d in collected.decisions if not d.failsafe),
                              key=lambda item: item[1].frame_id):
        det = detections.get(decision.frame_id)
        rows.append({
            "frame_id": decision.frame_id, "action": decision.action.name, "reason": decision.reason.name,
            "target_class": decision.target.class_id if decision.target else None,
            "exit": det.exit_index if det else None,
            "detections": [[int(c), round(float(s), 4), *[round(float(v), 1) for v in b]]
                           for b, s, c in zip(det.boxes, det.scores, det.class_ids)] if det else None,
        })
    return rows


def compare_rows(reference: list[dict], current: list[dict], box_tolerance_px: float = 2.0,
                 score_tolerance: float = 0.02, decisions_only: bool = False) -> list[str]:
    """Differences, one line each. Actions, reasons, targets and exits must be equal; boxes and
    scores may differ by float noise between CPUs (the tolerances), not more. `decisions_only`:
    actions, reasons and targets alone (a run of another policy against a full-depth reference)."""
    ref = {row["frame_id"]: row for row in reference}
    cur = {row["frame_id"]: row for row in current}
    differences: list[str] = []
    for frame_id, a, b in by_frame(ref, cur, "missing in reference", "no decision in this run", differences):
        for key in ("action", "reason", "target_class") + (() if decisions_only else ("exit",)):
            if a[key] != b[key]:
                differences.append(f"frame {frame_id}: {key} {a[key]} -> {b[key]}")
        if not decisions_only and a["detections"] is not None and b["detections"] is not None:
            if len(a["detections"]) != len(b["detections"]):
                differences.append(f"frame {frame_id}: {len(a['detections'])} -> {len(b['detections'])} detections")
                continue
            for da, db in zip(sorted(a["detections"]), sorted(b["detections"])):
                if da[0] != db[0] or abs(da[1] - db[1]) > score_tolerance or \
                        max(abs(x - y) for x, y in zip(da[2:], db[2:])) > box_tolerance_px:
                    differences.append(f"frame {frame_id}: detection {da} -> {db}")
    return differences


def load_rows(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        raise ConfigError(f"{path}: reference not found") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: line {exc.lineno}: not JSON") from None


def replay_source(path: Path, topic: str | None) -> tuple[dict, int]:
    """(capture source, frames in it) of a drive to replay: this project's recording, or a ROS 2 bag."""
    from perception.ros2bag import choose_topic, image_topics

    if is_ros2_bag(path):
        topic = choose_topic(path, topic)
        return {"kind": "ros2", "path": str(path.resolve()), "topic": topic}, image_topics(path)[topic][1]
    if topic is not None:
        raise ValueError(f"--topic {topic}: {path} is no ROS 2 bag directory")
    return {"kind": "recording", "path": str(path.resolve())}, count_recorded_frames(path)


def replay_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="perception replay", description="replay a recorded drive through the pipeline")
    parser.add_argument("recording", type=Path,
                        help="a drive recorded by perception record (MCAP), or a ROS 2 bag directory (sqlite3 or MCAP)")
    parser.add_argument("--topic", help="a ROS 2 bag: its image topic (default: the bag's only one)")
    parser.add_argument("--speed", default="1.0", help="a factor of recorded time, or 'max' (deterministic)")
    parser.add_argument("--budget-ms", type=float, default=100.0,
                        help="capture-to-decision budget every frame is held to (default 100)")
    parser.add_argument("--decision", metavar="KEY=VALUE", action="append", default=[],
                        help="override a decision config key for this run, e.g. rules.brake_height=0.5 (repeatable)")
    parser.add_argument("--detector", metavar="KEY=VALUE", action="append", default=[],
                        help="override a detector config key for this run, e.g. policy.kind=fixed (repeatable)")
    parser.add_argument("--save", type=Path, help="write this run's decisions (JSON lines) here")
    parser.add_argument("--compare", type=Path, help="a reference saved with --save: print the differences")
    parser.add_argument("--decisions-only", action="store_true",
                        help="with --compare: compare actions, reasons and targets only, not exits and boxes")
    parser.add_argument("--json", type=Path, help="write the latency report (docs/REPORT.md) here")
    parser.add_argument("--plots", type=Path, help="write latency plots (PNG) into this folder")
    parser.add_argument("--node", metavar="NAME",
                        help="replay one node in-process on its recorded inputs and diff its outputs with the "
                             "recording's, field by field (perception/node_replay.py): e.g. decision")
    add_foxglove_argument(parser)
    args = parser.parse_args(argv)
    deterministic = args.speed == "max"
    from nodes.decision import DecisionConfig  # its settings' types: which are paths (classes_file)

    decision = command_line_overrides(args.decision, "--decision", DecisionConfig)
    detector = command_line_overrides(args.detector, "--detector", DetectorSettings)
    if args.node is not None:
        if is_ros2_bag(args.recording):
            parser.error(f"--node {args.node}: a ROS 2 bag holds no recorded node outputs to replay a node on")
        return _replay_node(args.recording, args.node, {"decision": decision, "detector": detector}.get(args.node, {}))
    try:
        speed = 1.0 if deterministic else float(args.speed)
    except ValueError:
        parser.error(f"--speed must be a number or 'max', got {args.speed!r}")
    try:
        source, frames = replay_source(args.recording, args.topic)
    except Exception as exc:  # RecordingError, Ros2BagError and friends: one line naming the file
        print(f"replay: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    # Read before the run: a missing or broken reference is an error now, not after a long replay.
    reference = load_rows(args.compare) if args.compare else None
    spec = pipeline_launch(source, rate="max" if deterministic else "source",
                           speed=speed, deterministic=deterministic, budget_ms=args.budget_ms, decision_params=decision,
                           detector_params=detector)
    spec = with_live_view(spec, args.foxglove, "replay")
    if spec is None:
        return EXIT_BAD_INPUT
    result = run_pipeline(spec, f"replay of {args.recording}", frames)
    title = (f"replay {args.recording.name} ({'deterministic, max speed' if deterministic else f'x{speed:g} recorded time'})"
             + "".join(f", {k} {v}" for k, v in {**decision, **detector}.items()))
    report = build_report(result.collected, args.budget_ms, title=title)
    print(format_report(report))
    write_outputs(report, args.json, args.plots)
    rows = decision_rows(result.collected)
    if args.save:
        args.save.write_text("".join(json.dumps(row) + "\n" for row in rows))
        print(f"saved {len(rows)} decisions to {args.save}")
    if reference is not None:
        differences = compare_rows(reference, rows, decisions_only=args.decisions_only)
        for line in differences[:50]:
            print(line)
        print(f"compare with {args.compare}: {len(differences)} difference(s) over {len(rows)} frames")
        if differences:
            return EXIT_DIFFERENT
    return result.exit_code


def _replay_node(recording: Path, name: str, overrides: dict) -> int:
    """`replay --node NAME`: one node on its recorded inputs, its outputs diffed with the recording's."""
    from perception.recording import RecordingError

    try:
        result = replay_node(recording, name, overrides)
    except (ConfigError, RecordingError) as exc:
        print(f"replay: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for line in result.differences[:50]:
        print(line)
    skipped = f"; frames whose input it dropped when recorded, not fed: {result.not_compared}" if result.not_compared else ""
    print(f"node replay of {name} on {recording}: {result.compared} recorded outputs compared{skipped}; "
          f"{len(result.differences)} difference(s)")
    return EXIT_DIFFERENT if result.differences else 0
