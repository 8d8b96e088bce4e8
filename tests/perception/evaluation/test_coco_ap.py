"""Our COCO AP must agree with pycocotools, the reference implementation."""

import contextlib
import io
import json

import numpy as np
import pytest

from perception.evaluation.coco_ap import Detection, GroundTruth, evaluate

pycocotools = pytest.importorskip("pycocotools.cocoeval", reason="pycocotools (dev extra) is the reference")
from pycocotools.coco import COCO  # noqa: E402


def reference_ap(truths, detections, tmp_path):
    images = sorted({g.image_id for g in truths} | {d.image_id for d in detections})
    categories = sorted({g.category_id for g in truths})
    gt = {"images": [{"id": i, "width": 1000, "height": 1000} for i in images],
          "categories": [{"id": c, "name": str(c)} for c in categories],
          "annotations": [{"id": n + 1, "image_id": g.image_id, "category_id": g.category_id, "bbox": list(g.box),
                           "area": g.box[2] * g.box[3], "iscrowd": int(g.crowd)} for n, g in enumerate(truths)]}
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(path))
        if not detections:
            return 0.0, 0.0
        results = coco.loadRes([{"image_id": d.image_id, "category_id": d.category_id, "bbox": list(d.box),
                                 "score": d.score} for d in detections])
        evaluator = pycocotools.COCOeval(coco, results, "bbox")
        evaluator.params.catIds = categories
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats[0], evaluator.stats[1]


def random_case(seed):
    rng = np.random.default_rng(seed)
    truths, detections = [], []
    for image in range(1, 8):
        for _ in range(rng.integers(0, 6)):
            x, y = rng.uniform(0, 800, 2)
            w, h = rng.uniform(20, 150, 2)
            category = int(rng.integers(1, 3))
            crowd = bool(rng.random() < 0.1)
            truths.append(GroundTruth(image, category, (x, y, w, h), crowd))
            for _ in range(rng.integers(0, 3)):  # near-duplicates and misses
                jitter = rng.normal(0, 12, 4)
                detections.append(Detection(image, category, (x + jitter[0], y + jitter[1], max(w + jitter[2], 2),
                                                             max(h + jitter[3], 2)), float(rng.random())))
        for _ in range(rng.integers(0, 4)):  # false positives
            detections.append(Detection(image, int(rng.integers(1, 3)), tuple(rng.uniform(0, 700, 2)) + (40.0, 40.0),
                                        float(rng.random())))
    return truths, detections


@pytest.mark.parametrize("seed", range(12))
def test_matches_pycocotools_on_random_scenes(seed, tmp_path):
    truths, detections = random_case(seed)
    ours = evaluate(truths, detections)
    ap, ap50 = reference_ap(truths, detections, tmp_path)
    assert ours.ap == pytest.approx(ap, abs=1e-9)
    assert ours.ap50 == pytest.approx(ap50, abs=1e-9)


def test_perfect_and_empty_detections():
    truths = [GroundTruth(1, 1, (10, 10, 50, 50)), GroundTruth(2, 1, (100, 100, 30, 60))]
    perfect = [Detection(g.image_id, g.category_id, g.box, 0.9) for g in truths]
    assert evaluate(truths, perfect).ap == pytest.approx(1.0)
    assert evaluate(truths, []).ap50 == 0.0


def test_a_box_on_a_crowd_region_is_neither_hit_nor_false_alarm():
    truths = [GroundTruth(1, 1, (10, 10, 50, 50)), GroundTruth(1, 1, (200, 200, 300, 300), crowd=True)]
    detections = [Detection(1, 1, (10, 10, 50, 50), 0.5), Detection(1, 1, (250, 250, 40, 40), 0.9)]
    assert evaluate(truths, detections).ap50 == pytest.approx(1.0)
