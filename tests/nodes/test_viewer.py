"""The live view: a real WebSocket client watches a replay of the bundled drive through the viewer node.

Speaks the Foxglove WebSocket protocol as the Foxglove app does: reads serverInfo and the advertised
channels, subscribes, and decodes binary message frames (opcode 0x01, uint32 subscription id,
uint64 log time, payload). Image annotations are decoded with protobuf from the schema the server
advertises, decisions with the pipeline's own codec.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from helpers import REPO, free_port
from perception.messages import Decision
from perception.codec import decode
from perception.topics import DECISIONS
from perception.visualization import ANNOTATIONS_CHANNEL, IMAGE_CHANNEL

websockets = pytest.importorskip("websockets")
pytest.importorskip("foxglove")
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory  # noqa: E402 - after the skips

DRIVE = REPO / "recordings" / "udacity_dashcam.mcap"
SUBPROTOCOL = "foxglove.sdk.v1"  # what the SDK's server accepts (it refuses a handshake without one)
MESSAGE_DATA = 0x01
WATCH_S = 45.0  # the whole watch, connection attempts included; the replay itself takes ~10 s


def protobuf_class(channel: dict):  # noqa: ANN201 - a generated protobuf message class
    """The message class of a protobuf channel, built from the FileDescriptorSet it advertises."""
    assert channel["schemaEncoding"] == "protobuf"
    files = descriptor_pb2.FileDescriptorSet.FromString(base64.b64decode(channel["schema"])).file
    pool, pending = descriptor_pool.DescriptorPool(), list(files)
    while pending:  # dependencies first, whatever order the set lists them in
        ready = [f for f in pending if all(d in {g.name for g in files if g not in pending} for d in f.dependency)]
        assert ready, "the advertised schema has unresolvable imports"
        for f in ready:
            pool.Add(f)
            pending.remove(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(channel["schemaName"]))


async def connect(port: int, deadline: float):  # noqa: ANN201 - a websockets connection
    while True:  # the viewer starts with the pipeline: retry until it listens
        try:
            return await websockets.connect(f"ws://127.0.0.1:{port}", subprotocols=[SUBPROTOCOL], open_timeout=2,
                                            max_size=None)
        except (OSError, websockets.exceptions.InvalidHandshake):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def old_client_refused(port: int) -> int | None:
    """The HTTP status a client offering only the old subprotocol name gets (None: it connected)."""
    try:
        ws = await websockets.connect(f"ws://127.0.0.1:{port}", subprotocols=["foxglove.websocket.v1"], open_timeout=2)
    except websockets.exceptions.InvalidStatus as exc:
        return exc.response.status_code
    await ws.close()
    return None


async def watch(port: int, topics: list[str], wanted: dict[str, int]) -> tuple[dict, dict[str, list[bytes]], int | None]:
    """Subscribe to `topics`; return the advertised channels by topic and the payloads received per
    topic, once each topic in `wanted` has that many (or at the deadline), and what an old client got."""
    deadline = time.monotonic() + WATCH_S
    ws = await connect(port, deadline)
    old_client = await old_client_refused(port)  # docs/LIVE_VIEW.md, "Which clients connect"
    try:
        channels: dict[str, dict] = {}
        while not set(topics) <= channels.keys():
            message = json.loads(await asyncio.wait_for(ws.recv(), max(0.1, deadline - time.monotonic())))
            if message["op"] == "advertise":
                channels.update({c["topic"]: c for c in message["channels"]})
        subscriptions = {i: topic for i, topic in enumerate(topics, start=1)}
        await ws.send(json.dumps({"op": "subscribe", "subscriptions": [
            {"id": i, "channelId": channels[topic]["id"]} for i, topic in subscriptions.items()]}))
        payloads: dict[str, list[bytes]] = {topic: [] for topic in topics}
        while any(len(payloads[t]) < n for t, n in wanted.items()) and time.monotonic() < deadline:
            try:
                frame = await asyncio.wait_for(ws.recv(), max(0.1, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                break
            if isinstance(frame, bytes) and frame[0] == MESSAGE_DATA:
                subscription, _log_time = struct.unpack_from("<IQ", frame, 1)
                payloads[subscriptions[subscription]].append(frame[13:])
        return channels, payloads, old_client
    finally:
        await ws.close()


def stop_group(process: subprocess.Popen) -> None:
    """The launcher stops its nodes on SIGTERM (within 2 s); SIGKILL the whole group if it does not."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


