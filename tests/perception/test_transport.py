import time

import numpy as np
import pytest
import zmq

from perception.messages import Control, FrameTransport, Heartbeat, NodeState, Stamp
from perception.codec import encode
from perception.transport import FrameReceiver, FrameSender, Publisher, RingError, Subscriber, resolve_endpoint
from perception.topics import CONTROL, FRAMES, HEARTBEAT


@pytest.fixture
def context():
    ctx = zmq.Context()
    yield ctx
    ctx.term()


def control(i: int) -> Control:
    return Control(frame_id=i, capture_ns=i, target="detector", max_depth=i % 3)


def receive_until(subscriber, count, timeout_s=3.0):
    got = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count and time.monotonic() < deadline:
        if subscriber.socket.poll(50):
            got += subscriber.receive()
    return got


def connected_pair(context, run_dir, latest, topic=CONTROL):
    endpoint = resolve_endpoint("pub", run_dir)
    publisher = Publisher(context, endpoint)
    subscriber = Subscriber(context, endpoint, topic, latest=latest)
    deadline = time.monotonic() + 3
    while publisher.subscriber_count(topic) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    return publisher, subscriber


def test_endpoint_resolution():
    assert resolve_endpoint("capture", "/run/p") == "ipc:///run/p/capture.pub"
    assert resolve_endpoint("tcp://10.0.0.2:5555", "/run/p") == "tcp://10.0.0.2:5555"
    assert resolve_endpoint("ipc://{run_dir}/x", "/run/p") == "ipc:///run/p/x"
    with pytest.raises(ValueError):
        resolve_endpoint("a/b", "/run/p")


def test_queue_mode_delivers_everything_in_order(context, run_dir):
    publisher, subscriber = connected_pair(context, run_dir, latest=False)
    for i in range(50):
        publisher.publish(CONTROL, control(i))
    assert [r.message.frame_id for r in receive_until(subscriber, 50)] == list(range(50))
    publisher.close(); subscriber.close()


def test_latest_mode_returns_only_the_newest_and_counts_the_rest(context, run_dir):
    publisher, subscriber = connected_pair(context, run_dir, latest=True)
    for i in range(3):
        publisher.publish(CONTROL, control(i))
    time.sleep(0.2)  # all three are queued before the reader looks
    got = subscriber.receive()
    assert [r.message.frame_id for r in got] == [2]
    assert subscriber.superseded == 2
    publisher.close(); subscriber.close()


def test_malformed_messages_are_dropped_counted_and_the_stream_continues(context, run_dir):
    publisher, subscriber = connected_pair(context, run_dir, latest=False)
    publisher.publish(CONTROL, control(1))
    publisher.socket.send_multipart([CONTROL.name.encode(), b"garbage"])
    publisher.socket.send_multipart([CONTROL.name.encode(), encode(control(2))[:-3]])
    publisher.socket.send_multipart([CONTROL.name.encode()])
    publisher.publish(HEARTBEAT, Heartbeat(frame_id=0, capture_ns=0, node="x", pid=1, seq=1, sent_ns=1,
                                             state=NodeState.OK))  # other topic: filtered, not malformed
    publisher.socket.send_multipart([CONTROL.name.encode(), encode(Heartbeat(frame_id=0, capture_ns=0, node="x", pid=1, seq=1,
                                                                  sent_ns=1, state=NodeState.OK))])
    publisher.publish(CONTROL, control(3))
    got = receive_until(subscriber, 2)
    assert [r.message.frame_id for r in got] == [1, 3]
    assert subscriber.malformed == 4 and subscriber.received == 2
    publisher.close(); subscriber.close()


@pytest.mark.parametrize("transport", [FrameTransport.SHM, FrameTransport.INLINE])
def test_frames_arrive_intact_over_either_transport(context, run_dir, transport):
    publisher, subscriber = connected_pair(context, run_dir, latest=False, topic=FRAMES)
    sender = FrameSender(publisher, run_dir.name, "cam", transport, slots=4)
    receiver = FrameReceiver()
    images = [np.random.default_rng(i).integers(0, 255, (72, 96, 3), np.uint8) for i in range(3)]
    for i, image in enumerate(images):
        sent = sender.send(image, frame_id=i + 1, capture_ns=100 + i, media_ns=0,
                           stamps=(Stamp("capture", 100 + i),))
        assert sent.shape == image.shape and sent.stamps[-1].stage == "publish"
    got = receive_until(subscriber, 3)
    for received, image in zip(got, images):
        view = receiver.view(received)
        assert np.array_equal(view.array, image) and view.still_valid()
    receiver.close(); sender.close(); publisher.close(); subscriber.close()


