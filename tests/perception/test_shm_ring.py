import multiprocessing as mp

import numpy as np
import pytest

from perception.shm_ring import (
    FrameOverwritten, FrameRingReader, FrameRingWriter, RingError, segments_with_prefix, unlink_segment,
)

SHAPE = (48, 64, 3)


@pytest.fixture
def ring_name(request):
    name = f"perception-test-{request.node.name[:20]}-{mp.current_process().pid}"
    yield name
    unlink_segment(name)


def frame(value: int) -> np.ndarray:
    return np.full(SHAPE, value % 256, np.uint8)


def test_reader_sees_exactly_what_was_written(ring_name):
    with FrameRingWriter(ring_name, SHAPE, slots=4) as writer:
        reader = FrameRingReader()
        image = np.random.default_rng(1).integers(0, 255, SHAPE, np.uint8)
        r = writer.write(image)
        view = reader.view(ring_name, r.slot, r.seq, SHAPE)
        assert np.array_equal(view.array, image) and view.still_valid()
        assert not view.array.flags.writeable
        reader.close()


def test_reader_that_falls_behind_is_told_overwritten_not_given_a_newer_frame(ring_name):
    with FrameRingWriter(ring_name, SHAPE, slots=4) as writer:
        reader = FrameRingReader()
        first = writer.write(frame(1))
        for i in range(4):  # wraps around onto the first frame's slot
            writer.write(frame(10 + i))
        with pytest.raises(FrameOverwritten, match="fell behind"):
            reader.view(ring_name, first.slot, first.seq, SHAPE)
        reader.close()


def test_overwrite_during_use_is_detected_after_the_fact(ring_name):
    with FrameRingWriter(ring_name, SHAPE, slots=2) as writer:
        reader = FrameRingReader()
        r = writer.write(frame(1))
        view = reader.view(ring_name, r.slot, r.seq, SHAPE)
        writer.write(frame(2))
        assert view.still_valid()  # other slot: untouched
        writer.write(frame(3))  # same slot as r
        assert not view.still_valid()
        with pytest.raises(FrameOverwritten):
            view.copy()
        reader.close()


def test_slot_being_written_is_never_handed_out(ring_name):
    with FrameRingWriter(ring_name, SHAPE, slots=2) as writer:
        reader = FrameRingReader()
        old = writer.write(frame(1))
        writer.write(frame(2))
        pending = writer.reserve()  # the writer is mid-frame in old's slot
        assert pending.slot == old.slot
        pending.array[:10] = 99  # half a frame
        with pytest.raises(FrameOverwritten):
            reader.view(ring_name, old.slot, old.seq, SHAPE)
        writer.commit(pending)
        assert reader.view(ring_name, pending.slot, pending.seq, SHAPE).still_valid()
        reader.close()


def _child_writer(name, count, ready, done):
    with FrameRingWriter(name, SHAPE, slots=8) as writer:
        for i in range(count):
            writer.write(frame(i))
        ready.set()
        done.wait(10)


def test_frames_cross_processes_and_the_writer_removes_its_segment(ring_name):
    ctx = mp.get_context("spawn")
    ready, done = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_child_writer, args=(ring_name, 5, ready, done))
    child.start()
    assert ready.wait(20)
    reader = FrameRingReader()
    view = reader.view(ring_name, 5 % 8, 5, SHAPE)  # seq 5 holds frame(4)
    assert int(view.array[0, 0, 0]) == 4
    del view
    reader.close()
    done.set()
    child.join(10)
    assert child.exitcode == 0
    assert ring_name not in segments_with_prefix(ring_name)


def test_a_stale_segment_of_the_same_name_is_reclaimed(ring_name):
    stale = FrameRingWriter(ring_name, SHAPE, slots=2)
    stale._shm.close()  # simulate a writer killed without cleaning up
    stale._shm = None
    with FrameRingWriter(ring_name, (8, 8, 3), slots=2) as fresh:
        assert fresh.shape == (8, 8, 3)


def test_a_smaller_frame_of_another_shape_uses_the_same_slots(ring_name):
    """A camera switching to a smaller mode keeps its ring: each frame is read in its own shape."""
    with FrameRingWriter(ring_name, SHAPE, slots=4) as writer:
        reader = FrameRingReader()
        small = np.random.default_rng(2).integers(0, 255, (20, 30, 3), np.uint8)
        written = [(writer.write(frame(1)), frame(1)), (writer.write(small), small)]
        reservation = writer.reserve((10, 40, 3))  # decoded in place, in the smaller shape
        reservation.array[:] = 9
        writer.commit(reservation)
        written.append((reservation, np.full((10, 40, 3), 9, np.uint8)))
        for r, image in written:
            view = reader.view(ring_name, r.slot, r.seq, image.shape)
            assert np.array_equal(view.array, image) and view.still_valid()
        reader.close()


def test_a_frame_larger_than_the_slots_and_a_missing_ring_are_named(ring_name):
    with FrameRingWriter(ring_name, SHAPE, slots=2) as writer:
        with pytest.raises(RingError, match=r"a \(60, 64, 3\) frame does not fit its slots of 9216 bytes"):
            writer.write(np.zeros((60, 64, 3), np.uint8))
    with pytest.raises(RingError, match="does not exist"):
        FrameRingReader().view("perception-no-such-ring", 0, 1, SHAPE)


def test_a_segment_too_small_or_lying_about_its_slots_is_a_ring_error_not_a_crash(ring_name):
    from multiprocessing import shared_memory

    tiny = shared_memory.SharedMemory(name=ring_name, create=True, size=8)  # what a forged header pointed at
    try:
        with pytest.raises(RingError, match="8 bytes is too small to be a frame ring"):
            FrameRingReader().view(ring_name, 0, 1, SHAPE)
    finally:
        tiny.close()
        unlink_segment(ring_name)
    with FrameRingWriter(ring_name, SHAPE, slots=2) as writer:
        header = np.ndarray((4,), np.uint64, writer._shm.buf, 0)
        header[1] = 200  # claims 200 slots in a segment that holds 2
        with pytest.raises(RingError, match="claims 200 slots"):
            FrameRingReader().view(ring_name, 0, 1, SHAPE)


def test_a_bad_ring_name_does_not_detach_the_good_ring(ring_name):
    with FrameRingWriter(ring_name, SHAPE, slots=2) as writer:
        reader = FrameRingReader()
        first = writer.write(frame(1))
        assert reader.view(ring_name, first.slot, first.seq, SHAPE).array[0, 0, 0] == 1
        with pytest.raises(RingError):
            reader.view("perception-no-such-ring", 0, 1, SHAPE)
        assert ring_name in reader._rings  # still attached: no re-mapping on the next good frame
        reader.close()


def test_segments_are_private_to_their_user(ring_name):
    import os
    import stat

    with FrameRingWriter(ring_name, SHAPE, slots=2):
        assert stat.S_IMODE(os.stat(f"/dev/shm/{ring_name}").st_mode) == 0o600