@pytest.mark.timeout(240)  # a replay started on a loaded machine, then 6 s of frames
def test_a_websocket_client_sees_boxes_images_and_decisions_of_a_replay(tmp_path):
    port = free_port()
    log_path = tmp_path / "replay.log"  # a file, not a pipe: a pipe nobody reads while we watch could fill
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(
            # At a quarter of recorded time (6 s of frames, from when the view serves): a client on a
            # loaded machine still subscribes before the drive has played.
            [sys.executable, "-m", "perception.cli", "replay", str(DRIVE), "--speed", "0.25", "--foxglove", str(port)], cwd=REPO,
            stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        topics = [ANNOTATIONS_CHANNEL, DECISIONS.name, IMAGE_CHANNEL]
        channels, payloads, old_client = asyncio.run(watch(port, topics, {ANNOTATIONS_CHANNEL: 5, DECISIONS.name: 5,
                                                              IMAGE_CHANNEL: 1}))
        process.wait(timeout=30)  # the replay ends by itself once the drive has played
    finally:
        stop_group(process)
    output = log_path.read_text()
    assert process.returncode == 0, output[-3000:]
    assert output.count(f"live view on ws://127.0.0.1:{port}") == 1
    assert old_client == 400  # foxglove.sdk.v1 only: as docs/LIVE_VIEW.md says, for the clients it names

    annotations_type = protobuf_class(channels[ANNOTATIONS_CHANNEL])
    annotations = [annotations_type.FromString(p) for p in payloads[ANNOTATIONS_CHANNEL]]
    assert len(annotations) >= 5 and channels[ANNOTATIONS_CHANNEL]["schemaName"] == "foxglove.ImageAnnotations"
    boxes = [box for a in annotations for box in a.points]
    assert boxes, "no frame of the drive had a box"  # every frame of this drive has cars ahead
    assert all(len(box.points) == 4 for box in boxes)
    labels = [t.text.split() for a in annotations for t in a.texts]  # "car 0.85 #3": class, score, track
    assert len(labels) == len(boxes) and any(label[0] == "car" for label in labels)
    assert all(0 <= float(label[1]) <= 1 for label in labels)

    image_type = protobuf_class(channels[IMAGE_CHANNEL])
    image = image_type.FromString(payloads[IMAGE_CHANNEL][0])
    pixels = cv2.imdecode(np.frombuffer(image.data, np.uint8), cv2.IMREAD_COLOR)
    assert image.format == "jpeg" and pixels.shape[1] == 640  # the 1280-wide drive, downscaled
    # The boxes are drawn over that smaller image, so they were scaled with it.
    assert all(0 <= p.x <= pixels.shape[1] and 0 <= p.y <= pixels.shape[0] for box in boxes for p in box.points)

    assert channels[DECISIONS.name]["schemaName"] == "perception.Decision"
    decisions = [decode(p, expect=Decision) for p in payloads[DECISIONS.name]]
    # The decision node's, and on a loaded machine perhaps a watchdog's fail-safe: both decode the same.
    assert len(decisions) >= 5 and {d.decided_by for d in decisions} <= {"decision", "watchdog"}
    assert any(d.decided_by == "decision" for d in decisions)

    # One channel table for both sinks: the live view serves exactly the channels a recording holds.
    from mcap.reader import make_reader

    with open(DRIVE, "rb") as recording:
        summary = make_reader(recording).get_summary()
    recorded = {c.topic: (summary.schemas[c.schema_id].name, summary.schemas[c.schema_id].encoding, c.message_encoding)
                for c in summary.channels.values()}
    assert {topic: (c["schemaName"], c["schemaEncoding"], c["encoding"]) for topic, c in channels.items()} == recorded


def test_a_taken_port_is_one_line_before_anything_starts():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "perception.cli", "replay", str(DRIVE), "--foxglove", str(port)],
                                cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and time.monotonic() - started < 30
    assert result.stderr.strip().splitlines() == [f"replay: --foxglove: cannot listen on 127.0.0.1:{port}: "
                                                  "Address already in use"]


def test_no_frame_is_read_or_encoded_while_nobody_watches_the_image():
    import foxglove

    from nodes.viewer import Streams, ViewerConfig

    class Untouchable:
        def view(self, received):
            pytest.fail("read a frame that no client watches")

    streams = Streams(foxglove, foxglove.Context(), ViewerConfig(), ["car"])  # a context without a server
    streams.frame(None, Untouchable(), None)
