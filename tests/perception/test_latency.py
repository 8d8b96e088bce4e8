import pytest

from perception.latency import percentiles_ms, since_capture_ns, stage_durations_ns
from perception.messages import Control, Stamp


def test_stage_durations_add_up_to_the_age_of_the_last_stamp():
    stamps = (Stamp("capture", 1_000), Stamp("publish", 1_600), Stamp("detector", 9_600))
    durations = stage_durations_ns(1_000, stamps)
    assert durations == {"capture": 0, "publish": 600, "detector": 8_000}
    assert sum(durations.values()) == 9_600 - 1_000


def test_latency_since_capture():
    message = Control(frame_id=1, capture_ns=2_000_000, target="x", max_depth=0)
    assert since_capture_ns(message, at_ns=5_000_000) == 3_000_000


def test_percentiles_and_jitter():
    stats = percentiles_ms([i * 1_000_000 for i in range(1, 101)])
    assert stats["p50"] == pytest.approx(50.5)
    assert stats["max"] == 100.0 and stats["count"] == 100
    assert stats["jitter"] == pytest.approx(28.866, abs=1e-3)
    assert percentiles_ms([]) == {}
