"""How late after a frame's deadline does the watchdog's fail-safe BRAKE arrive?

    perception bench-watchdog [--frames 300] [--rate 30] [--load 0] [--realtime PRIORITY] [--json F]

Runs the real watchdog node as a process. This script plays the capture node (frame headers
only, at `rate` Hz) and never answers a frame, so every frame must be answered by a fail-safe at
its deadline (capture + budget). Reported per fail-safe: the delay from deadline to receipt by
this process (one more ipc hop than a vehicle interface would have), and the watchdog's own
measure (deadline to publish) from its status. `--load N` adds N busy-looping processes;
`--realtime P` runs the watchdog (and this process, its consumer) at SCHED_FIFO priority P, as a
launch file's `realtime_priority` would.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

from perception.latency import now_ns, percentiles_ms
from perception.launch import apply_scheduling
from perception.messages import FrameHeader, FrameTransport, Reason, WatchdogStatus
from perception.topics import DECISIONS, FRAMES, WATCHDOG_STATUS
from perception.transport import Publisher, Subscriber, resolve_endpoint

BUDGET_MS = 100.0


def burn_cpu(stop: mp.synchronize.Event) -> None:
    """Busy-loop until `stop` is set: one process of competing load for --load (bench, bench-watchdog)."""
    while not stop.is_set():
        sum(range(10_000))


def main(frames: int = 300, rate: float = 30.0, load: int = 0, json_path: Path | None = None,
         realtime_priority: int | None = None) -> int:
    with tempfile.TemporaryDirectory(prefix="wd-", dir="/tmp") as tmp:
        run_dir = Path(tmp)
        config = run_dir / "watchdog.yaml"
        # Frames only, no detector and no decisions: every frame misses its deadline. No topic rates
        # to watch, and the one node watched gets a grace longer than the run, or the silent topics
        # and node would add their own fail-safes to the deadline ones measured here.
        config.write_text(
            f"node: {{budget_ms: {BUDGET_MS}, inputs: {{frames: [capture/frames], decisions: [decision/decisions], "
            "heartbeats: [decision/heartbeat]}}\nrules: {monitored_topics: [], startup_grace_ms: 600000}\nstatus_period_ms: 100\n")
        stop = mp.Event()
        burners = [mp.Process(target=burn_cpu, args=(stop,), daemon=True) for _ in range(load)]
        for burner in burners:
            burner.start()
        if realtime_priority:
            # This process plays the consumer of fail-safes (the vehicle interface), which must run
            # at the watchdog's priority too or the BRAKE waits in its socket. Set before the
            # ZeroMQ context exists so its I/O thread inherits the priority; after the burners fork.
            apply_scheduling(realtime_priority=realtime_priority)  # refused: PermissionError, the run stops
        context = zmq.Context()
        capture = Publisher(context, resolve_endpoint("capture", run_dir))
        failsafes = Subscriber(context, resolve_endpoint("watchdog", run_dir), DECISIONS, latest=False)
        status = Subscriber(context, resolve_endpoint("watchdog", run_dir), WATCHDOG_STATUS, latest=False)
        watchdog = subprocess.Popen([sys.executable, "-m", "nodes.watchdog", "--name", "watchdog", "--config", str(config),
                                     "--run-dir", str(run_dir)], stderr=subprocess.DEVNULL)  # inherits the priority
        delays: list[int] = []
        last_status: WatchdogStatus | None = None
        try:
            while capture.subscriber_count(FRAMES) < 1:
                time.sleep(0.01)
            time.sleep(0.2)
            period_ns = int(1e9 / rate)
            next_ns = now_ns()
            sent = 0
            end_ns = None
            while end_ns is None or now_ns() < end_ns:
                if sent < frames and now_ns() >= next_ns:
                    sent += 1
                    capture.publish(FRAMES, FrameHeader(frame_id=sent, capture_ns=now_ns(), media_ns=0, width=1, height=1,
                                                          channels=3, transport=FrameTransport.INLINE))
                    next_ns += period_ns
                    if sent == frames:
                        end_ns = now_ns() + int(BUDGET_MS * 1e6) + 300_000_000
                if failsafes.socket.poll(1):
                    for received in failsafes.receive():
                        decision = received.message
                        if decision.reason == Reason.DEADLINE_MISS:
                            delays.append(now_ns() - decision.capture_ns - int(BUDGET_MS * 1e6))
                for received in status.receive():
                    last_status = received.message
        finally:
            watchdog.terminate()
            watchdog.wait(5)
            stop.set()
            for burner in burners:
                burner.join(2)
            failsafes.close()
            status.close()
            capture.close()
            context.term()
    received_stats = percentiles_ms(delays, (50, 99, 99.9))
    own_p99_us = (last_status.counters.get("failsafe_delay_p99_us") if last_status else None)
    result = {"benchmark": "watchdog_failsafe", "frames": frames, "rate_hz": rate, "cpu_load_processes": load,
              "realtime_priority": realtime_priority,
              "failsafes_received": len(delays),
              "deadline_to_receipt_ms": {k: round(v, 3) for k, v in received_stats.items()},
              "deadline_to_publish_p99_ms": None if own_p99_us is None else own_p99_us / 1000}
    print(f"fail-safes {len(delays)}/{frames} | deadline->receipt ms p50 {received_stats.get('p50', float('nan')):.3f} "
          f"p99 {received_stats.get('p99', float('nan')):.3f} max {received_stats.get('max', float('nan')):.3f} | "
          f"watchdog's own deadline->publish p99 {result['deadline_to_publish_p99_ms']} ms | load {load}"
          + (f" | SCHED_FIFO {realtime_priority}" if realtime_priority else ""))
    if json_path:
        json_path.write_text(json.dumps(result, indent=2))
    return 0 if len(delays) == frames else 1


if __name__ == "__main__":
    raise SystemExit(main())
