"""Train the early-exit head(s) by distillation from the full YOLOX-nano on unlabelled frames.

    perception train-exits [--epochs 100] [--out perception/weights/yolox_nano_exits.npz]

The trunk and the original head are frozen and pretrained, so their outputs on the training
frames never change: the frozen features (dark3, dark4) and the teacher's output are computed
once, and every epoch only runs the small exit head forward and backward.

Training frames: recordings/pets09_vtest_train.avi and recordings/udacity_dashcam.mp4, each also
mirrored left-right. recordings/pets09_vtest_eval.avi is the evaluation set and is refused here.

Loss per anchor, normalised by the teacher's total objectness (YOLOX normalises by its number of
foreground anchors; soft targets make the sum of objectness the analogue):
  - objectness: BCE of the exit's logit against the teacher's sigmoided objectness, every anchor;
  - classes: BCE against the teacher's class scores, weighted by the teacher's objectness (class
    scores only matter where there is an object: the detection score is obj x class);
  - box: L1 on the raw (dx, dy, log w, log h), weighted by the teacher's objectness.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from perception import REPO

TRAIN_VIDEOS = (REPO / "recordings" / "pets09_vtest_train.avi", REPO / "recordings" / "udacity_dashcam.mp4")
EVAL_VIDEO_NAME = "pets09_vtest_eval.avi"
BOX_WEIGHT = 2.0  # the box L1 is a few tenths per anchor, the BCEs a few hundredths per class: balance them


@dataclass
class DistillSet:
    """Frozen inputs of the exit head and the teacher's outputs, one row per training image.
    float16 halves the memory (features and targets change by ~1e-3 relative, far below what is learnt)."""

    dark3: "torch.Tensor"  # noqa: F821 - torch is imported lazily so the CLI can report its absence
    dark4: "torch.Tensor"  # noqa: F821
    teacher: "torch.Tensor"  # noqa: F821  [N, 3549, 85] raw layout, obj/cls sigmoided

    def __len__(self) -> int:
        return len(self.teacher)

    def batch(self, index: "torch.Tensor"):  # noqa: F821
        return self.dark3[index].float(), self.dark4[index].float(), self.teacher[index].float()


def read_frames(video: Path, limit: int | None = None) -> list[np.ndarray]:
    """Every frame (BGR uint8) of a video, or the first `limit`."""
    import cv2

    if video.name == EVAL_VIDEO_NAME:
        raise ValueError(f"{video} is the evaluation set: never train on it")
    capture = cv2.VideoCapture(str(video))
    frames = []
    while limit is None or len(frames) < limit:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    if not frames:
        raise ValueError(f"{video}: no frames could be read")
    return frames


def network_inputs(frames: Iterable[np.ndarray], mirror: bool = True) -> np.ndarray:
    """Letterboxed [N,3,416,416] float32 inputs, each frame also mirrored left-right if `mirror`."""
    from perception.detection.yolox import letterbox

    images = []
    for frame in frames:
        for view in (frame, frame[:, ::-1]) if mirror else (frame,):
            images.append(letterbox(np.ascontiguousarray(view), 416, 416)[0][0])
    return np.stack(images)


def precompute(model, images: np.ndarray, batch_size: int = 8,
               progress: Callable[[int, int, str], None] | None = None) -> DistillSet:
    """Run the frozen trunk and the full network once per image."""
    import torch

    dark3, dark4, teacher = [], [], []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(images[start:start + batch_size])
            d3, d4 = model.stage0(x)
            dark3.append(d3.half())
            dark4.append(d4.half())
            teacher.append(model.exit1(*model.stage1(d3, d4)).half())
            if progress:
                progress(min(start + batch_size, len(images)), len(images), "teacher")
    return DistillSet(torch.cat(dark3), torch.cat(dark4), torch.cat(teacher))


def distill_loss(logits: "torch.Tensor", teacher: "torch.Tensor") -> tuple["torch.Tensor", dict[str, float]]:  # noqa: F821
    """The exit's [B,N,85] logits (box raw, obj/cls logits) against the teacher's [B,N,85] output."""
    import torch.nn.functional as F

    t_obj = teacher[..., 4]
    normaliser = t_obj.sum().clamp(min=1.0)
    obj = F.binary_cross_entropy_with_logits(logits[..., 4], t_obj, reduction="sum") / normaliser
    cls_bce = F.binary_cross_entropy_with_logits(logits[..., 5:], teacher[..., 5:], reduction="none").sum(-1)
    cls = (t_obj * cls_bce).sum() / normaliser
    box = (t_obj * (logits[..., :4] - teacher[..., :4]).abs().sum(-1)).sum() / normaliser
    total = obj + cls + BOX_WEIGHT * box
    return total, {"obj": obj.item(), "cls": cls.item(), "box": box.item(), "total": total.item()}


def evaluate_loss(head, data: DistillSet, batch_size: int = 16) -> dict[str, float]:
    """Mean loss terms over a set (batch-weighted), without gradients."""
    import torch

    sums: dict[str, float] = {}
    with torch.inference_mode():
        for start in range(0, len(data), batch_size):
            index = torch.arange(start, min(start + batch_size, len(data)))
            dark3, dark4, teacher = data.batch(index)
            _, parts = distill_loss(head.logits(dark3, dark4), teacher)
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + value * len(index)
    return {key: value / len(data) for key, value in sums.items()}


def train_head(head, data: DistillSet, epochs: int, batch_size: int = 16, lr: float = 3e-3, seed: int = 0,
               progress: Callable[[int, int, str], None] | None = None) -> list[dict[str, float]]:
    """AdamW with a cosine schedule over all steps; returns the mean training loss terms per epoch."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = math.ceil(len(data) / batch_size)
    total_steps = max(1, epochs * steps_per_epoch)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total_steps)))
    history = []
    head.train()
    for epoch in range(epochs):
        order = torch.randperm(len(data), generator=generator)
        sums: dict[str, float] = {}
        for step in range(steps_per_epoch):
            index = order[step * batch_size:(step + 1) * batch_size]
            dark3, dark4, teacher = data.batch(index)
            loss, parts = distill_loss(head.logits(dark3, dark4), teacher)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + value * len(index)
            if progress:
                progress(epoch * steps_per_epoch + step + 1, total_steps,
                         f"epoch {epoch + 1}/{epochs} loss {loss.item():.4f}")
        history.append({key: value / len(data) for key, value in sums.items()})
    head.eval()
    return history


