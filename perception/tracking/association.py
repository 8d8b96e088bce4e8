"""Matching detections to tracks: pairwise IoU and optimal one-to-one assignment with a limit
(ByteTrack's matching.py, with scipy's linear_sum_assignment)."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes: (N, 4) x (M, 4) -> (N, M)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = w * h
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def assign(similarity: np.ndarray, min_similarity: float) -> list[tuple[int, int]]:
    """Optimal one-to-one matching of rows to columns keeping only pairs with similarity >= the minimum.

    As ByteTrack's lapjv with cost_limit: a pair is worth (similarity - minimum), an allowed pair
    never costs more than leaving both unmatched, so the total margin over the limit is maximised."""
    if similarity.size == 0:
        return []
    allowed = similarity >= min_similarity
    cost = np.where(allowed, min_similarity - similarity, 0.0)
    rows, cols = linear_sum_assignment(cost)
    return [(int(r), int(c)) for r, c in zip(rows, cols) if allowed[r, c]]
