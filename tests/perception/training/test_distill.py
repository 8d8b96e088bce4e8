"""Distillation of the early exit: a few steps on two frames must reduce the loss."""

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from perception.training import distill  # noqa: E402
from perception.training.yolox_torch import build_model  # noqa: E402

REPO = Path(__file__).resolve().parents[3]


def test_a_few_steps_reduce_the_distillation_loss():
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = build_model(exits_path=None)  # a fresh exit head, as training starts
    frames = distill.read_frames(REPO / "recordings" / "udacity_dashcam.mp4", limit=2)
    data = distill.precompute(model, distill.network_inputs(frames, mirror=False))
    assert len(data) == 2 and tuple(data.teacher.shape) == (2, 3549, 85)

    before = distill.evaluate_loss(model.exit0, data)["total"]
    history = distill.train_head(model.exit0, data, epochs=30, batch_size=2, lr=3e-3)
    after = distill.evaluate_loss(model.exit0, data)["total"]
    assert len(history) == 30
    assert np.isfinite(after) and after < 0.85 * before


def test_the_loss_is_smallest_when_the_exit_reproduces_the_teacher():
    teacher = torch.rand(1, 10, 85)
    teacher[..., :4] = torch.randn(1, 10, 4)
    logits = torch.cat((teacher[..., :4], torch.logit(teacher[..., 4:])), -1)
    best, parts = distill.distill_loss(logits, teacher)
    worse, _ = distill.distill_loss(logits + 0.5, teacher)
    assert parts["box"] == pytest.approx(0.0, abs=1e-6)
    assert float(worse) > float(best)


def test_the_evaluation_video_is_never_read_for_training():
    with pytest.raises(ValueError, match="evaluation set"):
        distill.read_frames(REPO / "recordings" / "pets09_vtest_eval.avi")


def test_holdout_keeps_mirrored_pairs_together():
    data = distill.DistillSet(torch.zeros(20, 1), torch.zeros(20, 1), torch.arange(20.0))
    train, held = distill.split_holdout(data, every=5)
    assert held.teacher.tolist() == [8.0, 9.0, 18.0, 19.0]
    assert len(train) == 16
