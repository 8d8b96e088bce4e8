"""The `perception` command."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence


def _launch(args: argparse.Namespace) -> int:
    from perception.launch.command import launch_main

    return launch_main(args.launch_file, args.duration, args.status_file, args.foxglove, args.host, args.keys)


def _keys(args: argparse.Namespace) -> int:
    from perception.config import ConfigError
    from perception.security import LOCAL_KEY, SECRET_DIR, SecurityError, create_keys

    names = [n.strip() for n in args.hosts.split(",") if n.strip()] if args.hosts else []
    if args.launch is not None:
        from perception.launch import load_launch_file

        hosts = list(load_launch_file(args.launch).hosts) or [LOCAL_KEY]
        names += [h for h in hosts if h not in names]
    try:
        written = create_keys(args.keys_dir, names or [LOCAL_KEY])
    except SecurityError as exc:
        raise ConfigError(str(exc)) from None
    for path in written:
        print(path)
    print(f"copy {args.keys_dir}/public/ to every host and {args.keys_dir}/{SECRET_DIR}/NAME.key_secret only to host "
          f"NAME (keep the folders 0700, the secret keys 0600)", file=sys.stderr)
    return 0


def _bench_handoff(args: argparse.Namespace) -> int:
    from perception.benchmarks.frame_handoff import main as handoff_main

    return handoff_main(args.frames, args.json)


def _bench_detector(args: argparse.Namespace) -> int:
    from perception.benchmarks.detector import main as detector_main

    return detector_main(args.model, args.passes, args.threads, args.json, args.plot)


def _bench_watchdog(args: argparse.Namespace) -> int:
    from perception.benchmarks.watchdog import main as watchdog_main

    return watchdog_main(args.frames, args.rate, args.load, args.json, args.realtime)


def positive_ms(text: str) -> float:
    """A duration in milliseconds on the command line: a finite number above 0, up to an hour."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected milliseconds, got {text!r}") from None
    if not 0 < value <= 3_600_000:
        raise argparse.ArgumentTypeError(f"expected milliseconds above 0 and at most an hour, got {text!r}")
    return value


