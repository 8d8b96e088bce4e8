"""One node process under the launcher, as openpilot's ManagerProcess: start it (scheduling set before
it runs, dying with the launcher), notice that it is hung, and decide what its exit means under its
restart policy (restart after a delay that doubles in a row, or give up)."""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from perception.latency import now_ns
from perception.launch.spec import MAX_RESTART_DELAY_S, LaunchNode
from perception.messages import HOST_ENV, Heartbeat
from perception.messages import NodeState
from perception.node import EXIT_CONFIG, EXIT_OUTPUT, EXIT_UNAVAILABLE, NETWORK_ENV, RUN_DIR_ENV, RUN_ID_ENV
from perception.rundir import stop_order_path

log = logging.getLogger("launch")

# A node that heartbeated and ran this long since its start had recovered: its next failure starts a
# new series (the first restart delay again, max_restarts counted afresh), as systemd's start-limit
# interval and Kubernetes' back-off reset do.
STABLE_AFTER_S = 10.0


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: if the launcher dies (even SIGKILL), the node gets SIGTERM.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def apply_scheduling(nice: int = 0, realtime_priority: int | None = None) -> None:
    """Lower this process's priority by `nice` and/or put it in SCHED_FIFO; OSError when refused."""
    if nice:
        os.nice(nice)
    if realtime_priority is not None:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(realtime_priority))


def _child_setup(spec: LaunchNode):
    """What runs in the child between fork and exec. Scheduling is set here, before the node starts
    any thread (ZeroMQ's I/O thread, ONNX Runtime's pool), so every thread inherits it."""

    def setup() -> None:
        _die_with_parent()
        try:
            apply_scheduling(spec.nice, spec.realtime_priority)
        except OSError as exc:
            # No logging between fork and exec; one line straight to the launcher's stderr.
            os.write(2, f"launch: {spec.name}: scheduling (nice {spec.nice}, realtime priority "
                        f"{spec.realtime_priority}) refused ({exc.strerror}): running at normal priority\n".encode())

    return setup


