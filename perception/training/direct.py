"""Merge a staged manifest's parts into one direct graph from the image to an exit (manifest.py).

    perception export --direct perception/weights/yolox_nano_exits.json [--exit -1]

The merged graph holds the parts' operators unchanged (onnx.compose, each part's internal names
prefixed so they cannot clash) and the parts' named dimensions, so it gives what the parts give,
run one after the other. Writes `<manifest stem>_<exit>_direct.onnx` beside the manifest, names it
as the exit's `direct_file`, and checks the merge against the parts on a real frame. Needs the
`onnx` package (the `train` extra), not PyTorch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from perception.config import ConfigError

DIRECT_TOLERANCE = 1e-4  # the same operators in the same order: any larger difference is a wrong merge


def merge_parts(files: list[Path], names: list[str], outputs: list[str], out: Path) -> None:
    """Chain the ONNX graphs `files` (named `names`, in running order) into one whose outputs are
    `outputs`; each graph's inputs are fed by the same-named outputs of any graph before it (a head may
    read a stage's features that a later stage read too). ValueError or onnx's errors when it cannot."""
    import onnx
    from onnx import compose

    merged = None
    for file, name in zip(files, names):
        part = compose.add_prefix(onnx.load(str(file)), f"{name}/", rename_inputs=False, rename_outputs=False)
        if merged is None:
            merged = part
            continue
        produced = [o.name for o in merged.graph.output]
        io_map = [(i.name, i.name) for i in part.graph.input if i.name in produced]
        # Every tensor produced so far stays an output until the end: a later part may read it too.
        merged = compose.merge_models(merged, part, io_map=io_map,
                                      outputs=produced + [o.name for o in part.graph.output])
    missing = [name for name in outputs if name not in {o.name for o in merged.graph.output}]
    if missing:
        raise ValueError(f"the parts produce no {missing}")
    kept = [o for o in merged.graph.output if o.name in outputs]
    del merged.graph.output[:]
    merged.graph.output.extend(kept)
    opsets = {o.domain: o.version for o in merged.opset_import}  # merge_models lists each part's again
    del merged.opset_import[:]
    merged.opset_import.extend(onnx.helper.make_opsetid(domain, version) for domain, version in opsets.items())
    merged.producer_name = "perception export --direct"
    onnx.checker.check_model(merged)
    onnx.save(merged, str(out))


def write_direct(manifest_path: Path, exit_index: int = -1) -> tuple[Path, float]:
    """Merge the parts exit `exit_index` runs into its direct graph, check it against the parts on a
    real frame (at the manifest's size and, where the graphs take any, at a 16:9 one), and only then
    name it in the manifest. Returns (the graph's path, the largest difference found). ConfigError,
    one line, when it cannot; the manifest is then as it was."""
    from perception.detection.manifest import load_manifest, write_manifest
    from perception.detection.onnx_model import looks_like_onnx

    manifest_path = Path(manifest_path)
    manifest = load_manifest(manifest_path)
    if looks_like_onnx(manifest_path) or manifest_path.suffix.lower() != ".json":
        raise ConfigError(f"{manifest_path}: --direct names the graph in a JSON manifest of parts; this is not one "
                          "(a plain ONNX detector is one graph already)")
    if not -len(manifest.exits) <= exit_index < len(manifest.exits):
        raise ConfigError(f"--exit {exit_index}: {manifest_path} has exits 0-{len(manifest.exits) - 1} (or -1, the deepest)")
    index = exit_index % len(manifest.exits)
    spec = manifest.exits[index]
    stages = manifest.stages[:spec.after_stage + 1]
    files = [s.file for s in stages] + ([spec.file] if spec.file is not None else [])
    names = [s.name for s in stages] + ([spec.name] if spec.file is not None else [])
    out = manifest_path.parent / f"{manifest_path.stem}_{spec.name}_direct.onnx"
    staged = out.with_name(f".{out.name}.new")  # the graph the manifest may name now stays until this one passes
    try:
        try:
            merge_parts(files, names, [spec.output], staged)
            diff = max(_difference(manifest_path, staged, manifest.input.name, spec.output, images)
                       for images in _check_images(manifest))
        except Exception as exc:  # onnx's and onnxruntime's own errors: named here, in one line
            raise ConfigError(f"{manifest_path}: cannot merge exit {spec.name}'s parts into one graph: "
                              f"{' '.join(str(exc).split())[:300]}") from None
        if diff > DIRECT_TOLERANCE:
            raise ConfigError(f"{out}: the merged graph differs from the parts by {diff:.2e} > {DIRECT_TOLERANCE}")
        data = json.loads(manifest_path.read_text())
        data["exits"][index]["direct_file"] = out.name
        os.replace(staged, out)
        write_manifest(data, manifest_path)  # checked (names, files) before it replaces the manifest
    finally:
        staged.unlink(missing_ok=True)
    return out, diff


def _check_images(manifest) -> list[np.ndarray]:  # noqa: ANN001 - a Manifest
    """A real frame letterboxed to the manifest's input and, where the graphs take any size, to 512x288."""
    from perception.detection.yolox import letterbox
    from perception.training.chain import verification_frame

    frame = verification_frame()
    spec = manifest.input
    sizes = [(spec.width, spec.height)] + ([(512, 288)] if spec.fit_aspect else [])
    return [letterbox(frame, w, h, spec.pad_value, input_size=(w, h), rgb=spec.channels == "rgb",
                      pixel_scale=spec.pixel_scale)[0] for w, h in sizes]


def _difference(manifest_path: Path, direct: Path, input_name: str, output: str, images: np.ndarray) -> float:
    from perception.training.chain import ort_session, run_chain

    tensors, _ = run_chain(manifest_path, images)
    return float(np.abs(ort_session(direct, 1).run(None, {input_name: images})[0] - tensors[output]).max())