def test_capture_decodes_straight_into_the_reserved_slot(context, run_dir):
    publisher = Publisher(context, resolve_endpoint("pub", run_dir))
    sender = FrameSender(publisher, run_dir.name, "cam", FrameTransport.SHM, slots=4)
    origin = {"frame_id": 1, "capture_ns": 1, "media_ns": 0}
    first = np.zeros((8, 8, 3), np.uint8)
    try:
        sender.send(first, **origin)
        reservation = sender.reserve((8, 8, 3))
        reservation.array[:] = 7  # what a source's read(out=...) does
        sent = sender.send(reservation.array, **origin, reservation=reservation)
        assert (sent.slot, sent.seq) == (reservation.slot, reservation.seq)
        assert sender.reserve((4, 4, 3)) is not None  # smaller: decoded in place too
        assert sender.reserve((16, 8, 3)) is None  # larger than the slots: no in-place decode
    finally:
        sender.close(); publisher.close()


def test_frames_that_change_size_reach_a_reader_behind_them_intact(context, run_dir):
    """A camera switching mode: smaller frames use the ring's slots, a larger one gets a new ring
    (NAME-2, ...), and the ring before it stays, so a queue-mode reader (the recorder) that is
    behind still reads the frames sent before the change; the one before that goes."""
    from perception.shm_ring import segments_with_prefix

    publisher, subscriber = connected_pair(context, run_dir, latest=False, topic=FRAMES)
    sender = FrameSender(publisher, run_dir.name, "cam", FrameTransport.SHM, slots=4)
    receiver = FrameReceiver()
    shapes = [(48, 64, 3), (48, 64, 3), (96, 128, 3), (48, 64, 3), (96, 128, 3), (24, 32, 3)]
    images = [np.random.default_rng(i).integers(0, 255, shape, np.uint8) for i, shape in enumerate(shapes)]
    try:
        sent = [sender.send(image, frame_id=i + 1, capture_ns=100 + i, media_ns=0) for i, image in enumerate(images)]
        first = sent[0].ring
        assert [h.ring for h in sent] == [first] * 2 + [f"{first}-2"] * 4
        assert [h.shape for h in sent] == shapes
        got = receive_until(subscriber, len(images))  # all of them sent before the reader looks
        assert [r.message.frame_id for r in got] == [1, 2, 3, 4, 5, 6]
        for received, image in zip(got, images):
            view = receiver.view(received)
            assert np.array_equal(view.array, image) and view.still_valid()
        sender.send(np.zeros((200, 200, 3), np.uint8), frame_id=7, capture_ns=107, media_ns=0)
        assert segments_with_prefix(first) == [f"{first}-2", f"{first}-3"]  # the first ring is gone
    finally:  # sockets left open would hang the context's term()
        receiver.close(); sender.close(); publisher.close(); subscriber.close()
    assert segments_with_prefix(first) == []


def test_a_stamp_from_the_future_is_dropped_counted_and_not_taken_as_the_latest(context, run_dir):
    """One clock per host: a capture stamp later than now was never true; it must not move a deadline."""
    publisher, subscriber = connected_pair(context, run_dir, latest=False)
    now = time.monotonic_ns()
    publisher.publish(CONTROL, Control(frame_id=1, capture_ns=now, target="detector", max_depth=1))
    publisher.publish(CONTROL, Control(frame_id=2, capture_ns=2**62, target="detector", max_depth=1))
    publisher.publish(CONTROL, Control(frame_id=3, capture_ns=now, stamps=(Stamp("hop", now + 10**12),),
                                         target="detector", max_depth=1))
    time.sleep(0.2)
    got = receive_until(subscriber, 1)
    assert [r.message.frame_id for r in got] == [1]
    assert (subscriber.bad_stamp, subscriber.received, subscriber.malformed) == (2, 1, 0)
    assert subscriber.updated and subscriber.last.frame_id == 1 and subscriber.alive(10**9)
    assert subscriber.receive() == [] and not subscriber.updated and subscriber.last.frame_id == 1
    publisher.close(); subscriber.close()


def test_a_frame_naming_another_runs_ring_is_refused(context, run_dir):
    publisher, subscriber = connected_pair(context, run_dir, latest=False, topic=FRAMES)
    sender = FrameSender(publisher, "otherrun", "cam", FrameTransport.SHM, slots=2)
    sender.send(np.zeros((8, 8, 3), np.uint8), frame_id=1, capture_ns=1, media_ns=0)
    received = receive_until(subscriber, 1)[0]
    with pytest.raises(RingError, match="not one of this run's"):
        FrameReceiver(ring_prefix="perception-thisrun-").view(received)
    assert FrameReceiver(ring_prefix="perception-otherrun-").view(received).array.shape == (8, 8, 3)
    sender.close(); publisher.close(); subscriber.close()
