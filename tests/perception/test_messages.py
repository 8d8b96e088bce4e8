import base64
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from samples import all_messages, forged

from perception.messages import (
    Action, Control, Decision, Detections, FrameHeader, FrameTransport, MessageError, MESSAGE_TYPES, NetworkPass, WIRE_VERSION, Reason, Stamp, Target,
)
from perception.codec import decode, encode, json_schema, upgrade

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
        with pytest.raises(MessageError, match="not JSON"):
            decode(data[:cut])


def test_trailing_bytes_are_rejected():
    with pytest.raises(MessageError, match="not JSON"):
        decode(encode(all_messages()[4]) + b"\x00")


def edited(message, **changes) -> bytes:
    """The JSON of `message` with top-level keys changed (None deletes one)."""
    data = json.loads(encode(message))
    for key, value in changes.items():
        if value is None:
            del data[key]
        else:
            data[key] = value
    return json.dumps(data).encode()


@pytest.mark.parametrize("changes, match", [
    ({"wire": 5}, "wire version 5, this build speaks 6"),
    ({"wire": None}, "wire version None"),
    ({"type": "Pickle"}, "unknown type 'Pickle'"),
    ({"type": ["FrameHeader"]}, "unknown type"),
    ({"width": None}, r"missing \['width'\]"),
    ({"extra": 1}, r"unknown \['extra'\]"),
    ({"width": "1280"}, "FrameHeader.width must be int, got str"),
    ({"width": 1280.0}, "FrameHeader.width must be int, got float"),
    ({"width": True}, "FrameHeader.width must be int, got bool"),
    ({"transport": "PIGEON"}, "'PIGEON' is not a valid FrameTransport"),
    ({"transport": 1}, "FrameHeader.transport must be str"),
    ({"stamps": [["capture"]]}, r"each stamp must be \[stage, t_ns\]"),
    ({"stamps": [["capture", 1.5e3]]}, "a stamp's time is not an integer"),
    ({"stamps": "capture"}, "stamps must be list"),
])
def test_corrupt_fields_are_named(changes, match):
    with pytest.raises(MessageError, match=match):
        decode(edited(all_messages()[0], **changes))


@pytest.mark.parametrize("measured_by, match", [
    ({"input_width": 0, "input_height": 320, "exit_index": 1}, "network input width 0"),
    ({"input_width": 544, "input_height": 99999, "exit_index": 1}, "network input height 99999"),
    ({"input_width": 544, "input_height": 320, "exit_index": -1}, "network pass exit -1"),
    ({"input_width": 544, "input_height": 320}, r"missing \['exit_index'\]"),
    ([544, 320, 1], "measured_by must be dict"),
])
def test_an_impossible_network_pass_is_named(measured_by, match):
    with pytest.raises(MessageError, match=match):
        decode(edited(all_messages()[1], measured_by=measured_by))


def test_older_detections_upgrade_with_their_network_pass_unknown():
    """A recording of wire 4 or 5 reads on (perception migrate): detections then have no pass, and the
    decision node fits a track's growth over all of its heights, as those builds did."""
    for version, dropped in ((5, ("measured_by",)), (4, ("measured_by", "clock"))):
        data = edited(all_messages()[1], wire=version, **{key: None for key in dropped})
        upgraded = decode(upgrade(data))
        assert upgraded.measured_by is None and upgraded.clock == "local"
        assert np.array_equal(upgraded.boxes, all_messages()[1].boxes)


def test_invalid_enum_value_is_named():
    with pytest.raises(MessageError, match="'LEAP' is not a valid Action"):
        decode(edited(all_messages()[4], action="LEAP"))


@pytest.mark.parametrize("changes, match", [
    ({"boxes": "!!!!"}, "Detections.boxes is not base64"),
    ({"boxes": "AAAA"}, "3 bytes are not whole rows of 16"),
    ({"scores": "AAAAAA=="}, "arrays disagree"),
])
def test_bad_arrays_are_named(changes, match):
    with pytest.raises(MessageError, match=match):
        decode(edited(all_messages()[1], **changes))