def progress_bar(width: int = 30) -> Callable[[int, int, str], None]:
    """A one-line progress bar on stderr (redrawn in place; a newline when done)."""
    started = time.monotonic()

    def show(done: int, total: int, label: str) -> None:
        filled = int(width * done / max(total, 1))
        elapsed = time.monotonic() - started
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label} {elapsed:5.0f}s ")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show


def split_holdout(data: DistillSet, every: int) -> tuple[DistillSet, DistillSet | None]:
    """Every `every`-th image (and its mirror, which follows it) held out to report generalisation."""
    import torch

    if every <= 0:
        return data, None
    frame = torch.arange(len(data)) // 2  # images come in (frame, mirrored frame) pairs
    held = frame % every == every - 1
    pick = lambda mask: DistillSet(data.dark3[mask], data.dark4[mask], data.teacher[mask])  # noqa: E731
    return pick(~held), pick(held)


def _format(parts: dict[str, float]) -> str:
    return " ".join(f"{key} {value:.4f}" for key, value in parts.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="perception train-exits", description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=100, help="passes over the distillation frames")  # the shipped weights: ~4-8 min on 2 cores
    parser.add_argument("--batch-size", type=int, default=16, help="frames per step")
    parser.add_argument("--lr", type=float, default=3e-3, help="learning rate")
    parser.add_argument("--seed", type=int, default=0, help="torch seed")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--holdout-every", type=int, default=10,
                        help="hold out every N-th frame to report a validation loss (0: train on all)")
    parser.add_argument("--videos", type=Path, nargs="+", default=list(TRAIN_VIDEOS), help="training videos")
    parser.add_argument("--out", type=Path, default=None, help="exit weights .npz (default: perception/weights/yolox_nano_exits.npz)")
    args = parser.parse_args(argv)

    try:
        import torch
    except ImportError as exc:
        print(f"perception train-exits: needs PyTorch (pip install 'perception[train]'): {exc}", file=sys.stderr)
        return 2
    from perception.training.yolox_torch import EXITS_NPZ, build_model, save_exit_weights

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    started = time.monotonic()
    try:
        frames = [frame for video in args.videos for frame in read_frames(video)]
    except ValueError as exc:
        print(f"perception train-exits: {exc}", file=sys.stderr)
        return 2
    print(f"{len(frames)} frames from {', '.join(v.name for v in args.videos)}, mirrored: {2 * len(frames)} images",
          file=sys.stderr)

    model = build_model(exits_path=None)  # the exit head starts fresh, from the teacher's priors
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for parameter in model.exit0.parameters():
        parameter.requires_grad_(True)
    data = precompute(model, network_inputs(frames), progress=progress_bar())
    train, holdout = split_holdout(data, args.holdout_every)

    history = train_head(model.exit0, train, args.epochs, args.batch_size, args.lr, args.seed, progress_bar())
    out = args.out or EXITS_NPZ
    save_exit_weights(model, out)
    print(f"first epoch: {_format(history[0])}" if history else "no epochs", file=sys.stderr)
    print(f"last epoch:  {_format(history[-1])}" if history else "", file=sys.stderr)
    if holdout is not None and len(holdout):
        print(f"held out ({len(holdout)} images): {_format(evaluate_loss(model.exit0, holdout))}", file=sys.stderr)
    print(f"wrote {out} in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
