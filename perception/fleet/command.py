"""`perception fleet-replay`: every drive's deterministic replay as a Ray task, one report.

    perception fleet-replay RECORDINGS_OR_FOLDERS... [--address ray://HOST:10001] [--references DIR]
                            [--evaluate ANNOTATIONS] [--json F] [--plots DIR] [--timeout-s S] [--cpus-per-drive N]

Locally (the default) Ray is started for this command with this machine's cores and stopped at
the end; `--address` sends the drives to a running cluster instead. Each task asks Ray for
`--cpus-per-drive` CPUs and runs the detector on as many ONNX Runtime threads. At most as many
drives are in flight as the cluster can run at once, so a drive's `--timeout-s` counts its own run
(plus starting a worker), not its wait in a queue; a drive past it is cancelled (the worker is
killed, its nodes die with it) and reported, and the others go on. Exit status: 0 every drive ran
and matches its reference where it has one (and copies of a drive agree), 1 otherwise, 2 bad input.
docs/FLEET.md has the JSON schema and how to run it on a cluster.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

from perception.config import ConfigError
from perception.fleet.report import (EXIT_BAD_INPUT, Drive, build_fleet_report, drive_entry, format_table, plot_fleet,
                                     write_json)
from perception.fleet.task import LOG_TAIL_LINES, replay_drive, tail_lines
from perception.replay import load_rows

REFERENCE_SUFFIX = ".reference.jsonl"  # as recordings/udacity_dashcam.reference.jsonl beside its drive
ANNOTATIONS_SUFFIX = ".coco.json"
DEFAULT_TIMEOUT_S = 600.0
RAY_MISSING = "fleet-replay: Ray is not installed: pip install 'perception[fleet]'"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cpus_per_drive < 1:
        raise ConfigError(f"--cpus-per-drive must be at least 1, got {args.cpus_per_drive}")
    if args.timeout_s <= 0:
        raise ConfigError(f"--timeout-s must be positive, got {args.timeout_s:g}")
    # All input is read before Ray starts: a bad path is one line now, not after an hour of replays.
    drives = resolve_drives(args.inputs, args.references, args.evaluate)
    references = {d.label: load_rows(d.reference) for d in drives if d.reference}
    annotations = _load_annotations({d.annotations for d in drives if d.annotations})
    try:
        import ray
    except ImportError:
        print(RAY_MISSING, file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        capacity = start_ray(ray, args.address)
    except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, ValueError (ray:// without ray[client]), ...
        ray.shutdown()
        print(f"fleet-replay: cannot start or reach Ray{f' at {args.address}' if args.address else ''}: "
              f"{_first_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        slots = int(capacity // args.cpus_per_drive)
        if slots < 1:
            raise ConfigError(f"--cpus-per-drive {args.cpus_per_drive}: the Ray cluster has only {capacity:g} CPUs")
        started = time.monotonic()
        results = run_drives(ray, drives, args.cpus_per_drive, args.timeout_s, slots)
        wall_s = time.monotonic() - started
    finally:
        ray.shutdown()
    if args.address is None:
        _remove_left_runs()
    settings = {"address": args.address, "cluster_cpus": capacity, "cpus_per_drive": args.cpus_per_drive,
                "timeout_s": args.timeout_s}
    entries = [drive_entry(d, results[d.label], references.get(d.label), annotations.get(d.annotations))
               for d in drives]
    rows = {d.label: results[d.label].get("rows") or [] for d in drives}
    timelines = {d.label: [t["end_to_end_ns"] for t in (results[d.label].get("report") or {}).get("timeline", [])]
                 for d in drives}
    report = build_fleet_report(entries, rows, timelines, settings, wall_s)
    print(format_table(report))
    _print_failures(report)
    if args.json:
        print(f"wrote {write_json(report, args.json)}")
    for path in plot_fleet(report, timelines, args.plots) if args.plots else []:
        print(f"wrote {path}")
    return report["exit_code"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="perception fleet-replay",
                                     description="replay many drives deterministically in parallel as Ray tasks")
    parser.add_argument("inputs", nargs="+", type=Path, metavar="RECORDING_OR_FOLDER",
                        help="MCAP drives; a folder means every .mcap in it")
    parser.add_argument("--address", default=None,
                        help="a running Ray cluster (ray://HEAD:10001); default: Ray on this machine, for this command")
    parser.add_argument("--references", type=Path, default=None,
                        help=f"folder of DRIVE_STEM{REFERENCE_SUFFIX}; default: that file beside each drive, if any")
    parser.add_argument("--evaluate", type=Path, default=None, metavar="ANNOTATIONS",
                        help=f"COCO json (images with frame_index) scoring every drive, or a folder of "
                             f"DRIVE_STEM{ANNOTATIONS_SUFFIX}; default: that file beside each drive, if any")
    parser.add_argument("--json", type=Path, default=None, help="write the fleet report (docs/FLEET.md) here")
    parser.add_argument("--plots", type=Path, default=None, help="write fleet_latency.png into this folder")
    parser.add_argument("--timeout-s", type=float, default=DEFAULT_TIMEOUT_S, help="per drive; past it, cancelled")
    parser.add_argument("--cpus-per-drive", type=int, default=1,
                        help="Ray CPUs per task, and the detector's ONNX Runtime threads")
    return parser


# -- input --------------------------------------------------------------------------------


def resolve_drives(inputs: list[Path], references: Path | None, evaluate: Path | None) -> list[Drive]:
    """Each drive with its reference and annotations; ConfigError (one line) for input that cannot be."""
    if references is not None and not references.is_dir():
        raise ConfigError(f"--references {references}: not a folder")
    if evaluate is not None and not evaluate.exists():
        raise ConfigError(f"--evaluate {evaluate}: no such file or folder")
    paths: list[Path] = []
    for item in inputs:
        if item.is_dir():
            found = sorted(item.glob("*.mcap"))
            if not found:
                raise ConfigError(f"{item}: no .mcap drives in this folder")
            paths += found
        elif item.exists():
            paths.append(item)
        else:
            raise ConfigError(f"{item}: no such file or folder")
    labels: dict[str, int] = {}
    drives = []
    for path in paths:
        label = str(path)
        labels[label] = labels.get(label, 0) + 1
        drives.append(Drive(path=path.resolve(), label=label if labels[label] == 1 else f"{label}#{labels[label]}",
                            sha256=_sha256(path), reference=_beside_or_in(path, references, REFERENCE_SUFFIX),
                            annotations=evaluate if evaluate is not None and evaluate.is_file()
                            else _beside_or_in(path, evaluate, ANNOTATIONS_SUFFIX)))
    return drives


def _beside_or_in(drive: Path, folder: Path | None, suffix: str) -> Path | None:
    candidate = (folder if folder is not None else drive.parent) / f"{drive.stem}{suffix}"
    return candidate if candidate.is_file() else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    return digest.hexdigest()


def _load_annotations(paths: set[Path]) -> dict:
    if not paths:
        return {}
    from perception.detection.manifest import load_manifest
    from perception.evaluation.detector_eval import load_annotations
    from perception.launch import load_launch_file, resolve_node_config
    from perception.pipeline import PIPELINE_LAUNCH

    # Categories are matched by name to the classes of the model the replays run.
    detector = next(n for n in load_launch_file(PIPELINE_LAUNCH).nodes if n.name == "detector")
    classes = load_manifest(resolve_node_config(detector, str(PIPELINE_LAUNCH))[1].model).class_names()
    return {path: load_annotations(path, classes) for path in paths}


# -- Ray ----------------------------------------------------------------------------------


def start_ray(ray, address: str | None) -> float:  # noqa: ANN001 - the ray module, imported by the caller
    """Start Ray on this machine (always a new instance, never one someone else started), or
    connect to `address`; returns the cluster's CPUs. Ray's own logging stays at errors, and the
    workers' output stays in their logs: the table is this command's output."""
    quiet = {"logging_level": logging.ERROR, "log_to_driver": False}
    if address is None:
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, **quiet)
    else:
        ray.init(address=address, **quiet)
    return float(ray.cluster_resources().get("CPU", 0))


def run_drives(ray, drives: list[Drive], cpus_per_drive: int, timeout_s: float,  # noqa: ANN001
               slots: int) -> dict[str, dict]:
    """Every drive's task result by label, with a progress bar; a task that raised, whose worker
    died or that ran past `timeout_s` becomes a failed result with its reason."""
    from perception.progress import progress_bar

    remote = ray.remote(replay_drive).options(num_cpus=cpus_per_drive, max_retries=0)
    logs = Path(tempfile.mkdtemp(prefix="fleet-replay-"))
    queue = deque(enumerate(drives, 1))
    running: dict = {}  # ObjectRef -> (drive, deadline)
    results: dict[str, dict] = {}
    with progress_bar(len(drives), "drives", "drive", terminal_interval_s=0.5) as bar:
        while queue or running:
            while queue and len(running) < slots:
                index, drive = queue.popleft()
                log_path = logs / f"{index:03d}-{drive.path.stem}.log"
                ref = remote.remote(str(drive.path), cpus_per_drive, str(log_path))
                running[ref] = (drive, time.monotonic() + timeout_s, str(log_path))
            wait_s = max(0.0, min(deadline for _, deadline, _ in running.values()) - time.monotonic())
            ready, _ = ray.wait(list(running), num_returns=1, timeout=wait_s)
            for ref in ready:
                drive, _, log_path = running.pop(ref)
                results[drive.label] = _outcome(ray, ref, drive, log_path)
            for ref, (drive, deadline, log_path) in list(running.items()):
                if time.monotonic() >= deadline:
                    ray.cancel(ref, force=True)  # kills the worker; PR_SET_PDEATHSIG takes its nodes down
                    del running[ref]
                    results[drive.label] = _failure(drive, f"timed out after {timeout_s:g} s: cancelled", log_path,
                                                     timeout_s)
            bar.update(len(results) - bar.n)
            bar.set_postfix(failed=sum(1 for r in results.values() if r["status"] == "failed"), refresh=False)
    if not any(logs.iterdir()):
        logs.rmdir()
    return results


def _outcome(ray, ref, drive: Drive, log_path: str) -> dict:  # noqa: ANN001
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:  # the task raised: its own error, not Ray's wrapping
        cause = exc.cause if exc.cause is not None else exc
        return _failure(drive, f"crashed: {type(cause).__name__}: {_first_line(cause)}", log_path)
    except ray.exceptions.RayError as exc:  # the worker died (killed, out of memory), the node was lost
        return _failure(drive, f"worker lost: {type(exc).__name__}: {_first_line(exc)}", log_path)


def _failure(drive: Drive, reason: str, log_path: str, seconds: float | None = None) -> dict:
    # The log is on this machine only when Ray runs here; on a cluster it is on the worker's host.
    return {"drive": str(drive.path), "status": "failed", "reason": reason, "seconds": seconds, "log": log_path,
            "log_tail": tail_lines(Path(log_path), LOG_TAIL_LINES)}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "(no message)"


def _remove_left_runs() -> None:
    """A cancelled drive's launcher was killed before it could remove its run directory and shared
    memory; any launch removes such leftovers of dead launchers, so do it now rather than at the next."""
    from perception.rundir import remove_stale_run_dirs

    remove_stale_run_dirs(Path(tempfile.gettempdir()))


def _print_failures(report: dict) -> None:
    for entry in report["drives"]:
        if entry["status"] == "failed":
            where = f"; log: {entry['log']}" + (f" on {entry['host']}" if entry.get("host") else "") if entry["log"] else ""
            print(f"FAILED {entry['drive']}: {entry['reason']}{where}")
        elif entry["status"] == "different":
            print(f"DIFFERENT {entry['drive']}: {entry['differences']} difference(s) from {entry['reference']}, first:")
            for line in entry["difference_lines"][:5]:
                print(f"  {line}")


if __name__ == "__main__":
    raise SystemExit(main())
