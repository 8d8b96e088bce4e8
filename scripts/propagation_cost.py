"""Time a propagated frame (no network) and its optical-flow part, in process, on real video.

Usage: python scripts/propagation_cost.py VIDEO [VIDEO ...] [--frames 200] [--passes 3] [--opencv-threads 1]
       [--detector KEY=VALUE ...]
The detector (configs/detector.yaml, its overrides) runs the `interval` policy (network every 4th
frame) so that most frames are propagated; prints per video the p50 of propagated frames, their flow part, and network frames,
and what preparing one frame for flow costs (timeit's fastest).
The frames are decoded first, then timed. With several passes (the same frames, a fresh detector,
identical work) each frame counts its fastest pass: a slow spell of a shared machine then lands on
one pass, not on the figure.
"""
import argparse
import itertools
import timeit

import cv2
import numpy as np

from perception import REPO
from perception.detection.builder import build_detector, load_settings
from perception.evaluation.detector_eval import read_frames
from perception.latency import now_ns
from perception.messages import LEVEL_PROPAGATE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("videos", nargs="+")
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--passes", type=int, default=3, help="each frame's fastest of this many passes")
    parser.add_argument("--opencv-threads", type=int, default=1,
                        help="OpenCV's threads (default 1: the detector node's, PERCEPTION_OPENCV_THREADS)")
    parser.add_argument("--detector", metavar="KEY=VALUE", action="append", default=[],
                        help="override a key of configs/detector.yaml, e.g. flow.max_width=192")
    args = parser.parse_args()
    # The interval policy on 2 threads unless the overrides, which come last, say otherwise.
    settings = load_settings(REPO / "configs" / "detector.yaml",
                             ["engine.threads=2", "policy.kind=interval", "policy.interval=4", *args.detector])
    cv2.setNumThreads(args.opencv_threads)
    for video in args.videos:
        # Decoded before any is timed: the decoder's own threads would otherwise share the cores
        # with the frames being measured (in the pipeline the capture node decodes, elsewhere).
        frames = [(frame, stamp) for index, frame, stamp in itertools.takewhile(lambda item: item[0] < args.frames,
                                                                               read_frames(video))]
        if not frames:
            raise SystemExit(f"{video}: no frame could be read")
        took = np.full((args.passes, len(frames)), np.inf)
        flow = np.full_like(took, np.inf)
        for number in range(args.passes):
            detector = build_detector(settings)
            levels = []
            for index, (frame, stamp) in enumerate(frames):
                start = now_ns()
                outcome = detector.process(frame, stamp)
                took[number, index] = (now_ns() - start) / 1e6
                flow[number, index] = outcome.flow_ns / 1e6
                levels.append(outcome.level)
        prepare = min(timeit.repeat(lambda: detector.flow.prepare(frames[0][0]), number=50, repeat=5)) / 50 * 1e3
        propagated = np.array(levels) == LEVEL_PROPAGATE
        fastest, fastest_flow = took.min(axis=0), flow.min(axis=0)
        shape = frames[0][0].shape
        print(f"{video} {shape[1]}x{shape[0]}: propagated frame p50 {np.median(fastest[propagated]):.2f} ms "
              f"(flow {np.median(fastest_flow[propagated]):.2f}) over {propagated.sum()}, network frame p50 "
              f"{np.median(fastest[~propagated]):.2f} ms over {(~propagated).sum()}, fastest of {args.passes} passes; "
              f"preparing a frame for flow (grey, downscaled) {prepare:.3f} ms, fastest of 5x50")


if __name__ == "__main__":
    main()
