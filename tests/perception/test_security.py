"""CURVE on tcp: key folders, a node publisher that serves only listed clients, subscribers that
accept only the publisher they expect, and plain tcp refused unless marked insecure.

Every wait is a poll with a timeout; "receives nothing" is checked over a window in which an
authorized subscriber set up at the same time does receive."""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

from helpers import REPO, free_port, run_python, stop_process, wait_for
from perception.messages import Heartbeat, NodeState
from perception.connector import Peer
from perception.node import Node, NodeSettings, RunContext
from perception.security import (
    CurveClient, CurveServer, SecurityError, create_keys, load_identity, read_public_key,
)
from perception.topics import HEARTBEAT
from perception.transport import Publisher, Subscriber

QUIET_WINDOW_S = 1.5  # how long an unauthorized subscriber must stay empty while the authorized one receives


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    create_keys(tmp_path / "keys", ["camera", "compute"])
    return tmp_path / "keys"


@pytest.fixture
def stranger(tmp_path: Path) -> Path:
    """Valid CURVE keys that are not in the launch's public/ folder."""
    create_keys(tmp_path / "elsewhere", ["stranger"])
    return tmp_path / "elsewhere"


def heartbeat(seq: int) -> Heartbeat:
    return Heartbeat(frame_id=0, capture_ns=0, node="rogue", pid=1, seq=seq, sent_ns=time.monotonic_ns(),
                     state=NodeState.OK, counters={})


def received(subscriber: Subscriber, timeout_s: float) -> list:
    """Everything `subscriber` gets within `timeout_s`."""
    out: list = []
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        if subscriber.socket.poll(int(left * 1000) + 1):
            out += [r.message for r in subscriber.receive()]
    return out


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if " ERROR " in line or line.startswith("perception ")]


def test_keys_are_private_and_an_existing_key_is_never_replaced(tmp_path, keys):
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    assert stat.S_IMODE((keys / "secret").stat().st_mode) == 0o700
    for name in ("camera", "compute"):
        assert stat.S_IMODE((keys / "secret" / f"{name}.key_secret").stat().st_mode) == 0o600
        identity = load_identity(keys, name)
        assert identity.public_key == read_public_key(keys, name) and len(identity.secret_key) == 40
    before = (keys / "secret" / "camera.key_secret").read_bytes()
    with pytest.raises(SecurityError, match="camera.key exists: not replacing"):
        create_keys(keys, ["laptop", "camera"])
    assert not (keys / "public" / "laptop.key").exists(), "a refused call must write nothing"
    assert (keys / "secret" / "camera.key_secret").read_bytes() == before

    result = run_python(["-m", "perception.cli", "keys", str(keys), "--hosts", "compute"])
    assert result.returncode == 2 and error_lines(result.stderr) == [
        f"perception keys: {keys}/public/compute.key exists: not replacing a key other hosts may hold (remove it first)"]
    result = run_python(["-m", "perception.cli", "keys", str(tmp_path / "fresh"), "--launch", "launch/two_hosts.yaml"])
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "fresh" / "secret").iterdir()) == ["camera.key_secret", "compute.key_secret"]


def test_a_secret_key_others_can_read_is_refused(keys):
    (keys / "secret" / "camera.key_secret").chmod(0o640)
    with pytest.raises(SecurityError, match="must belong to this user and be private"):
        load_identity(keys, "camera")
    with pytest.raises(SecurityError, match="no secret key for 'laptop'"):
        load_identity(keys, "laptop")


def test_a_curve_node_serves_only_listed_clients(tmp_path, run_dir, keys, stranger):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    (tmp_path / "watcher.yaml").write_text(
        f"node: {{heartbeat_period_ms: 50, publish: '{endpoint}', keys: {keys}, key: camera, inputs: {{frames: [nobody/frames]}}}}\n")
    node = subprocess.Popen([sys.executable, "-m", "nodes.monitor", "--name", "watcher", "--config",
                             str(tmp_path / "watcher.yaml")], cwd=REPO, stderr=subprocess.PIPE, text=True)
    context = zmq.Context()
    server_key = read_public_key(keys, "camera")
    listed = Subscriber(context, endpoint, HEARTBEAT, False, curve=CurveClient(load_identity(keys, "compute"),
                                                                               {endpoint: server_key}))
    unlisted = Subscriber(context, endpoint, HEARTBEAT, False, curve=CurveClient(load_identity(stranger, "stranger"),
                                                                                 {endpoint: server_key}))
    plain = Subscriber(context, endpoint, HEARTBEAT, False)
    try:
        assert wait_for(lambda: listed.receive(), timeout_s=20), "the listed client got no heartbeat"
        beats = received(listed, QUIET_WINDOW_S)
        assert len(beats) >= 10 and {b.node for b in beats} == {"watcher"}
        assert received(unlisted, 0.1) == [] and unlisted.received == unlisted.malformed == 0
        assert received(plain, 0.1) == [] and plain.received == plain.malformed == 0
    finally:
        for subscriber in (listed, unlisted, plain):
            subscriber.close()
        context.term()
        stop_process(node)
    assert node.returncode == 0, node.stderr.read()