def test_absurd_detection_count_is_rejected():
    rows = base64.b64encode(bytes(16 * 5000)).decode()
    with pytest.raises(MessageError, match="5000 rows exceed the limit of 4096"):
        decode(edited(all_messages()[2], boxes=rows))


def test_hostile_nesting_and_size_are_malformed_not_a_crash():
    with pytest.raises(MessageError, match="not JSON"):
        decode(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(MessageError, match="exceed the limit"):
        decode(b" " * (2 << 20))
    with pytest.raises(MessageError, match="not an object"):
        decode(b"[1, 2]")


def test_expected_type_is_enforced():
    with pytest.raises(MessageError, match="got Heartbeat, expected FrameHeader"):
        decode(encode(all_messages()[5]), expect=FrameHeader)


def test_non_utf8_bytes_are_named():
    data = encode(Control(frame_id=1, capture_ns=1, target="ab", max_depth=1)).replace(b"ab", b"\xff\xfe")
    with pytest.raises(MessageError, match="not JSON"):
        decode(data)


@pytest.mark.parametrize("message_type", MESSAGE_TYPES, ids=lambda t: t.__name__)
def test_the_schema_names_every_field_the_codec_writes(message_type):
    """A recording declares this schema for its channel: it must describe exactly what is written."""
    sample = next(m for m in all_messages() if type(m) is message_type)
    schema = json_schema(message_type)
    written = json.loads(encode(sample))
    assert schema["title"] == f"perception.{message_type.__name__}"
    assert set(schema["properties"]) == set(written) == set(schema["required"])
    assert schema["properties"]["wire"] == {"const": WIRE_VERSION}


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


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def _decodes_or_is_malformed(data: bytes) -> None:
    try:
        message = decode(data)
    except MessageError:
        return
    assert decode(encode(message)) == message  # what passes is a whole, valid message


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2048))
def test_any_bytes_decode_or_raise_only_the_codecs_own_error(data):
    _decodes_or_is_malformed(data)


@settings(max_examples=400, deadline=None)
@given(index=st.integers(0, len(all_messages()) - 1), field=st.text(max_size=12), value=json_values,
       replace=st.booleans())
def test_any_field_set_to_any_json_value_decodes_or_is_malformed(index, field, value, replace):
    """A hostile publisher controls every byte: one field (an existing one, or a new key) set to any JSON value."""
    data = json.loads(encode(all_messages()[index]))
    if replace and data:
        field = sorted(data)[len(field) % len(data)]
    data[field] = value
    _decodes_or_is_malformed(json.dumps(data, allow_nan=True).encode())


def test_detections_with_inconsistent_arrays_cannot_be_built():
    with pytest.raises(ValueError, match="disagree"):
        Detections(frame_id=1, capture_ns=1, image_width=1, image_height=1, exit_index=0, exit_count=1,
                   boxes=np.zeros((2, 4), np.float32), scores=np.zeros(1, np.float32), class_ids=np.zeros(2, np.uint16))


FRAME, DETECTIONS, DECISION, HEARTBEAT = (all_messages()[i] for i in (0, 1, 3, 5))
FULL = tuple(Stamp(f"s{i}", 2_000 + i) for i in range(32))


