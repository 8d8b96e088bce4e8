"""Squatted ports: a program that holds a node's or a clock's tcp port before its rightful owner
(a plain socket answering with something that is not ZeroMQ) must not cut the connections to that
port for good. Once it leaves and the owner is up, frames and clock sync come back by themselves."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import zmq

from helpers import REPO, free_port, stop_process, wait_for, write_two_hosts
from perception.clock import ClockConfig, ClockServer, ClockSync
from perception.messages import Heartbeat, NodeState
from perception.security import CurveClient, CurveServer, create_keys, load_identity
from perception.topics import HEARTBEAT
from perception.transport import Publisher, Subscriber

BANNER = b"SSH-2.0-OpenSSH_9.6\r\n"  # what a squatting program might say: not a ZeroMQ greeting


class Squatter:
    """A plain TCP socket listening on `port` that accepts every connection and answers with a
    banner, until `leave()` closes it and every connection it accepted."""

    def __init__(self, port: int) -> None:
        self._listener = socket.create_server(("127.0.0.1", port))
        self._listener.settimeout(0.05)
        self._connections: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def accepted(self) -> int:
        return len(self._connections)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except socket.timeout:
                continue
            self._connections.append(connection)
            try:
                connection.sendall(BANNER)
            except OSError:
                pass

    def leave(self) -> float:
        """Close everything; returns the time.monotonic() at which the port was free."""
        self._stop.set()
        self._thread.join()
        for connection in self._connections:
            connection.close()
        self._listener.close()
        return time.monotonic()


def heartbeat(seq: int) -> Heartbeat:
    return Heartbeat(frame_id=0, capture_ns=0, node="capture", pid=1, seq=seq, sent_ns=time.monotonic_ns(),
                     state=NodeState.OK, counters={})


def test_a_subscriber_gets_messages_once_a_squatter_that_spoke_no_zeromq_has_left(tmp_path):
    """libzmq drops a connection whose peer breaks the protocol and never tries it again; the
    subscriber connects again, so the real publisher is heard within a second of binding."""
    create_keys(tmp_path / "keys", ["camera", "compute"])
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    squatter = Squatter(int(endpoint.rsplit(":", 1)[1]))
    context = zmq.Context()
    server = CurveServer(context, load_identity(tmp_path / "keys", "camera"))
    client = CurveClient(load_identity(tmp_path / "keys", "compute"),
                         {endpoint: load_identity(tmp_path / "keys", "camera").public_key})
    subscriber = Subscriber(context, endpoint, HEARTBEAT, latest=False, curve=client)
    publisher = None
    try:
        assert wait_for(lambda: squatter.accepted, 10), "the subscriber never reached the squatter"
        time.sleep(0.5)  # the banner has been read: libzmq has given up on the endpoint
        left = squatter.leave()
        publisher = Publisher(context, endpoint, curve=server)
        seq = 0
        while not subscriber.received and time.monotonic() < left + 20:
            seq += 1
            publisher.publish(HEARTBEAT, heartbeat(seq))
            if subscriber.socket.poll(50):
                subscriber.receive()
            subscriber.reconnect_dropped()
        recovered_s = time.monotonic() - left
    finally:
        subscriber.close()
        if publisher is not None:
            publisher.close()
        server.stop()
        context.term()
    assert subscriber.received, "nothing arrived after the squatter left"
    assert recovered_s < 5, recovered_s
    print(f"\nsubscriber: first message {recovered_s:.2f} s after the squatter left")


def test_clock_sync_comes_back_once_a_squatter_on_the_clock_port_has_left(tmp_path):
    create_keys(tmp_path / "keys", ["camera", "compute"])
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    squatter = Squatter(int(endpoint.rsplit(":", 1)[1]))
    context = zmq.Context()
    camera = load_identity(tmp_path / "keys", "camera")
    server_curve = CurveServer(context, camera)
    client = CurveClient(load_identity(tmp_path / "keys", "compute"), {endpoint: camera.public_key})
    clocks = ClockSync(context, {"camera": endpoint}, ClockConfig(period_s=0.1), curve=client)
    server = None
    try:
        assert wait_for(lambda: squatter.accepted, 10), "the clock client never reached the squatter"
        time.sleep(0.5)
        left = squatter.leave()
        server = ClockServer(context, endpoint, server_curve)
        synced = wait_for(lambda: clocks.estimate("camera"), 20, interval_s=0.01)
        recovered_s = time.monotonic() - left
    finally:
        clocks.close()
        if server is not None:
            server.close()
        server_curve.stop()
        context.term()
    assert synced is not None, "no estimate of the camera's clock after the squatter left"
    assert recovered_s < 5, recovered_s
    print(f"\nclock: synced {recovered_s:.2f} s after the squatter left")


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def row(path: Path, name: str) -> dict:
    status = read_json(path) or {"nodes": []}
    return next((r for r in status["nodes"] if r["name"] == name), {})


def test_a_split_launch_whose_capture_and_clock_ports_were_squatted_recovers_by_itself(tmp_path):
    """The issue's case: a squatter holds capture's port and the camera host's clock port while
    both hosts start. The compute host's nodes reach the squatter, capture cannot bind (it exits
    with one line and is restarted), the camera launcher cannot serve its clock yet. Once the
    squatter leaves, capture binds, the compute host's subscribers and clock clients connect
    again, and frames reach the detector, converted into its clock, within seconds."""
    ports, clock_ports = [free_port() for _ in range(4)], (free_port(), free_port())
    launch = write_two_hosts(tmp_path, ports, clock_ports=clock_ports, rate=10)
    create_keys(tmp_path / "keys", ["camera", "compute"])
    squatters = [Squatter(ports[0]), Squatter(clock_ports[0])]  # capture's port, the camera host's clock
    status = {host: tmp_path / f"{host}.json" for host in ("compute", "camera")}
    logs = {host: (tmp_path / f"{host}.log").open("w") for host in status}
    launchers = {host: subprocess.Popen([sys.executable, "-m", "perception.cli", "launch", str(launch), "--host", host,
                                         "--status-file", str(path)], cwd=REPO, stderr=logs[host])
                 for host, path in status.items()}

    def ended() -> bool:
        return any(p.poll() is not None for p in launchers.values())

    try:
        # Every compute node runs its loop (it has subscribed to capture and asks the camera's clock),
        # and capture has failed to bind at least once; a moment more for the squatters' banners.
        squatted = wait_for(lambda: ended() or (
            all(row(status["compute"], n).get("heartbeat_age_ms") is not None for n in ("detector", "decision", "watchdog"))
            and row(status["camera"], "capture").get("restarts", 0) >= 1), 90)
        assert squatted and not ended(), "the compute nodes did not start, or capture did not fail to bind"
        time.sleep(1.0)
        assert squatters[0].accepted >= 4 and squatters[1].accepted >= 3  # detector, watchdog x2, the camera launcher
        left = max(s.leave() for s in squatters)
        frames = wait_for(lambda: ended() or row(status["compute"], "detector").get("counters", {}).get(
            "frames.received", 0), 60, interval_s=0.02)
        recovered_s = time.monotonic() - left
        assert frames and not ended(), "no frame reached the detector after the squatters left"
        # The camera launcher hears capture again (it would kill it as hung otherwise).
        assert wait_for(lambda: (row(status["camera"], "capture").get("heartbeat_age_ms") or 1e9) < 1000, 10)
    finally:
        for process in launchers.values():
            stop_process(process, timeout_s=10, ordered=False)
        for out in logs.values():
            out.close()
    camera_log = (tmp_path / "camera.log").read_text()
    assert all(p.returncode == 0 for p in launchers.values()), camera_log[-3000:]
    bind_errors = [line for line in camera_log.splitlines() if f"cannot bind publisher at tcp://127.0.0.1:{ports[0]}" in line]
    assert bind_errors and all("ERROR" in line for line in bind_errors) and "Traceback" not in camera_log
    assert recovered_s < 20, recovered_s
    print(f"\nsplit launch: first frame at the detector {recovered_s:.2f} s after the squatters left")
