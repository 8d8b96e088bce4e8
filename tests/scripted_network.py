"""A two-stage, two-exit network whose outputs and costs a test controls: for planning without timing."""

from pathlib import Path

import numpy as np

from perception.detection.manifest import ExitSpec, InputSpec, Manifest, StageSpec
from perception.detection.network import StagedNetwork
from perception.engines.base import Engine, Session

MS = 1_000_000
SIZE = (416, 416)


class ScriptedSession(Session):
    def __init__(self, name: str, inputs: tuple[str, ...], outputs: dict, calls: list) -> None:
        self.name, self.outputs, self.calls = name, outputs, calls
        self.input_names, self.output_names = inputs, tuple(outputs)

    def run(self, feeds):
        self.calls.append(self.name)
        return {k: v() if callable(v) else v for k, v in self.outputs.items()}


class ScriptedEngine(Engine):
    name = "scripted"

    def __init__(self) -> None:
        self.calls: list[str] = []
        raw = np.zeros((1, 3549, 85), np.float32)
        self.outputs = {"stage0": {"f0": np.zeros(1, np.float32)}, "stage1": {"f1": np.zeros(1, np.float32)},
                        "exit0": {"e0": raw}, "exit1": {"e1": raw}, "exit1.direct": {"e1": raw}}
        self.inputs = {"stage0": ("images",), "stage1": ("f0",), "exit0": ("f0",), "exit1": ("f1",),
                       "exit1.direct": ("images",)}

    @classmethod
    def unavailable_reason(cls, config):
        return None

    def open(self, onnx_path, part_name, dimensions=None):
        return ScriptedSession(part_name, self.inputs[part_name], self.outputs[part_name], self.calls)


def make_network(fit_aspect: bool = False, direct_ms: float | None = None) -> tuple[StagedNetwork, ScriptedEngine]:
    """Parts costing 2, 1, 8 and 3 ms at 416x416 (other input sizes: in proportion to pixels);
    with `direct_ms`, exit1 also has a direct graph costing that."""
    manifest = Manifest(
        name="scripted", input=InputSpec("images", 416, 416, fit_aspect=fit_aspect), num_classes=80, strides=[8, 16, 32],
        stages=[StageSpec("stage0", Path("s0"), ["images"], ["f0"]), StageSpec("stage1", Path("s1"), ["f0"], ["f1"])],
        exits=[ExitSpec("exit0", 0, Path("e0"), ["f0"], "e0"),
               ExitSpec("exit1", 1, Path("e1"), ["f1"], "e1", direct_file=None if direct_ms is None else Path("d1"))],
    )
    engine = ScriptedEngine()
    network = StagedNetwork(manifest, engine)
    costs = {"stage0": 2, "exit0": 1, "stage1": 8, "exit1": 3} | ({} if direct_ms is None else {"exit1.direct": direct_ms})
    for part, cost in costs.items():
        network.estimator.add(part, SIZE, cost * MS)
    return network, engine
