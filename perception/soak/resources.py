"""What a soak watches for leaks: the nodes' resident memory, open file descriptors of the launcher
and the nodes, and the run's shared-memory segments, read from /proc and /dev/shm.

Growth is judged between a sample of the warm pipeline before the first fault and one after the
faults have stopped and every node is back (perception.soak.command takes both when every node
heartbeats); the samples between give the peak.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from perception.shm_ring import SHM_DIR, run_ring_prefix, segments_with_prefix

PAGE = os.sysconf("SC_PAGE_SIZE")
MB = 1 << 20


@dataclass(frozen=True)
class Sample:
    t_ns: int
    rss_bytes: int  # resident memory of the node processes, summed
    fds: int  # open file descriptors of the launcher and the node processes
    shm_segments: int  # /dev/shm entries of the run
    shm_bytes: int
    complete: bool  # every node was running and heartbeating


@dataclass(frozen=True)
class Limits:
    rss_mb: float  # growth allowed between the first and the last sample
    fds: int
    shm_segments: int


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (0 if it is gone)."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def sample(t_ns: int, node_pids: list[int], launcher_pid: int, run_id: str, complete: bool) -> Sample:
    segments = segments_with_prefix(run_ring_prefix(run_id))
    sizes = 0
    for name in segments:
        try:
            sizes += (SHM_DIR / name).stat().st_size
        except OSError:
            pass
    return Sample(t_ns, sum(rss_bytes(p) for p in node_pids), open_fds(launcher_pid) + sum(open_fds(p) for p in node_pids),
                  len(segments), sizes, complete)


def judge_growth(first: Sample, last: Sample, limits: Limits) -> list[str]:
    """One line per resource that grew beyond its limit between `first` and `last`."""
    problems = []
    grown_mb = (last.rss_bytes - first.rss_bytes) / MB
    if grown_mb > limits.rss_mb:
        problems.append(f"node memory grew {grown_mb:+.0f} MB ({first.rss_bytes / MB:.0f} -> {last.rss_bytes / MB:.0f} MB), "
                        f"limit {limits.rss_mb:g} MB")
    if last.fds - first.fds > limits.fds:
        problems.append(f"open file descriptors grew {last.fds - first.fds:+d} ({first.fds} -> {last.fds}), limit {limits.fds}")
    if last.shm_segments - first.shm_segments > limits.shm_segments:
        problems.append(f"shared-memory segments grew {last.shm_segments - first.shm_segments:+d} "
                        f"({first.shm_segments} -> {last.shm_segments}), limit {limits.shm_segments}")
    return problems


def summarize(samples: list[Sample], first: Sample | None, last: Sample | None) -> dict:
    """first / last / max and growth of each resource, for the report."""
    def row(key: str, scale: float = 1.0) -> dict:
        values = [getattr(s, key) / scale for s in samples if s.complete] or [0]
        start = getattr(first, key) / scale if first else None
        end = getattr(last, key) / scale if last else None
        return {"first": _round(start), "last": _round(end), "max": _round(max(values)),
                "growth": _round(end - start) if start is not None and end is not None else None}

    return {"rss_mb": row("rss_bytes", MB), "fds": row("fds"), "shm_segments": row("shm_segments"),
            "shm_mb": row("shm_bytes", MB), "samples": len(samples),
            "timeline": [asdict(s) for s in samples]}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
