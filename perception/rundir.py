"""The run directory, in one place: where one launch keeps its sockets, stop orders, node name locks
and the configs it hands its nodes, made private to this user, owned by its launcher, and swept
(with the run's shared memory) once that launcher is gone."""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from pathlib import Path

from perception.shm_ring import run_ring_prefix, segments_with_prefix, unlink_segment

log = logging.getLogger("launch")

RUN_DIR_PREFIX = "perception-"
OWNER_FILE = "launcher.pid"  # "<pid> <process start time>" of the launcher that owns a run directory
STOP_ORDER_SUFFIX = ".stop"  # {run_dir}/{name}.stop: the launcher ordered this node to stop


class RunDirError(RuntimeError):
    """The run directory is not private to this user, or a node's name is already taken in it."""


def stop_order_path(run_dir: Path, name: str) -> Path:
    return Path(run_dir) / f"{name}{STOP_ORDER_SUFFIX}"


def private_run_dir(path: Path) -> Path:
    """Create `path` as a directory only this user can enter (0700), or check an existing one.

    Its ipc sockets are the pipeline's inputs: another local user who could reach them could publish
    forged frames or decisions. An existing directory owned by someone else is refused; one of ours
    that others may enter is tightened."""
    path = Path(path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_uid != os.geteuid():
        raise RunDirError(f"run directory {path} belongs to uid {info.st_uid}, not this user ({os.geteuid()})")
    if info.st_mode & 0o077:
        log.warning("run directory %s was open to others (mode %o); made private (0700)", path, info.st_mode & 0o777)
        path.chmod(0o700)
    return path


def claim_name(run_dir: Path, name: str) -> int:
    """Hold `{run_dir}/{name}.lock` for this process's lifetime (the kernel lets go when it dies, even
    by SIGKILL). A second node of the same name in the same run would otherwise silently take over
    the first one's ipc endpoint."""
    path = Path(run_dir) / f"{name}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 16, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise RunDirError(f"node name {name!r} is already running in {run_dir} (pid {holder})") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def create_run_dir(run_dir: Path) -> None:
    """Make a launch's run directory (private, 0700), owned by this process (OWNER_FILE), after
    sweeping what launchers that are gone left beside it."""
    remove_stale_run_dirs(run_dir.parent)
    run_dir.mkdir(mode=0o700)
    private_run_dir(run_dir)
    (run_dir / OWNER_FILE).write_text(f"{os.getpid()} {process_start_time(os.getpid())}")


def sweep_shared_memory(prefix: str) -> None:
    """Unlink the shared-memory segments named with `prefix` (a stopped or killed node's rings)."""
    for name in segments_with_prefix(prefix):
        if unlink_segment(name):
            log.info("removed shared memory %s left by a stopped node", name)


def remove_run_dir(run_dir: Path, run_id: str) -> None:
    """The end of a launch: its shared memory and its run directory."""
    sweep_shared_memory(run_ring_prefix(run_id))
    shutil.rmtree(run_dir, ignore_errors=True)


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (field 22 of /proc/PID/stat), which tells a live owner from
    an unrelated process that got its pid later; None when no such process exists."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def remove_stale_run_dirs(parent: Path) -> list[Path]:
    """Remove this user's run directories whose launcher is gone, and the shared memory of their
    run; returns what was removed. A directory without an owner file is left alone: it is not
    known to be ours."""
    removed = []
    for run_dir in sorted(Path(parent).glob(f"{RUN_DIR_PREFIX}*")):
        try:
            if run_dir.stat().st_uid != os.geteuid():
                continue
            pid, started = (run_dir / OWNER_FILE).read_text().split()
        except (OSError, ValueError):
            continue
        if process_start_time(int(pid)) == started:
            continue  # its launcher still runs
        run_id = run_dir.name[len(RUN_DIR_PREFIX):]
        for name in segments_with_prefix(run_ring_prefix(run_id)):
            unlink_segment(name)
        shutil.rmtree(run_dir, ignore_errors=True)
        log.info("removed %s, left by launcher %s which is gone", run_dir, pid)
        removed.append(run_dir)
    return removed
