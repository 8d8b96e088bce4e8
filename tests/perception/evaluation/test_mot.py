import numpy as np
import pytest

from perception.config import ConfigError
from perception.evaluation.mot import FrameDetections, load_mot_csv, mot_metrics, track_detections
from perception.tracking.tracker import TrackerConfig


def test_load_mot_csv_reads_frames_ids_boxes_and_flags(tmp_path):
    path = tmp_path / "gt.txt"
    path.write_text("1,9,499,158,31.03,75.17,1,-4.1,-7.3,0\n1,15,258,219,32.9,88.7,0,-11.3,-5.5,0\n\n3,9,497,158,31,75\n")
    assert load_mot_csv(path) == {1: [(9, 499.0, 158.0, 31.03, 75.17, 1), (15, 258.0, 219.0, 32.9, 88.7, 0)],
                                  3: [(9, 497.0, 158.0, 31.0, 75.0, 1)]}


@pytest.mark.parametrize("text, message", [
    ("1,2,3,4,5\n", "line 1: need frame, id, x, y, w, h"),
    ("1,2,3,4,5,6,1\n1,2,x,4,5,6,1\n", "line 2: not a number"),
    ("0,2,3,4,5,6,1\n", "line 1: frame must be an integer >= 1"),
    ("1,2,3,4,0,6,1\n", "line 1: width and height must be > 0"),
    ("1,2,nan,4,5,6,1\n", "line 1: values must be finite"),
])
def test_malformed_mot_csv_is_a_one_line_error_naming_file_and_line(tmp_path, text, message):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"bad.txt: {message}"):
        load_mot_csv(path)
    with pytest.raises(ConfigError, match="nope.txt: MOT csv not found"):
        load_mot_csv(tmp_path / "nope.txt")


def test_metrics_of_a_hand_made_case():
    # Two people over 4 frames (8 boxes). Hypothesis 1 follows person 1 (frame 1 shifted 1 px: IoU 90/110);
    # person 2 is hypothesis 2 in frames 1-2, hypothesis 3 in frame 3 (one ID switch) and missed in frame 4
    # (one FN); hypothesis 4 is a false positive in frame 1.
    gt = {f: [(1, 0, 0, 10, 10, 1), (2, 100, 0, 10, 10, 1)] for f in range(1, 5)}
    hyp = {1: [(1, 1, 0, 10, 10), (2, 100, 0, 10, 10), (4, 300, 0, 10, 10)],
           2: [(1, 0, 0, 10, 10), (2, 100, 0, 10, 10)],
           3: [(1, 0, 0, 10, 10), (3, 100, 0, 10, 10)],
           4: [(1, 0, 0, 10, 10)]}
    m = mot_metrics(gt, hyp)
    assert (m["fp"], m["fn"], m["id_switches"], m["num_frames"], m["num_objects"]) == (1, 1, 1, 4, 8)
    assert m["mota"] == pytest.approx(1 - 3 / 8)
    # IDF1: person 1 <-> hyp 1 (4 frames), person 2 <-> hyp 2 (2 frames): 2 * 6 / (8 truths + 8 hypotheses)
    assert m["idf1"] == pytest.approx(12 / 16)
    assert m["motp"] == pytest.approx((6 + 90 / 110) / 7)


def test_a_hypothesis_on_an_ignored_region_is_neither_false_nor_true_positive():
    gt = {1: [(1, 0, 0, 10, 10, 1), (2, 200, 0, 10, 10, 0)]}
    on_ignored = mot_metrics(gt, {1: [(7, 0, 0, 10, 10), (8, 200, 0, 10, 10)]})
    assert (on_ignored["fp"], on_ignored["fn"], on_ignored["num_ignored_hypotheses"]) == (0, 0, 1)
    assert on_ignored["mota"] == 1.0 and on_ignored["num_objects"] == 1
    elsewhere = mot_metrics(gt, {1: [(7, 0, 0, 10, 10), (8, 400, 0, 10, 10)]})
    assert (elsewhere["fp"], elsewhere["num_ignored_hypotheses"]) == (1, 0)
    # a counted person and an ignored one side by side: each hypothesis is matched to one box first, so the
    # one on the counted person still counts (removing everything that overlaps an ignored box would not)
    close = {1: [(1, 0, 0, 10, 10, 1), (2, 2, 0, 10, 10, 0)]}
    both = mot_metrics(close, {1: [(7, 0, 0, 10, 10), (8, 3, 0, 10, 10)]})
    assert (both["fp"], both["fn"], both["num_ignored_hypotheses"], both["mota"]) == (0, 0, 1, 1.0)


def test_tracked_synthetic_walkers_score_perfectly():
    frames, gt = [], {}
    for k in range(20):
        boxes = np.array([[100 + 5 * k, 100, 140 + 5 * k, 200], [500 - 5 * k, 300, 540 - 5 * k, 400]], np.float32)
        frames.append(FrameDetections(k * 100_000_000, boxes, np.array([0.9, 0.8]), np.zeros(2, np.int64)))
        gt[k + 1] = [(i + 1, float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1]), 1) for i, b in enumerate(boxes)]
    hypotheses, times_ms = track_detections(frames, (768, 576), TrackerConfig())
    m = mot_metrics(gt, hypotheses)
    assert (m["mota"], m["idf1"], m["id_switches"], m["motp"]) == (1.0, 1.0, 0, pytest.approx(1.0))
    assert len(times_ms) == 20