@pytest.mark.parametrize("message, fields, match", [
    (FRAME, {"ring": ""}, "ring '' is not a name"),
    (FRAME, {"ring": "../../etc/passwd"}, "is not a name"),
    (FRAME, {"ring": "a/b"}, "is not a name"),
    (FRAME, {"stamps": FULL}, "32 stamps, a FrameHeader carries at most 4"),
    (FRAME, {"slot": 4096}, "ring slot 4096 is outside"),
    (FRAME, {"width": 0}, "frame width 0"),
    (FRAME, {"transport": FrameTransport.INLINE}, "an inline frame names no ring"),
    (DETECTIONS, {"image_width": 0}, "image width 0"),
    (DETECTIONS, {"image_height": 0}, "image height 0"),
    (DETECTIONS, {"stamps": FULL}, "32 stamps, a Detections carries at most 24"),
    (DETECTIONS, {"boxes": np.array([[1, 2, 3, np.nan], [5, 6, 7, 8]], np.float32)}, "a box is not finite"),
    (DETECTIONS, {"boxes": np.array([[3, 2, 1, 4], [5, 6, 7, 8]], np.float32)}, "x2 < x1"),
    (DETECTIONS, {"scores": np.array([0.9, 7.0], np.float32)}, "score is outside 0..1"),
    (DETECTIONS, {"exit_index": 3}, "exit 3 is outside -1..2"),
    # The pass that measured the boxes must be one this message's network has, and the frame's own.
    (DETECTIONS, {"measured_by": NetworkPass(input_width=544, input_height=320, exit_index=3)}, "were measured by a pass that ran exit 3"),
    (DETECTIONS, {"measured_by": NetworkPass(input_width=544, input_height=320, exit_index=0)}, "exit 1 of 3 were measured by a pass that ran exit 0"),
    (DETECTIONS, {"exit_index": -1, "measured_by": NetworkPass(input_width=544, input_height=320, exit_index=0)}, None),
    (DETECTIONS, {"measured_by": None}, None),
    (DECISION, {"stamps": (Stamp("late", 5_000), Stamp("early", 10))}, "earlier than the hop before it"),
    (DECISION, {"decided_by": "wa tch/dog"}, "decided_by"),
    (DECISION, {"target": Target(class_id=2, score=0.8, box=(1.0, 2.0, 3.0, 4.0))}, None),
    (HEARTBEAT, {"node": ""}, "node '' is not a name"),
    (HEARTBEAT, {"pid": 0}, "pid 0"),
    # Found by review (issue 11): they decoded, then crashed the recorder's and viewer's Foxglove stamps.
    (FRAME, {"media_ns": -1}, "media time -1"),
    (DETECTIONS, {"media_ns": 2**70}, "media time"),
    (HEARTBEAT, {"sent_ns": -5}, "heartbeat sent_ns -5"),
])
def test_well_formed_messages_with_impossible_fields_are_malformed(message, fields, match):
    """What crashed nodes under fault injection (issue 8): each is a MessageError at decode."""
    data = forged(message, **fields)
    if match is None:  # the control case: a legitimate change decodes
        decode(data)
        return
    with pytest.raises(MessageError, match=match):
        decode(data)


def test_a_target_whose_box_is_not_four_values_is_malformed():
    bad = Target(class_id=2, score=0.8, box=(1.0, 2.0, 3.0, 4.0))
    object.__setattr__(bad, "box", (1.0, 2.0, 3.0, 4.0, 5.0))
    with pytest.raises(MessageError, match="box has 5 values"):
        decode(forged(DECISION, target=bad))


def test_a_target_with_an_impossible_score_is_malformed():
    bad = Target(class_id=2, score=0.8, box=(1.0, 2.0, 3.0, 4.0))
    object.__setattr__(bad, "score", float("nan"))
    with pytest.raises(MessageError, match="score or box is not finite"):
        decode(forged(DECISION, target=bad))


def test_the_hops_after_a_full_message_still_have_room_for_their_stamps():
    """A frame that arrives with the most stamps it may carry can still become detections with the
    detector's stamps, then a decision: no node fails to encode what it was allowed to receive."""
    assert FrameHeader.MAX_STAMPS_IN + 16 <= Detections.MAX_STAMPS_IN
    assert Detections.MAX_STAMPS_IN + 4 <= Decision.MAX_STAMPS_IN <= 32
