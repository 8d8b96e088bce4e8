"""One way to build and run a detector: manifest, engine, policy, tracker and warm-up, for the detector
node, the benchmarks, the single-process baseline and the evaluation alike."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from perception.config import (
    ConfigError, Length, Range, ScoreThreshold, check_ranges, command_line_overrides, from_mapping, load_yaml, set_key,
)
from perception.detection.classes import shown_classes
from perception.detection.frames import FrameDetector
from perception.detection.manifest import WEIGHTS_DIR, Manifest, load_manifest
from perception.detection.network import StagedNetwork
from perception.detection.onnx_model import looks_like_onnx
from perception.detection.policies import PolicyConfig, make_policy
from perception.detection.risk import RiskConfig, RiskRules
from perception.engines import EngineConfig, create_engine
from perception.tracking.flow import FlowConfig
from perception.tracking.tracker import TrackerConfig

log = logging.getLogger(__name__)

PIXEL_BUDGET_RANGE = (1024, 16_777_216)  # from 32x32 to 4096x4096
PixelBudget = Annotated[int, Range(*PIXEL_BUDGET_RANGE)]
FrameSide = Annotated[int, Range(2, 16384)]  # px


@dataclass(frozen=True)
class DetectorSettings:
    """What makes a detector: its model, input budget, engine, policy and what runs between network frames."""

    model: Path = WEIGHTS_DIR / "yolox_nano_exits.json"  # a manifest (perception/detection/manifest.py)
    pixels: PixelBudget | None = None  # input budget per frame (default: the manifest's)
    engine: EngineConfig = field(default_factory=EngineConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    risk: RiskConfig = field(default_factory=RiskConfig)  # what forces full size and depth (adaptive)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    score_threshold: ScoreThreshold = 0.3
    nms_threshold: Annotated[float, Range(0, 1, low_open=True)] = 0.45
    # The camera's frame sizes (width, height): warmed up at start at every input size the policy may
    # run them at, besides the square warm-up. On a GPU a first run at an input size costs ~100 ms
    # (Engine.compiles_per_input_size); a frame size not listed is warmed when its first frame comes.
    frame_sizes: Annotated[list[tuple[FrameSide, FrameSide]], Length(0, 8)] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_ranges(self)


def load_settings(path: Path, overrides: tuple[str, ...] | list[str] = ()) -> DetectorSettings:
    """The detector settings of a detector node's config file, with `KEY=VALUE` overrides: what the
    tools (evaluate, pareto, bench-detector) run. The file's other keys (node, frames_from, budgets)
    are the node's and are checked when it starts; an override must name a setting."""
    data = load_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    names = [f.name for f in dataclasses.fields(DetectorSettings)]
    for key, value in command_line_overrides(list(overrides), "--detector", DetectorSettings).items():
        if key.split(".")[0] not in names:
            raise ConfigError(f"--detector {key}={value}: {key.split('.')[0]} is not a detector setting "
                              f"(the settings: {', '.join(names)})")
        set_key(data, key, value, "--detector")
    return from_mapping(DetectorSettings, {k: v for k, v in data.items() if k in names}, source=str(path),
                        base_dir=Path(path).parent)


