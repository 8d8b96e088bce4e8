"""Scoring a policy over a clip in order: every frame processed, annotated frames scored."""

from perception.detection.builder import DetectorSettings, build_detector, build_network
from perception.detection.policies import PolicyConfig
from perception.engines import EngineConfig
from perception.evaluation import DEV_ANNOTATIONS, DEV_MOT, DEV_VIDEO
from perception.evaluation.detector_eval import EVAL_NMS_THRESHOLD, EVAL_SCORE_THRESHOLD, load_annotations
from perception.evaluation.mot import load_mot_csv
from perception.evaluation.sequence_eval import evaluate_sequence

FRAMES = 30


def test_full_depth_and_a_keyframe_interval_are_scored_on_the_same_frames_with_tracking_metrics():
    settings = DetectorSettings(engine=EngineConfig(threads=1))
    network = build_network(settings, EVAL_SCORE_THRESHOLD, EVAL_NMS_THRESHOLD, warm_up=())
    annotations = load_annotations(DEV_ANNOTATIONS, network.manifest.class_names())
    truth = load_mot_csv(DEV_MOT)
    full = evaluate_sequence("full", build_detector(DetectorSettings(policy=PolicyConfig(kind="fixed")), network=network),
                             DEV_VIDEO, annotations, truth, max_frames=FRAMES)
    keyframes = DetectorSettings(policy=PolicyConfig(kind="interval", interval=3))
    sparse = evaluate_sequence("every 3", build_detector(keyframes, network=network), DEV_VIDEO, annotations, truth,
                               max_frames=FRAMES)
    assert len(full.detector_ms) == len(sparse.detector_ms) == FRAMES
    assert full.levels == {"exit1": FRAMES} and sparse.levels == {"exit1": 10, "propagate": 20}
    assert full.ap.ap50 > 0.75  # YOLOX-nano on PETS09 people: 0.82 on these 30 frames, 0.91 over frames 1-400
    assert abs(sparse.ap.ap50 - full.ap.ap50) < 0.1  # two frames in three moved by flow, not re-detected
    for report in (full, sparse):
        assert report.tracking["num_frames"] == FRAMES and 0.3 < report.tracking["mota"] <= 1.0
    assert full.as_dict()["frames"] == FRAMES and "ms_mean" in full.as_dict()


def test_a_deadline_makes_the_default_policy_choose_against_the_clock_and_counts_late_frames():
    """`perception evaluate --deadline-ms`: each frame due that long after it is handed over. One no
    frame can meet (1 us) leaves the default policy the first exit on every frame, each counted late;
    one every frame meets (10 s) is full depth at full size, as without a deadline."""
    settings = DetectorSettings(engine=EngineConfig(threads=1))
    network = build_network(settings, EVAL_SCORE_THRESHOLD, EVAL_NMS_THRESHOLD, warm_up=())
    annotations = load_annotations(DEV_ANNOTATIONS, network.manifest.class_names())
    frames = 6
    hopeless = evaluate_sequence("deadline", build_detector(settings, network=network), DEV_VIDEO, annotations,
                                 max_frames=frames, deadline_ms=0.001)
    ample = evaluate_sequence("deadline", build_detector(settings, network=network), DEV_VIDEO, annotations,
                              max_frames=frames, deadline_ms=10_000)
    assert hopeless.levels == {"exit0": frames} and hopeless.late == frames
    assert ample.levels == {"exit1": frames} and ample.late == 0 and len(ample.sizes) == 1
    assert ample.as_dict()["deadline_ms"] == 10_000 and hopeless.as_dict()["late"] == frames


def test_the_watchdogs_ceiling_can_be_held_on_every_frame():
    """`perception evaluate --ceiling 0`: what a pipeline running late gets from its watchdog."""
    settings = DetectorSettings(engine=EngineConfig(threads=1), policy=PolicyConfig(kind="fixed"))
    network = build_network(settings, EVAL_SCORE_THRESHOLD, EVAL_NMS_THRESHOLD, warm_up=())
    annotations = load_annotations(DEV_ANNOTATIONS, network.manifest.class_names())
    capped = evaluate_sequence("fixed", build_detector(settings, network=network), DEV_VIDEO, annotations,
                               max_frames=4, max_exit=0)
    assert capped.levels == {"exit0": 4}
