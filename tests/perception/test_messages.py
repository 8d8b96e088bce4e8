import math

import numpy as np
import pytest

from samples import STAMPS, all_messages

from perception.messages import (
    Action, Control, Decision, Detections, FrameHeader, FrameTransport, Heartbeat, MessageError, NodeState,
    Reason, Stamp, SystemState, Target, WatchdogStatus, decode, encode,
)

@pytest.mark.parametrize("message", all_messages(), ids=lambda m: type(m).__name__)
def test_every_message_round_trips(message):
    assert decode(encode(message)) == message


def test_stamped_appends_a_hop_without_touching_the_original():
    header = all_messages()[0]
    later = header.stamped("monitor", 9_000)
    assert later.stamps[-1] == Stamp("monitor", 9_000)
    assert len(header.stamps) == 2 and decode(encode(later)).stamps == later.stamps


def test_infinite_ttc_survives_the_wire():
    decision = Decision(frame_id=1, capture_ns=1, action=Action.SLOW, reason=Reason.CLOSING_FAST, decided_by="d",
                        target=Target(class_id=0, score=0.5, box=(0, 0, 1, 1)))
    assert math.isinf(decode(encode(decision)).target.ttc_s)


@pytest.mark.parametrize("message", all_messages(), ids=lambda m: type(m).__name__)
def test_every_truncation_is_a_clear_error(message):
    data = encode(message)
    for cut in range(len(data)):
        with pytest.raises(MessageError, match="truncated|impossible|not a valid|trailing"):
            decode(data[:cut])


def test_trailing_bytes_are_rejected():
    with pytest.raises(MessageError, match="trailing"):
        decode(encode(all_messages()[4]) + b"\x00")


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda b: b"XX" + b[2:], "bad magic"),
        (lambda b: b[:2] + bytes([99]) + b[3:], "wire version 99"),
        (lambda b: b[:3] + bytes([200]) + b[4:], "unknown kind 200"),
    ],
)
def test_corrupt_envelope_is_named(mutate, match):
    with pytest.raises(MessageError, match=match):
        decode(mutate(encode(all_messages()[0])))


def test_invalid_enum_value_is_named():
    data = bytearray(encode(all_messages()[4]))
    action_offset = 2 + 1 + 1 + 8 + 8 + 1  # envelope, no stamps
    data[action_offset] = 7
    with pytest.raises(MessageError, match="7 is not a valid Action"):
        decode(bytes(data))


def test_absurd_detection_count_is_rejected_before_allocating():
    data = bytearray(encode(all_messages()[2]))
    data[-4:] = (10**9).to_bytes(4, "little")
    with pytest.raises(MessageError, match="exceeds the limit"):
        decode(bytes(data))


def test_expected_type_is_enforced():
    with pytest.raises(MessageError, match="got Heartbeat, expected FrameHeader"):
        decode(encode(all_messages()[5]), expect=FrameHeader)


def test_non_utf8_string_is_named():
    message = Control(frame_id=1, capture_ns=1, target="ab", max_depth=1)
    data = encode(message).replace(b"ab", b"\xff\xfe")
    with pytest.raises(MessageError, match="not UTF-8"):
        decode(data)


def test_random_garbage_never_escapes_as_another_exception():
    rng = np.random.default_rng(0)
    valid = [encode(m) for m in all_messages()]
    for _ in range(2000):
        data = bytearray(valid[rng.integers(len(valid))])
        for _ in range(rng.integers(1, 4)):
            data[rng.integers(len(data))] = rng.integers(256)
        try:
            decode(bytes(data))
        except MessageError:
            pass


def test_detections_with_inconsistent_arrays_cannot_be_built():
    with pytest.raises(ValueError, match="disagree"):
        Detections(frame_id=1, capture_ns=1, image_width=1, image_height=1, exit_index=0, exit_count=1,
                   boxes=np.zeros((2, 4), np.float32), scores=np.zeros(1, np.float32), class_ids=np.zeros(2, np.uint16))
