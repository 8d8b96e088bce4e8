"""Time full depth run as one direct graph against the same network part by part, in process, on real video.

Usage: python scripts/direct_graph_cost.py VIDEO [VIDEO ...] [--frames 150] [--repeat 1] [--threads 2] [--pixels N]
Each frame is preprocessed once per way and run both ways, the order alternating from frame to
frame (a slow spell of a shared machine lands on both alike); prints per video the input size, the
p50 and mean of each way (preprocessing excluded: it is the same) and their ratio, and checks that
both ways give the same raw output. The frames are decoded before any is timed.
"""
import argparse
import itertools

import numpy as np

from perception.detection.builder import DetectorSettings, build_network
from perception.engines import EngineConfig
from perception.evaluation.detector_eval import read_frames
from perception.latency import now_ns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("videos", nargs="+")
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--repeat", type=int, default=1, help="run the clip's frames this many times (a short clip)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads (configs/detector.yaml: 2)")
    parser.add_argument("--pixels", type=int, default=None, help="input pixel budget (default: the manifest's)")
    args = parser.parse_args()
    network = build_network(DetectorSettings(engine=EngineConfig(threads=args.threads), pixels=args.pixels))
    deepest = network.exit_count - 1
    if not network.has_direct(deepest):
        raise SystemExit("the bundled manifest names no direct graph for its deepest exit")
    for video in args.videos:
        frames = [frame for index, frame, _ in itertools.takewhile(lambda item: item[0] < args.frames, read_frames(video))]
        if not frames:
            raise SystemExit(f"{video}: no frame could be read")
        frames = frames * args.repeat
        took = {"parts": [], "direct": []}
        for index, frame in enumerate(frames):
            ways = ("parts", "direct") if index % 2 else ("direct", "parts")
            raws = {}
            for way in ways:
                inference = network.begin(frame)
                start = now_ns()
                if way == "parts":
                    network.run_stages(inference, network.manifest.exits[deepest].after_stage)
                raws[way] = network.run_exit(inference, deepest)
                took[way].append((now_ns() - start) / 1e6)
            if not np.array_equal(raws["parts"], raws["direct"]):
                raise SystemExit(f"{video}: frame {index}: the direct graph's output differs from the parts'")
        size = "x".join(map(str, inference.size))
        parts, direct = (np.array(took[w][5:]) for w in ("parts", "direct"))  # the first frames warm caches up
        print(f"{video}: {len(frames)} frames at {size}, outputs identical; part by part p50 {np.median(parts):.2f} "
              f"mean {parts.mean():.2f} ms, direct p50 {np.median(direct):.2f} mean {direct.mean():.2f} ms, "
              f"ratio of p50s {np.median(direct) / np.median(parts):.3f}, of means {direct.mean() / parts.mean():.3f}")
    network.close()


if __name__ == "__main__":
    main()
