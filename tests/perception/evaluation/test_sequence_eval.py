"""Scoring a depth policy over a clip in order: every frame processed, annotated frames scored."""

from perception.benchmarks.temporal import DEV_ANNOTATIONS, DEV_MOT, DEV_VIDEO, open_eval_detector
from perception.detection.policy import PolicyConfig
from perception.detection.temporal import GateConfig, TemporalConfig
from perception.evaluation.detector_eval import load_annotations
from perception.evaluation.mot import load_mot_csv
from perception.evaluation.sequence_eval import evaluate_sequence

FRAMES = 30


def test_full_depth_and_a_keyframe_interval_are_scored_on_the_same_frames_with_tracking_metrics():
    detector = open_eval_detector("yolox_nano_exits.json", 1)
    annotations = load_annotations(DEV_ANNOTATIONS, detector.manifest.class_names())
    truth = load_mot_csv(DEV_MOT)
    full = evaluate_sequence("full", detector, PolicyConfig(kind="fixed"), TemporalConfig(), DEV_VIDEO, annotations,
                             truth, max_frames=FRAMES)
    keyframes = TemporalConfig(gate=GateConfig(mode="interval", interval=3, risk=False))
    sparse = evaluate_sequence("every 3", detector, PolicyConfig(kind="adaptive"), keyframes, DEV_VIDEO, annotations,
                               truth, max_frames=FRAMES)
    assert len(full.detector_ms) == len(sparse.detector_ms) == FRAMES
    assert full.levels == {"exit1": FRAMES} and sparse.levels == {"exit1": 10, "propagate": 20}
    assert full.ap.ap50 > 0.75  # YOLOX-nano on PETS09 people: 0.82 on these 30 frames, 0.91 over frames 1-400
    assert abs(sparse.ap.ap50 - full.ap.ap50) < 0.1  # two frames in three moved by flow, not re-detected
    for report in (full, sparse):
        assert report.tracking["num_frames"] == FRAMES and 0.3 < report.tracking["mota"] <= 1.0
    assert full.as_dict()["frames"] == FRAMES and "ms_mean" in full.as_dict()