@dataclass
class ManagedNode:
    spec: LaunchNode
    config_path: Path  # the validated, resolved config written into the run directory
    endpoint: str  # where its readers connect
    bind: str  # where it publishes (the launcher publishes a dead watchdog's brakes there)
    process: subprocess.Popen | None = None
    state: str = "pending"  # pending, running, restarting, exited, failed
    restarts: int = 0  # in all
    in_a_row: int = 0  # restarts since it last ran stably (STABLE_AFTER_S): the delay doubles with them
    restart_at_ns: int = 0
    exit_code: int | None = None
    heartbeat: Heartbeat | None = None
    heartbeat_ns: int = 0
    started_ns: int = 0
    first_started_ns: int = 0  # its first start in this launch
    has_worked: bool = False  # it has handled input (a heartbeat OK or DEGRADED) in any of its lives
    hangs: int = 0  # times it was killed for a stale heartbeat
    killed_hung: bool = False
    network: dict = field(default_factory=dict)  # PERCEPTION_NETWORK for it (placement.network_settings)
    key: str | None = None  # its publisher's CURVE key name, for the launcher's own subscriptions

    def start(self, run_dir: Path, run_id: str) -> None:
        """Start (or restart) the node's process, its config and run directory handed over by the environment."""
        env = dict(os.environ, **{RUN_DIR_ENV: str(run_dir), RUN_ID_ENV: run_id, "PYTHONUNBUFFERED": "1",
                                  NETWORK_ENV: json.dumps(self.network)})
        if self.spec.host is not None:  # the host whose clock its stamps are in (perception.messages.THIS_HOST)
            env[HOST_ENV] = self.spec.host
        command = [sys.executable, "-m", f"nodes.{self.spec.node}", "--name", self.spec.name,
                   "--config", str(self.config_path)]
        stop_order_path(run_dir, self.spec.name).unlink(missing_ok=True)
        self.process = subprocess.Popen(command, env=env, preexec_fn=_child_setup(self.spec), stdin=subprocess.DEVNULL)
        self.state = "running"
        self.started_ns = now_ns()
        self.first_started_ns = self.first_started_ns or self.started_ns
        self.killed_hung = False
        self.heartbeat = None
        log.info("started %s (pid %d)%s", self.spec.name, self.process.pid,
                 f", restart {self.restarts}" if self.restarts else "")

    def heard(self, beat: Heartbeat) -> None:
        self.heartbeat, self.heartbeat_ns = beat, now_ns()
        self.has_worked = self.has_worked or beat.state in (NodeState.OK, NodeState.DEGRADED)

    def never_opened(self, code: int) -> bool:
        """Its input did not open, never has in this launch, and its start-up time since the first
        start is spent: a wrong device or URL, which restarts (100 on a vehicle, up to 5 s apart)
        would only hide for minutes. A camera still coming up at boot gets that start-up time."""
        waited_s = (now_ns() - self.first_started_ns) / 1e9
        return code == EXIT_UNAVAILABLE and not self.has_worked and waited_s >= self.spec.startup_timeout_s

    def exited(self, code: int) -> str:
        """Its process ended with `code`: restart it after its delay (state "restarting") or give up
        ("exited" after a clean end it is not to be restarted from, "failed" otherwise). Returns how
        it ended, in words."""
        spec = self.spec
        self.exit_code = code
        how = f"signal {-code}" if code < 0 else f"code {code}"
        if self.killed_hung:
            how = "a kill for a stale heartbeat"
            code = code or 1  # a hang is a failure whatever the exit code says
        if self.heartbeat is not None and now_ns() - self.started_ns >= STABLE_AFTER_S * 1e9:
            self.in_a_row = 0
        wants_restart = spec.restart == "always" or (spec.restart == "on-failure" and code != 0)
        if code in (EXIT_CONFIG, EXIT_OUTPUT):
            log.error("%s exited with %s: %s, not restarting", spec.name, how,
                      "bad config or input" if code == EXIT_CONFIG else "cannot write its output")
            self.state = "failed"
        elif self.never_opened(code):
            how = f"its input never opened, {how}"
            log.error("%s: its input has not opened in the %.0f s since it first started (startup_timeout_s): "
                      "not restarting", spec.name, (now_ns() - self.first_started_ns) / 1e9)
            self.state = "failed"
        elif not wants_restart:
            self.state = "exited" if code == 0 else "failed"
            log.log(logging.INFO if code == 0 else logging.ERROR, "%s exited with %s", spec.name, how)
        elif self.in_a_row >= spec.max_restarts:
            self.state = "failed"
            log.error("%s exited with %s and has used its %d restarts in a row", spec.name, how, spec.max_restarts)
        else:
            delay = min(spec.restart_delay_s * (2 ** self.in_a_row), MAX_RESTART_DELAY_S)
            self.restarts += 1
            self.in_a_row += 1
            self.state = "restarting"
            self.restart_at_ns = now_ns() + int(delay * 1e9)
            log.warning("%s exited with %s; restarting in %.1f s (%d/%d in a row)", spec.name, how, delay,
                        self.in_a_row, spec.max_restarts)
        return how

    def kill_if_hung(self) -> None:
        """SIGKILL a node whose heartbeat is stale (SIGKILL: a stopped or stuck process cannot run a
        SIGTERM handler); its exit then takes the usual restart path."""
        spec, now = self.spec, now_ns()
        if self.heartbeat is None:
            silent_s, limit_s, what = (now - self.started_ns) / 1e9, spec.startup_timeout_s, "no first heartbeat"
        elif spec.hang_timeout_s is not None:
            silent_s, limit_s, what = (now - self.heartbeat_ns) / 1e9, spec.hang_timeout_s, "heartbeat stale"
        else:
            return
        if silent_s > limit_s:
            log.error("%s is hung (%s for %.1f s, limit %.1f s): killing it", spec.name, what, silent_s, limit_s)
            self.killed_hung = True
            self.hangs += 1
            self.process.kill()
