"""Time a propagated frame (no network) and its optical-flow part, in process, on real video.

Usage: python scripts/propagation_cost.py VIDEO [VIDEO ...] [--frames 200]
The detector runs the `interval` policy (network every 4th frame) so that most frames are
propagated; prints per video the p50 of propagated frames, their flow part, and network frames.
The frames are decoded first, then timed.
"""
import argparse
import itertools

import numpy as np

from perception.detection.builder import DetectorSettings, build_detector
from perception.detection.policies import PolicyConfig
from perception.engines import EngineConfig
from perception.evaluation.detector_eval import read_frames
from perception.latency import now_ns
from perception.messages import LEVEL_PROPAGATE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("videos", nargs="+")
    parser.add_argument("--frames", type=int, default=200)
    args = parser.parse_args()
    for video in args.videos:
        detector = build_detector(DetectorSettings(engine=EngineConfig(threads=2),
                                                   policy=PolicyConfig(kind="interval", interval=4)))
        propagated, flow, network = [], [], []
        # Decoded before any is timed: the decoder's own threads would otherwise share the cores
        # with the frames being measured (in the pipeline the capture node decodes, elsewhere).
        frames = [(frame, stamp) for index, frame, stamp in itertools.takewhile(lambda item: item[0] < args.frames,
                                                                               read_frames(video))]
        if not frames:
            raise SystemExit(f"{video}: no frame could be read")
        shape = frames[0][0].shape
        for frame, stamp in frames:
            start = now_ns()
            outcome = detector.process(frame, stamp)
            took_ms = (now_ns() - start) / 1e6
            if outcome.level == LEVEL_PROPAGATE:
                propagated.append(took_ms)
                flow.append(outcome.flow_ns / 1e6)
            else:
                network.append(took_ms)
        print(f"{video} {shape[1]}x{shape[0]}: propagated frame p50 {np.median(propagated):.2f} ms "
              f"(flow {np.median(flow):.2f}) over {len(propagated)}, network frame p50 "
              f"{np.median(network):.2f} ms over {len(network)}")


if __name__ == "__main__":
    main()