def exit_ceiling(text: str) -> int:
    """An exit index on the command line: 0 (the first exit) or above."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an exit index, 0 or above, got {text!r}")
    return value


def _evaluate(args: argparse.Namespace) -> int:
    import json

    from perception.benchmarks.pareto import detector_settings
    from perception.config import ConfigError
    from perception.detection.builder import build_detector
    from perception.evaluation import DEV_ANNOTATIONS, DEV_MOT, DEV_VIDEO
    from perception.evaluation.detector_eval import EVAL_NMS_THRESHOLD, EVAL_SCORE_THRESHOLD, load_annotations
    from perception.evaluation.sequence_eval import evaluate_sequence

    # The flags are overrides of the config's keys, after --detector's: validated as the file is (one line
    # naming the key), and a key no flag sets keeps the config's value.
    flags = {"policy.kind": "interval" if args.interval is not None else args.policy, "policy.exit": args.exit,
             "policy.interval": args.interval, "pixels": args.pixels, "engine.threads": args.threads}
    if args.interval is not None and args.policy not in (None, "interval"):
        raise ConfigError(f"--interval runs the interval policy: it cannot go with --policy {args.policy}")
    settings = detector_settings([*args.detector, *(f"{key}={value}" for key, value in flags.items() if value is not None)])
    policy = settings.policy
    if args.exit is not None and policy.kind not in ("fixed", "interval"):
        raise ConfigError(f"--exit applies to the fixed and interval policies, not {policy.kind} (add --policy fixed)")
    detector = build_detector(settings, EVAL_SCORE_THRESHOLD, EVAL_NMS_THRESHOLD)
    annotations = load_annotations(args.annotations or DEV_ANNOTATIONS, detector.network.manifest.class_names())
    truth = None
    mot = args.mot or (DEV_MOT if args.video is None else None)
    if mot is not None:
        from perception.evaluation.mot import load_mot_csv

        truth = load_mot_csv(mot)
    name = policy.kind + (f" every {policy.interval}" if policy.kind == "interval" else "")
    report = evaluate_sequence(name, detector, args.video or DEV_VIDEO, annotations, truth, progress=True,
                               deadline_ms=args.deadline_ms, max_exit=args.ceiling)  # the detector caps it at its deepest
    result = {**report.as_dict(), "pixels": detector.network.pixels}
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


# Commands with their own argument parsers: `perception NAME ARGS...` hands ARGS over untouched.
DELEGATED = {
    "train-exits": ("perception.training.distill", "main", "train the early-exit heads by distillation (needs .[train])"),
    "export": ("perception.training.export", "main", "export stages and exits to ONNX with their manifest (needs .[train])"),
    "build-engine": ("perception.engines.tensorrt.build", "build_main", "build TensorRT engines for a manifest"),
    "record": ("perception.record", "record_main", "record a drive (every topic, frames included) to MCAP"),
    "replay": ("perception.replay", "replay_main", "replay a recording through the pipeline; --compare a reference"),
    "convert": ("perception.convert", "convert_main", "a recorded drive as a ROS 2 bag (images, Detection2DArray, decisions)"),
    "migrate": ("perception.migrate", "migrate_main", "a drive recorded by an earlier build, in the current recording format"),
    "render": ("perception.render", "render_main", "a recorded drive as a video with boxes, decisions and latency drawn"),
    "bench": ("perception.bench", "bench_main", "latency test harness: per-stage and end-to-end latency report"),
    "pareto": ("perception.benchmarks.pareto", "main",
               "accuracy against detector time: pixel budgets x exits x keyframe intervals, and the adaptive policy"),
    "soak": ("perception.soak.command", "main",
             "run a launch for minutes on a looped source, inject faults, check invariants the whole time"),
    "fleet-replay": ("perception.fleet.command", "main",
                     "replay many drives in parallel as Ray tasks (here or on a cluster), one report (needs .[fleet])"),
}


def _run_delegated(name: str, argv: Sequence[str]) -> int:
    import importlib

    module, function, _ = DELEGATED[name]
    return getattr(importlib.import_module(module), function)(list(argv))


def _configured_policy() -> str:
    """The policy kind configs/detector.yaml sets, for --help (its validation is the detector's)."""
    from perception import REPO
    from perception.config import ConfigError, load_yaml

    try:
        return str((load_yaml(REPO / "configs" / "detector.yaml") or {}).get("policy", {}).get("kind", "deadline"))
    except (ConfigError, AttributeError):
        return "unreadable"


def build_parser() -> argparse.ArgumentParser:
    from perception.visualization import add_foxglove_argument

    parser = argparse.ArgumentParser(prog="perception", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    launch = commands.add_parser("launch", help="start and supervise the nodes of a launch file",
                                 description="Check every config of a launch file, start its nodes, supervise them (restarts, hangs, a status table) and, when a critical node fails for good, brake and stop (exit 1).")
    launch.add_argument("launch_file", type=Path, help="e.g. launch/vehicle.yaml")
    launch.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    launch.add_argument("--status-file", type=Path, default=None, help="keep a JSON status of all nodes here")
    launch.add_argument("--host", default=None, metavar="NAME",
                        help="start only the nodes of this host (a launch file with hosts needs it)")
    launch.add_argument("--keys", type=Path, default=None, metavar="DIR",
                        help="CURVE keys folder on this machine (default: the launch file's keys)")
    add_foxglove_argument(launch)
    launch.set_defaults(func=_launch)

    keys = commands.add_parser("keys", help="make CURVE key pairs for tcp endpoints, one per host (docs/ARCHITECTURE.md)",
                               description="Make CURVE key pairs, one per host, for a launch whose nodes talk over tcp.")
    keys.add_argument("keys_dir", type=Path, metavar="DIR", help="keys folder (public/ and secret/ inside, 0700)")
    keys.add_argument("--hosts", default=None, metavar="A,B",
                      help="host names (default: those of --launch, or 'local' for a launch without hosts)")
    keys.add_argument("--launch", type=Path, default=None, metavar="FILE", help="take the host names from this launch file")
    keys.set_defaults(func=_keys)

    handoff = commands.add_parser("bench-handoff", help="frame handoff latency: shared memory vs ZeroMQ copy",
                                  description="Frame handoff latency between two processes: the shared-memory ring against ZeroMQ copies.")
    handoff.add_argument("--frames", type=int, default=500, help="frames per case")
    handoff.add_argument("--json", type=Path, default=None, help="also write the results here")
    handoff.set_defaults(func=_bench_handoff)

    bench = commands.add_parser("bench-detector", help="AP and latency of every exit and depth policy, Pareto plot",
                                description="AP and latency of every exit and input budget of a model on single frames, with a Pareto plot.")
    bench.add_argument("--model", default="yolox_nano_exits.json", help="manifest (name in perception/weights or path)")
    bench.add_argument("--passes", type=int, default=3, help="timing passes over the 69 evaluation frames")
    bench.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads")
    bench.add_argument("--json", type=Path, default=None, help="also write the results here")
    bench.add_argument("--plot", type=Path, default=None, help="Pareto curve PNG")
    bench.set_defaults(func=_bench_detector)

    bench_wd = commands.add_parser("bench-watchdog", help="how late after the deadline the fail-safe BRAKE arrives",
                                   description="How late after a frame's deadline the watchdog's fail-safe BRAKE arrives, frame after frame.")
    bench_wd.add_argument("--frames", type=int, default=300, help="frames to hold to the deadline")
    bench_wd.add_argument("--rate", type=float, default=30.0, help="frames per second")
    bench_wd.add_argument("--load", type=int, default=0, help="extra busy-looping processes")
    bench_wd.add_argument("--realtime", type=int, default=None, metavar="PRIORITY",
                          help="run the watchdog at this SCHED_FIFO priority (needs root or CAP_SYS_NICE)")
    bench_wd.add_argument("--json", type=Path, default=None, help="also write the results here")
    bench_wd.set_defaults(func=_bench_watchdog)

    from perception.detection.policies import REGISTRY

    evaluate = commands.add_parser(
        "evaluate", help="AP and tracking metrics of the detector over an annotated clip, every frame in order",
        description="Run the detector as configured in configs/detector.yaml (its default policy unless --policy) "
                    "over every frame of an annotated clip, in order, and print one JSON line: AP50, AP50:95, "
                    "MOTA/IDF1 with MOT ground truth, the detector's time per frame, levels and input sizes.")
    evaluate.add_argument("--policy", default=None, choices=sorted(REGISTRY),
                          help=f"depth policy (default: {_configured_policy()}, configs/detector.yaml's)")
    evaluate.add_argument("--exit", type=int, default=None, help="fixed and interval policies: exit index (-1: deepest)")
    evaluate.add_argument("--pixels", type=int, default=None, help="input pixel budget per frame (default: the model's)")
    evaluate.add_argument("--interval", type=int, default=None, help="the network every N frames, flow in between")
    evaluate.add_argument("--threads", type=int, default=None,
                          help="ONNX Runtime threads (default: configs/detector.yaml's engine.threads)")
    evaluate.add_argument("--deadline-ms", type=positive_ms, default=None,
                          help="each frame due this long after it is handed over: the policy sizes and deepens "
                               "against the clock (default: no deadline)")
    evaluate.add_argument("--ceiling", type=exit_ceiling, default=None, metavar="EXIT",
                          help="the watchdog's depth ceiling on every frame, as a pipeline running late gets it "
                               "(default: none; the deadline and adaptive policies then size frames by live cost "
                               "estimates, so runs may differ)")
    evaluate.add_argument("--detector", metavar="KEY=VALUE", action="append", default=[],
                          help="override a key of configs/detector.yaml, e.g. risk.ego_path=false (repeatable)")
    evaluate.add_argument("--video", type=Path, default=None, help="default: PETS09-S2L1 frames 1-400 (recordings/)")
    evaluate.add_argument("--annotations", type=Path, default=None, help="COCO json with frame indices")
    evaluate.add_argument("--mot", type=Path, default=None, help="MOT csv ground truth for MOTA / IDF1")
    evaluate.add_argument("--json", type=Path, default=None, help="also write the result here")
    evaluate.set_defaults(func=_evaluate)

    for name, (_, _, help_text) in DELEGATED.items():
        commands.add_parser(name, help=help_text + " (--help for its options)", add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = bool(argv) and argv[0] in ("-v", "--verbose")
    rest = argv[1:] if verbose else argv
    if rest and rest[0] in DELEGATED:
        _configure_logging(verbose)
        return _one_line_errors(rest[0], lambda: _run_delegated(rest[0], rest[1:]))
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    return _one_line_errors(args.command, lambda: args.func(args))


def _one_line_errors(command: str, run) -> int:
    """Bad input (a config key, a recording, a model file, an engine this machine lacks) is one
    line naming the culprit and exit status 2, not a traceback."""
    from perception.config import ConfigError
    from perception.engines.base import EngineUnavailable
    from perception.recording import RecordingError
    from perception.report import CollectorError

    try:
        return run()
    except (ConfigError, RecordingError, EngineUnavailable, CollectorError) as exc:
        print(f"perception {command}: {exc}", file=sys.stderr)
        return 2


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s.%(msecs)03d %(name)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


if __name__ == "__main__":
    raise SystemExit(main())