def check_settings(settings: DetectorSettings) -> Manifest:
    """The manifest and its model files exist and the risk rule names classes of the model; ConfigError
    otherwise. Loading the networks is left to build_detector."""
    manifest = load_manifest(settings.model)
    engine = settings.engine
    check_int8_calibration(manifest, engine, settings.model)
    if engine.kind == "torch" and (manifest.output_layout != "yolox" or looks_like_onnx(Path(settings.model))):
        raise ConfigError(f"{settings.model}: the torch engine runs the PyTorch rebuild of the bundled YOLOX-nano only; "
                          "run this model with engine.kind onnxruntime or tensorrt")
    exits = len(manifest.exits)
    if settings.policy.kind in ("fixed", "interval") and settings.policy.exit >= exits:  # the policies that read it
        raise ConfigError(f"policy.exit: {settings.policy.exit}, but {settings.model.name} has {exits} exit(s): "
                          f"0 to {exits - 1}, or -1 for the deepest")
    pixels = settings.pixels or manifest.input.default_pixels
    sized = manifest.input.fit_aspect and engine.kind != "tensorrt"  # else one input size: budgets change nothing
    for budget in make_policy(settings.policy, pixels).budgets() if sized else ():  # each one the policy may ask for
        if not PIXEL_BUDGET_RANGE[0] <= budget <= PIXEL_BUDGET_RANGE[1]:
            raise ConfigError(f"policy.sizes: {settings.policy.sizes} of {pixels} pixels asks for a {budget}-pixel "
                              f"input, outside [{PIXEL_BUDGET_RANGE[0]}, {PIXEL_BUDGET_RANGE[1]}] (32x32 to 4096x4096)")
    try:
        RiskRules.of(settings.risk, manifest.class_names())
    except ValueError as exc:
        names = manifest.class_names()
        raise ConfigError(f"risk.rules: {exc} {settings.model.name} (its classes: {shown_classes(names)}); set risk.rules.classes "
                          "and the decision node's rules.classes to classes it has") from None
    return manifest


def check_int8_calibration(manifest: Manifest, engine: EngineConfig, model: Path) -> None:
    """ConfigError when TensorRT would calibrate int8 on frames preprocessed otherwise than the model
    takes them: the calibration feeds YOLOX's preprocessing (BGR, 0-255)."""
    spec = manifest.input
    if (engine.kind in ("tensorrt", "auto") and engine.tensorrt.precision == "int8"
            and (spec.channels, spec.pixel_scale) != ("bgr", 1.0)):
        raise ConfigError(f"{model}: TensorRT int8 calibrates on frames preprocessed as YOLOX's (BGR, 0-255), "
                          f"not as this model takes them ({spec.channels.upper()}, x{spec.pixel_scale:.4g}); build it in fp16")


def build_network(settings: DetectorSettings, score_threshold: float | None = None,
                  nms_threshold: float | None = None, warm_up: tuple[int | None, ...] = (None,)) -> StagedNetwork:
    """The network alone (for tools that look at single frames), warmed up on each input budget in
    `warm_up` (None: the detector's). The thresholds override the settings' (an evaluation decodes
    far lower). ConfigError or EngineUnavailable, one line, when it cannot."""
    manifest = check_settings(settings)
    network = StagedNetwork(manifest, create_engine(settings.engine),
                            settings.score_threshold if score_threshold is None else score_threshold,
                            settings.nms_threshold if nms_threshold is None else nms_threshold)
    if settings.pixels is not None:
        network.pixels = settings.pixels
    network.warm([network.pixels if budget is None else budget for budget in warm_up], settings.frame_sizes)
    return network


def build_detector(settings: DetectorSettings, score_threshold: float | None = None, nms_threshold: float | None = None,
                   network: StagedNetwork | None = None) -> FrameDetector:
    """The detector `settings` describe, warmed up on every input budget its policy may use (first
    runs are slow, and policies plan with cost estimates). `network`: one already built from the same
    model and engine, to share (a sweep over policies); else one is built."""
    network = network or build_network(settings, score_threshold, nms_threshold, warm_up=())
    policy = make_policy(settings.policy, network.pixels)
    asked = [what for what, set_ in (("pixels", settings.pixels is not None),
                                     ("policy.sizes", settings.policy.sizes != PolicyConfig().sizes)) if set_]
    if not network.fits_aspect and asked:  # said of what was set only (the default sizes: every TensorRT start)
        spec = network.manifest.input
        log.warning("%s runs at one input size on this engine (%dx%d): %s change%s nothing", settings.model.name,
                    spec.width, spec.height, " and ".join(asked), "" if len(asked) > 1 else "s")
    risk = RiskRules.of(settings.risk, network.manifest.class_names()) if policy.assesses_risk else None
    network.warm(policy.budgets(), settings.frame_sizes)
    return FrameDetector(network, policy, settings.tracker, settings.flow, network.score_threshold,
                         settings.policy.margin_ms, risk)
