"""Time the first runs at each input size after the detector's warm-up: does this engine pay for a new size?

Usage: python scripts/first_run_cost.py [--engine onnxruntime|torch] [--device cuda] [--frame-sizes 1280x720 ...]
Builds the network as the detector node does, warms it up (square frames at the full and half pixel
budgets, plus any --frame-sizes), then runs full depth four times per frame size and budget and
prints each run's milliseconds. A first run far above the others is what Engine.compiles_per_input_size
declares (docs/BENCHMARKS.md, "GPU").
"""
import argparse
import time

import numpy as np

from perception.detection.builder import DetectorSettings, build_network
from perception.engines import EngineConfig

FRAME_SIZES = [(416, 416), (1280, 720), (640, 480), (1242, 375), (1920, 1080)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", default="onnxruntime", choices=("onnxruntime", "torch"))
    parser.add_argument("--device", default="cpu", help="the torch engine's device (cuda, cuda:1, cpu)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--frame-sizes", nargs="*", default=[], metavar="WxH", help="also warmed at start")
    args = parser.parse_args()
    warmed_sizes = [tuple(int(side) for side in size.split("x")) for size in args.frame_sizes]
    settings = DetectorSettings(engine=EngineConfig(kind=args.engine, torch_device=args.device, threads=args.threads),
                                frame_sizes=warmed_sizes)
    start = time.perf_counter()
    network = build_network(settings, warm_up=())
    budgets = (network.pixels, network.pixels // 2)  # the default policy's sizes: 1 and 1/2 of the budget
    network.warm(budgets, warmed_sizes)
    print(f"built and warmed up in {time.perf_counter() - start:.1f} s: inputs {sorted(network.warmed)}")
    deepest = network.exit_count - 1
    for width, height in FRAME_SIZES:
        frame = np.random.default_rng(0).integers(0, 255, (height, width, 3), np.uint8)
        for budget in budgets:
            times = []
            for _ in range(4):
                start = time.perf_counter()
                inference = network.begin(frame, budget)
                network.run_exit(inference, deepest)
                times.append((time.perf_counter() - start) * 1e3)
            print(f"{width}x{height} at {budget} px -> {'x'.join(map(str, inference.size))}: "
                  f"{' '.join(f'{ms:.1f}' for ms in times)} ms (first run, then three more)")
    network.close()


if __name__ == "__main__":
    main()
