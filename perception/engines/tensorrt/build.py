"""`perception build-engine`: build (or find cached) the TensorRT engines of every part of a manifest.

The detector would build them on its first open too, but a build takes minutes and a frame has 100 ms:
run this on the vehicle, once per model, GPU and software version.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from perception.engines.base import EngineConfig, EngineUnavailable, TensorRTConfig
from perception.engines.tensorrt.cache import DEFAULT_CACHE_DIR
from perception.engines.tensorrt.runtime import TensorRTEngine


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = TensorRTConfig()
    parser = argparse.ArgumentParser(prog="perception build-engine",
                                     description="Build (or find cached) TensorRT engines for every part of a manifest.")
    parser.add_argument("manifest", type=Path, help="manifest JSON (e.g. yolox_nano.json)")
    parser.add_argument("--precision", choices=["fp32", "fp16", "int8"], default=defaults.precision,
                        help=f"engine precision (default {defaults.precision}; int8 needs --calibration-video)")
    parser.add_argument("--cache-dir", type=Path, default=None, help=f"default: {DEFAULT_CACHE_DIR}")
    parser.add_argument("--calibration-video", type=Path, default=None, help="int8: real frames to calibrate on")
    parser.add_argument("--calibration-frames", type=int, default=defaults.calibration_frames,
                        help="int8: frames of the calibration video to calibrate on")
    parser.add_argument("--workspace-mb", type=int, default=defaults.workspace_mb,
                        help="TensorRT's builder workspace, MiB")
    parser.add_argument("--device", type=int, default=defaults.device, help="CUDA device index")
    return parser.parse_args(argv)


def build_main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 all parts ready, 1 TensorRT unavailable or a build failed, 2 bad arguments/manifest."""
    from perception.config import ConfigError
    from perception.detection.builder import check_int8_calibration
    from perception.detection.manifest import load_manifest

    args = _parse_args(argv)
    try:
        manifest = load_manifest(args.manifest)
        settings = TensorRTConfig(precision=args.precision, workspace_mb=args.workspace_mb, cache_dir=args.cache_dir,
                                  calibration_video=args.calibration_video,
                                  calibration_frames=args.calibration_frames, device=args.device)
    except (ConfigError, ValueError, OSError) as exc:
        print(f"build-engine: {exc}", file=sys.stderr)
        return 2
    config = EngineConfig(kind="tensorrt", tensorrt=settings)
    try:
        check_int8_calibration(manifest, config, args.manifest)
    except ConfigError as exc:
        print(f"build-engine: {exc}", file=sys.stderr)
        return 2
    reason = TensorRTEngine.unavailable_reason(config)
    if reason is not None:
        print(f"build-engine: tensorrt unavailable: {reason}", file=sys.stderr)
        return 1
    engine = TensorRTEngine(config)
    parts = manifest.parts(direct=engine.runs_direct_graphs)  # as the detector opens them
    dimensions = manifest.dimensions(manifest.input.width, manifest.input.height)  # as the detector opens them
    print(f"{manifest.name}: {engine.describe()}, cache {engine.cache_dir}")
    for part_name, file in parts:
        try:
            engine_dir, _ = engine.prepare(Path(file), part_name, dimensions)
            before = set(engine_dir.glob("*.engine"))
            session = engine.open(Path(file), part_name, dimensions)  # the provider builds and caches the engine here
            session.close()
        except EngineUnavailable as exc:
            print(f"build-engine: {part_name}: {exc}", file=sys.stderr)
            return 1
        print(f"{part_name}: {'built' if set(engine_dir.glob('*.engine')) - before else 'reused'} {engine_dir}")
    return 0
