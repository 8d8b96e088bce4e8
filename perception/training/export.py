"""Export each stage and exit of the PyTorch YOLOX-nano to its own ONNX file, with the manifest.

    perception export [--out perception/weights] [--exits perception/weights/yolox_nano_exits.npz]

Writes yolox_nano_stage{K}.onnx, yolox_nano_exit{K}.onnx and yolox_nano_exits.json, then checks
that chaining the exported parts through onnxruntime (intermediate features fed by name, nothing
recomputed) reproduces yolox_nano.onnx at full depth, records each part's onnxruntime latency
on this machine in the manifest's notes (informative only), and merges the parts of the deepest
exit into its direct graph (perception/training/direct.py).

    perception export --direct MANIFEST [--exit K]

only merges an existing manifest's parts into the direct graph of its exit K (default the deepest).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from perception.training.chain import ort_session, run_chain, verification_image

MANIFEST_NAME = "yolox_nano_exits.json"
CHAIN_TOLERANCE = 1e-3

# Which part runs after which stage, in manifest order (stages first, then exits shallow to deep).
STAGES = (("stage0", "yolox_nano_stage0.onnx"), ("stage1", "yolox_nano_stage1.onnx"))
EXITS = (("exit0", 0, "yolox_nano_exit0.onnx"), ("exit1", 1, "yolox_nano_exit1.onnx"))


def _example_tensors(model) -> dict[str, "torch.Tensor"]:  # noqa: F821 - torch is imported lazily
    """Every named tensor of a forward pass on a blank image, exits included: the shapes to export with."""
    import torch

    from perception.training.yolox_torch import INPUT_SIZE

    tensors = {"images": torch.full((1, 3, INPUT_SIZE, INPUT_SIZE), 114.0)}
    with torch.inference_mode():
        for name in [*(n for n, _ in STAGES), *(n for n, _, _ in EXITS)]:
            part = model.part(name)
            outputs = part(*(tensors[n] for n in part.input_names))
            tensors.update(zip(part.output_names, outputs if isinstance(outputs, tuple) else (outputs,)))
    return tensors


def named_dimensions(shape: tuple[int, ...]) -> dict[int, str]:
    """The free dimensions of a tensor of the example `shape`, named as Manifest.dimensions names them:
    the anchors of an exit's output [1, N, 85], the height and width of an image or feature map."""
    from perception.detection.manifest import ANCHORS, spatial_dimension_names
    from perception.training.yolox_torch import INPUT_SIZE

    if len(shape) == 3:
        return {1: ANCHORS}
    return dict(zip((2, 3), spatial_dimension_names(INPUT_SIZE // shape[2])))


def export_parts(model, out_dir: Path, opset: int = 13) -> None:
    """One ONNX file per stage and exit, inputs and outputs named as in the manifest, batch 1, spatial
    sizes free (named dimensions), so that a frame's input is padded only as far as it needs."""
    import torch

    tensors = _example_tensors(model)
    for name, file in [*STAGES, *[(n, f) for n, _, f in EXITS]]:
        part = model.part(name)
        args = tuple(tensors[n].clone() for n in part.input_names)
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated, but the torch.export one needs onnxscript, which
            # the `train` extra does not install, and this fixed-shape conv net is what it handles well.
            warnings.simplefilter("ignore", DeprecationWarning)
            names = [*part.input_names, *part.output_names]
            torch.onnx.export(part, args, str(out_dir / file), input_names=list(part.input_names),
                              output_names=list(part.output_names), opset_version=opset, dynamo=False,
                              do_constant_folding=True,
                              dynamic_axes={n: named_dimensions(tuple(tensors[n].shape)) for n in names})


def manifest_data(model, notes: dict[str, str]) -> dict:
    from perception.training.yolox_torch import INPUT_SIZE, NUM_CLASSES, STRIDES

    stages = [{"name": n, "file": f, "inputs": list(model.part(n).input_names), "outputs": list(model.part(n).output_names)}
              for n, f in STAGES]
    exits = [{"name": n, "after_stage": k, "file": f, "inputs": list(model.part(n).input_names),
              "output": model.part(n).output_names[0]} for n, k, f in EXITS]
    return {
        "name": "yolox_nano_exits",
        "description": ("YOLOX-nano split after dark4: exit0 is a small head on dark3/dark4 distilled from the full "
                        "network; exit1 is the original PAFPN + decoupled head (equal to yolox_nano.onnx)."),
        "input": {"name": "images", "width": INPUT_SIZE, "height": INPUT_SIZE, "pad_value": 114.0, "fit_aspect": True},
        "num_classes": NUM_CLASSES,
        "strides": list(STRIDES),
        "classes_file": "coco_classes.txt",
        "stages": stages,
        "exits": exits,
        "notes": notes,
    }


def full_depth_diff(manifest_path: Path, original: Path, images: np.ndarray) -> tuple[float, dict[str, float]]:
    """Max abs difference between the deepest exit of the chained parts and the original model."""
    from perception.detection.manifest import load_manifest

    manifest = load_manifest(manifest_path)
    tensors, latency_ms = run_chain(manifest_path, images)
    reference = ort_session(original, 1).run(None, {"images": images})[0]
    return float(np.abs(tensors[manifest.exits[-1].output] - reference).max()), latency_ms


def _notes(latency_ms: dict[str, float], full_ms: float) -> dict[str, str]:
    shallow = latency_ms["stage0"] + latency_ms["exit0"]
    deep = latency_ms["stage0"] + latency_ms["stage1"] + latency_ms["exit1"]
    notes = {f"{name}_ms": f"{ms:.2f}" for name, ms in latency_ms.items()}
    notes["measured_on"] = "onnxruntime CPU, 1 thread, median of 10 runs, at export time"
    notes["exit0_relative_cost"] = f"{shallow / deep:.2f}"
    notes["exit1_relative_cost"] = "1.00"
    notes["original_model_ms"] = f"{full_ms:.2f}"
    return notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="perception export", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: perception/weights)")
    parser.add_argument("--exits", type=Path, default=None, help="trained exit weights (default: perception/weights/yolox_nano_exits.npz)")
    parser.add_argument("--opset", type=int, default=13, help="ONNX opset of the exported graphs")
    parser.add_argument("--direct", type=Path, default=None, metavar="MANIFEST",
                        help="only merge this manifest's parts into one direct graph to an exit (needs onnx, not PyTorch)")
    parser.add_argument("--exit", type=int, default=-1, help="with --direct: the exit (default -1, the deepest)")
    args = parser.parse_args(argv)
    if args.direct is not None:
        return _direct_only(args.direct, args.exit)

    try:
        import torch  # noqa: F401
    except ImportError as exc:
        print(f"perception export: needs PyTorch (pip install 'perception[train]'): {exc}", file=sys.stderr)
        return 2
    from perception.detection.manifest import write_manifest
    from perception.training.yolox_torch import EXITS_NPZ, ORIGINAL_ONNX, WEIGHTS_DIR, build_model

    out_dir = args.out or WEIGHTS_DIR
    exits_path = args.exits or EXITS_NPZ
    if not exits_path.is_file():
        print(f"perception export: {exits_path} does not exist (run `perception train-exits` first)", file=sys.stderr)
        return 2
    out_dir.mkdir(parents=True, exist_ok=True)
    if out_dir.resolve() != WEIGHTS_DIR.resolve():  # the manifest names classes_file relative to its folder
        (out_dir / "coco_classes.txt").write_text((WEIGHTS_DIR / "coco_classes.txt").read_text())

    model = build_model(ORIGINAL_ONNX, exits_path)
    export_parts(model, out_dir, args.opset)
    manifest_path = out_dir / MANIFEST_NAME
    write_manifest(manifest_data(model, {}), manifest_path)  # first without timings: run_chain loads it

    images = verification_image()
    diff, latency_ms = full_depth_diff(manifest_path, ORIGINAL_ONNX, images)
    full_ms = run_chain_original(ORIGINAL_ONNX, images)
    write_manifest(manifest_data(model, _notes(latency_ms, full_ms)), manifest_path)
    for name, ms in latency_ms.items():
        print(f"{name:8s} {ms:6.2f} ms (onnxruntime, 1 thread)")
    print(f"original {full_ms:6.2f} ms; chained deepest exit vs original: max abs diff {diff:.2e}")
    print(f"wrote {manifest_path}")
    if diff > CHAIN_TOLERANCE:
        print(f"perception export: chained parts differ from the original by {diff:.2e} > {CHAIN_TOLERANCE}", file=sys.stderr)
        return 1
    return _direct_only(manifest_path, -1)


def _direct_only(manifest_path: Path, exit_index: int) -> int:
    from perception.config import ConfigError
    from perception.training.direct import write_direct

    try:
        import onnx  # noqa: F401
    except ImportError as exc:
        print(f"perception export: needs onnx (pip install 'perception[train]'): {exc}", file=sys.stderr)
        return 2
    try:
        out, diff = write_direct(manifest_path, exit_index)
    except ConfigError as exc:
        print(f"perception export: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out} (direct graph; against the parts: max abs diff {diff:.2e}) and named it in {manifest_path}")
    return 0


def run_chain_original(original: Path, images: np.ndarray) -> float:
    """Median latency in ms of the original one-piece model (same protocol as run_chain)."""
    session = ort_session(original, 1)
    times = []
    for _ in range(12):
        start = time.perf_counter()
        session.run(None, {"images": images})
        times.append(time.perf_counter() - start)
    return float(np.median(times[2:]) * 1e3)


if __name__ == "__main__":
    sys.exit(main())
