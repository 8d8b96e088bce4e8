"""The `perception` command."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence


def _launch(args: argparse.Namespace) -> int:
    from perception.launch import launch_main

    return launch_main(args.launch_file, args.duration, args.status_file)


def _bench_handoff(args: argparse.Namespace) -> int:
    from perception.benchmarks.frame_handoff import main as handoff_main

    return handoff_main(args.frames, args.json)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="perception", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    launch = commands.add_parser("launch", help="start and supervise the nodes of a launch file")
    launch.add_argument("launch_file", type=Path)
    launch.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    launch.add_argument("--status-file", type=Path, default=None, help="keep a JSON status of all nodes here")
    launch.set_defaults(func=_launch)

    handoff = commands.add_parser("bench-handoff", help="frame handoff latency: shared memory vs ZeroMQ copy")
    handoff.add_argument("--frames", type=int, default=500, help="frames per case")
    handoff.add_argument("--json", type=Path, default=None, help="also write the results here")
    handoff.set_defaults(func=_bench_handoff)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s.%(msecs)03d %(name)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
