"""COCO-style average precision, written to agree with pycocotools (bbox, all areas, maxDets=100).

Kept dependency-free so the vehicle image can score itself; tests check it against pycocotools.
Matching per image and category is greedy by descending score at each IoU threshold; crowd
ground truth can be matched many times and is ignored; precision is made monotone and sampled at
101 recall points.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
MAX_DETECTIONS = 100


@dataclass(frozen=True)
class GroundTruth:
    image_id: int
    category_id: int
    box: tuple[float, float, float, float]  # x, y, w, h (COCO)
    crowd: bool = False


@dataclass(frozen=True)
class Detection:
    image_id: int
    category_id: int
    box: tuple[float, float, float, float]  # x, y, w, h (COCO)
    score: float


@dataclass(frozen=True)
class APResult:
    ap: float  # AP50:95
    ap50: float
    ap75: float
    per_category_ap50: dict[int, float]

    def as_dict(self) -> dict:
        return {"AP50:95": round(self.ap, 4), "AP50": round(self.ap50, 4), "AP75": round(self.ap75, 4)}


def box_iou(detections: np.ndarray, truths: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """IoU of xywh boxes [D,4] x [G,4]; for crowd truths, intersection over the detection's area."""
    d_x2, d_y2 = detections[:, 0] + detections[:, 2], detections[:, 1] + detections[:, 3]
    g_x2, g_y2 = truths[:, 0] + truths[:, 2], truths[:, 1] + truths[:, 3]
    w = (np.minimum(d_x2[:, None], g_x2[None]) - np.maximum(detections[:, None, 0], truths[None, :, 0])).clip(0)
    h = (np.minimum(d_y2[:, None], g_y2[None]) - np.maximum(detections[:, None, 1], truths[None, :, 1])).clip(0)
    inter = w * h
    d_area = (detections[:, 2] * detections[:, 3])[:, None]
    g_area = (truths[:, 2] * truths[:, 3])[None]
    union = np.where(crowd[None], d_area, d_area + g_area - inter)
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _match_image(dets: list[Detection], truths: list[GroundTruth]) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(scores [D], matched [T,D], ignored [T,D], number of non-ignored truths) for one image and category."""
    truths = sorted(truths, key=lambda g: g.crowd)  # crowd (ignored) truths last, as pycocotools does
    order = np.argsort([-d.score for d in dets], kind="mergesort")[:MAX_DETECTIONS]
    dets = [dets[i] for i in order]
    scores = np.array([d.score for d in dets], np.float64)
    matched = np.zeros((len(IOU_THRESHOLDS), len(dets)), bool)
    ignored = np.zeros((len(IOU_THRESHOLDS), len(dets)), bool)
    crowd = np.array([g.crowd for g in truths], bool)
    if dets and truths:
        ious = box_iou(np.array([d.box for d in dets], np.float64), np.array([g.box for g in truths], np.float64), crowd)
        for t, threshold in enumerate(IOU_THRESHOLDS):
            taken = np.zeros(len(truths), bool)
            for d in range(len(dets)):
                best, best_iou = -1, min(threshold, 1 - 1e-10)
                for g in range(len(truths)):
                    if taken[g] and not crowd[g]:
                        continue
                    if best > -1 and not crowd[best] and crowd[g]:
                        break  # a real match beats any crowd region after it
                    if ious[d, g] < best_iou:
                        continue
                    best, best_iou = g, ious[d, g]
                if best > -1:
                    matched[t, d] = True
                    ignored[t, d] = crowd[best]
                    taken[best] = True
    return scores, matched, ignored, int((~crowd).sum())


def _average_precision(scores: np.ndarray, matched: np.ndarray, ignored: np.ndarray, truth_count: int) -> np.ndarray:
    """AP at each IoU threshold from the merged detections of all images; -1 when nothing to score."""
    if truth_count == 0:
        return np.full(len(IOU_THRESHOLDS), -1.0)
    order = np.argsort(-scores, kind="mergesort")
    result = np.zeros(len(IOU_THRESHOLDS))
    for t in range(len(IOU_THRESHOLDS)):
        tp = np.cumsum(matched[t, order] & ~ignored[t, order])
        fp = np.cumsum(~matched[t, order] & ~ignored[t, order])
        recall = tp / truth_count
        precision = tp / (tp + fp + np.spacing(1))
        precision = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
        index = np.searchsorted(recall, RECALL_POINTS, side="left")
        sampled = np.zeros(len(RECALL_POINTS))
        valid = index < len(precision)
        sampled[valid] = precision[index[valid]]
        result[t] = sampled.mean()
    return result


def evaluate(truths: list[GroundTruth], detections: list[Detection]) -> APResult:
    """COCO bbox AP over the categories present in `truths`."""
    categories = sorted({g.category_id for g in truths})
    images = sorted({g.image_id for g in truths} | {d.image_id for d in detections})
    per_category = []
    for category in categories:
        parts = []
        for image in images:
            parts.append(_match_image([d for d in detections if d.image_id == image and d.category_id == category],
                                      [g for g in truths if g.image_id == image and g.category_id == category]))
        scores = np.concatenate([p[0] for p in parts])
        matched = np.concatenate([p[1] for p in parts], axis=1)
        ignored = np.concatenate([p[2] for p in parts], axis=1)
        per_category.append(_average_precision(scores, matched, ignored, sum(p[3] for p in parts)))
    table = np.array(per_category) if per_category else np.zeros((0, len(IOU_THRESHOLDS)))

    def mean(values: np.ndarray) -> float:
        values = values[values > -1]
        return float(values.mean()) if values.size else -1.0

    return APResult(
        ap=mean(table), ap50=mean(table[:, 0]), ap75=mean(table[:, 5]),
        per_category_ap50={c: float(row[0]) for c, row in zip(categories, table)},
    )