def test_a_rogue_publisher_at_a_known_endpoint_cannot_inject(run_dir, keys, stranger):
    """A node that expects host camera's key at an endpoint gets nothing from a server with any
    other key there, even one that would accept the node as a client; the same subscription takes
    messages from the real publisher."""
    shutil.copy(keys / "public" / "compute.key", stranger / "public")  # the rogue lets our node in
    contexts = [zmq.Context(), zmq.Context()]  # a ZAP handler per context, as in two processes
    rogue_curve = CurveServer(contexts[0], load_identity(stranger, "stranger"))
    real_curve = CurveServer(contexts[1], load_identity(keys, "camera"))
    rogue_endpoint, real_endpoint = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    rogue = Publisher(contexts[0], rogue_endpoint, curve=rogue_curve)
    real = Publisher(contexts[1], real_endpoint, curve=real_curve)
    settings = NodeSettings(keys=keys, key="compute", peers={"capture": Peer(rogue_endpoint, "camera"),
                                                            "camera_twin": Peer(real_endpoint, "camera")},
                            inputs={"rogue": ["capture/heartbeat"], "real": ["camera_twin/heartbeat"]})
    node = Node("listener", settings, RunContext(run_dir, run_dir.name))
    try:
        from_rogue = node.subscribe("rogue", HEARTBEAT, latest=False)
        from_real = node.subscribe("real", HEARTBEAT, latest=False)
        deadline = time.monotonic() + 20
        seq = 0
        while not from_real.receive() and time.monotonic() < deadline:
            seq += 1
            real.publish(HEARTBEAT, heartbeat(seq))
            rogue.publish(HEARTBEAT, heartbeat(seq))
            time.sleep(0.02)
        assert from_real.received, "the expected publisher's messages did not arrive"
        end = time.monotonic() + QUIET_WINDOW_S
        while time.monotonic() < end:
            rogue.publish(HEARTBEAT, heartbeat(seq))
            time.sleep(0.02)
        assert received(from_rogue, 0.1) == [] and from_rogue.received == 0
        assert rogue.subscriber_count(HEARTBEAT) == 0  # its handshake never completed
    finally:
        node.close()
        for publisher in (rogue, real):
            publisher.close()
        rogue_curve.stop()
        real_curve.stop()
        for context in contexts:
            context.term()


def test_plain_tcp_is_refused_with_one_line_unless_insecure(tmp_path, run_dir):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    config = tmp_path / "watcher.yaml"
    config.write_text(f"node: {{heartbeat_period_ms: 50, publish: '{endpoint}', inputs: {{frames: [nobody/frames]}}}}\n")
    result = run_python(["-m", "nodes.monitor", "--name", "watcher", "--config", str(config)])
    assert result.returncode == 78 and "Traceback" not in result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and f"node watcher: {endpoint} without CURVE keys" in lines[0]
    assert "set insecure: true" in lines[0]

    # A subscription to plain tcp is refused the same way: it would take forged messages.
    (tmp_path / "reader.yaml").write_text(f"node: {{inputs: {{frames: [camera/frames]}}, peers: {{camera: {{endpoint: '{endpoint}'}}}}}}\n")
    result = run_python(["-m", "nodes.monitor", "--name", "reader", "--config", str(tmp_path / "reader.yaml")])
    assert result.returncode == 78 and "Traceback" not in result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and f"node reader: {endpoint} without its publisher's CURVE key" in lines[0]

    config.write_text(f"node: {{heartbeat_period_ms: 50, publish: '{endpoint}', insecure: true, inputs: {{frames: [nobody/frames]}}}}\n")
    node = subprocess.Popen([sys.executable, "-m", "nodes.monitor", "--name", "watcher", "--config", str(config)],
                            cwd=REPO, stderr=subprocess.PIPE, text=True)
    context = zmq.Context()
    plain = Subscriber(context, endpoint, HEARTBEAT, False)
    try:
        assert wait_for(lambda: plain.receive(), timeout_s=20), "an insecure node should serve plain tcp"
    finally:
        plain.close()
        context.term()
        stop_process(node)
    assert node.returncode == 0


def test_a_launch_with_plain_tcp_refuses_to_start_naming_the_node(tmp_path):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    (tmp_path / "monitor.yaml").write_text(f"node: {{publish: '{endpoint}'}}\n")
    launch = tmp_path / "plain.yaml"
    entry = "  - {name: watcher, node: monitor, config: monitor.yaml, inputs: {frames: nobody/frames}}\n"
    launch.write_text("external: {nobody: [frames]}\nnodes:\n" + entry)
    result = run_python(["-m", "perception.cli", "launch", str(launch)])
    assert result.returncode == 78, result.stderr
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and f"node watcher: {endpoint} without CURVE keys" in errors[0]
    assert "started" not in result.stderr
    launch.write_text("insecure: true\nexternal: {nobody: [frames]}\nnodes:\n" + entry)
    result = run_python(["-m", "perception.cli", "launch", str(launch), "--duration", "1"], timeout_s=30)
    assert result.returncode == 0 and "started watcher" in result.stderr, result.stderr
