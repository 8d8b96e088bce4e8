"""Per-node replay (perception.node_replay): one node body on its recorded inputs, in-process, its
outputs diffed field by field with the recording's, so a regression in one node is found and named
without running the others."""

import subprocess
import sys
from dataclasses import replace

import numpy as np

from perception import REPO
from perception.messages import Action, Decision, Detections, Reason, Target
from perception.node_replay import REPLAYS, field_differences, shift

APPROACH = REPO / "recordings/udacity_approach.mcap"


def replay_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "perception.cli", "replay", str(APPROACH), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_the_decision_node_replayed_on_the_approach_gives_what_the_recording_holds():
    result = replay_cli("--node", "decision")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1] == (
        f"node replay of decision on {APPROACH}: 60 recorded outputs compared; 0 difference(s)")


def test_a_changed_decision_rule_fails_with_the_fields_that_changed():
    result = replay_cli("--node", "decision", "--decision", "rules.brake_height=0.9")
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "frame 38: reason: OBJECT_IN_PATH -> CLOSING_FAST" in lines
    assert any(line.startswith("frame 38: target.ttc_s: ") for line in lines)
    assert lines[-1].endswith("difference(s)") and not lines[-1].endswith(" 0 difference(s)")


def test_a_node_it_cannot_replay_is_one_line():
    result = replay_cli("--node", "watchdog")
    assert result.returncode == 2 and result.stderr.strip() == "replay: --node watchdog: per-node replay knows decision"


def test_fields_are_compared_exactly_nested_and_arrays_within_their_tolerance():
    target = Target(class_id=2, score=0.9, box=(1.0, 2.0, 3.0, 4.0), ttc_s=2.5)
    a = Decision(frame_id=3, capture_ns=10, action=Action.SLOW, reason=Reason.CLOSING_FAST, decided_by="decision",
                 target=target)
    b = Decision(frame_id=3, capture_ns=10, action=Action.BRAKE, reason=Reason.CLOSING_FAST, decided_by="decision",
                 target=Target(class_id=2, score=0.9, box=(1.0, 2.0, 3.0, 4.0), ttc_s=1.5))
    assert list(field_differences(a, b, ("stamps",), {})) == ["action: SLOW -> BRAKE", "target.ttc_s: 2.5 -> 1.5"]
    boxes = np.array([[0, 0, 10, 10]], np.float32)
    d = Detections(frame_id=1, capture_ns=5, boxes=boxes, scores=np.array([0.5], np.float32),
                   class_ids=np.array([2], np.int32), image_width=64, image_height=64, exit_index=1, exit_count=2)
    moved = shift(Detections(frame_id=1, capture_ns=5, boxes=boxes + 1.5, scores=np.array([0.5], np.float32),
                             class_ids=np.array([2], np.int32), image_width=64, image_height=64, exit_index=1, exit_count=2), 0)
    assert list(field_differences(d, moved, ("stamps",), {"boxes": 2.0})) == []
    assert [line.split(":")[0] for line in field_differences(d, moved, ("stamps",), {"boxes": 1.0})] == ["boxes"]
    assert shift(a, 7).capture_ns == 17


def test_a_decisions_time_to_collision_may_differ_in_its_last_digits_between_machines_and_no_more():
    """The approach's recording was made with another numpy build, whose least-squares fit differed
    from this one's in the 13th digit: per-node replay failed on every closing frame."""
    tolerances = REPLAYS["decision"].tolerances
    recorded = Target(class_id=2, score=0.9, box=(1.0, 2.0, 3.0, 4.0), ttc_s=4.304460965800962)
    assert list(field_differences(recorded, replace(recorded, ttc_s=4.304460965800899), (), tolerances)) == []
    assert list(field_differences(recorded, replace(recorded, ttc_s=4.3045), (), tolerances)) == [
        "ttc_s: 4.304460966 -> 4.3045"]
