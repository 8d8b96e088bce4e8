"""The launch never runs a pipeline that cannot brake: every config is validated with its ranges, as
the node will read it, before any process starts; and when a critical node (the watchdog always)
fails for good, the launch brakes, stops every node and exits non-zero (issue 16, items 2, 3, 8, 9)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

from helpers import EDGES, REPO, pid_alive, run_python, wait_for
from perception.config import ConfigError, load_config
from perception.detection.classes import WEIGHTS_DIR, detections_class_names, read_class_names
from perception.launch import Launcher, build_graph, load_launch_file, node_config_text, node_module, resolve_launch, resolve_node_config
from perception.messages import Action, Reason
from perception.topics import DECISIONS
from perception.transport import Subscriber, resolve_endpoint


def write_pipeline(tmp_path: Path, watchdog_restart: str = "on-failure", extra: str = "") -> Path:
    """capture (synthetic, 10 Hz), detector (exit 0), decision and watchdog on ipc."""
    (tmp_path / "capture.yaml").write_text(
        "node: {heartbeat_period_ms: 50}\nsource: {kind: synthetic, width: 320, height: 240, fps: 10}\nrate: 10\n")
    (tmp_path / "detector.yaml").write_text(
        f"node: {{heartbeat_period_ms: 50}}\nmodel: {REPO / 'perception/weights/yolox_nano_exits.json'}\n"
        "engine: {threads: 1}\npolicy: {kind: fixed, exit: 0}\n")
    (tmp_path / "decision.yaml").write_text("node: {heartbeat_period_ms: 50}\n")
    (tmp_path / "watchdog.yaml").write_text(
        "node: {heartbeat_period_ms: 50}\nrules: {startup_grace_ms: 15000, topics: "
        "{/frames: {warn_rate_hz: 2, error_rate_hz: 1, timeout_s: 2}, /detections: {warn_rate_hz: 2, error_rate_hz: 1, "
        "timeout_s: 2}, /decisions: {warn_rate_hz: 2, error_rate_hz: 1, timeout_s: 2}}}\n")
    launch = tmp_path / "pipeline.yaml"
    launch.write_text(
        f"status_period_s: 60\nbudget_ms: 100\n{extra}nodes:\n"
        + "".join(f"  - {{name: {n}, node: {n}, config: {n}.yaml, restart_delay_s: 0.2, "
                  f"restart: {watchdog_restart if n == 'watchdog' else 'on-failure'}, {EDGES[n]}}}\n"
                  for n in ("capture", "detector", "decision", "watchdog")))
    return launch


def with_params(launch: Path, node: str, params: str) -> Path:
    text = launch.read_text().replace(f"{{name: {node}, ", f"{{name: {node}, params: {params}, ")
    launch.write_text(text)
    return launch


@pytest.mark.parametrize("node, params, message", [
    ("decision", "{rules.min_score: 1.5}", "rules.min_score: must be in [0, 1), got 1.5"),
    ("decision", "{rules.min_in_path: 1.5}", "rules.min_in_path: must be in (0, 1], got 1.5"),
    ("decision", "{rules.classes: []}", "rules.classes: needs at least 1 item(s), got 0"),
    ("decision", "{rules.brake_height: 5}", "rules.brake_height: must be in (0, 1], got 5.0"),
    ("decision", "{rules.classes: [person, motorcycle]}", "rules.classes: classes ['motorcycle'] are not classes"),
    ("detector", "{score_threshold: 1.5}", "score_threshold: must be in [0, 1), got 1.5"),
    ("watchdog", "{rules.heartbeat_timeout_ms: .inf}", "rules.heartbeat_timeout_ms: expected a finite number, got float inf"),
    ("watchdog", "{rules.failsafe_repeat_ms: .nan}", "rules.failsafe_repeat_ms: expected a finite number, got float nan"),
    ("capture", "{source.width: 20000}", "source.width: must be in [1, 16384], got 20000"),
])
def test_values_that_would_disable_braking_are_refused_before_anything_starts(tmp_path, node, params, message):
    """Each used to run (60 of 60 PROCEED on the approach drive, or a watchdog that exited 78 while the
    rest of the pipeline ran unwatched); now the launch refuses it with one line naming file and key."""
    launch = with_params(write_pipeline(tmp_path), node, params)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")) as caught:
        Launcher(load_launch_file(launch), str(launch))
    assert f"(node {node})" in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("key, message", [
    ("restart_delay_s: .nan", "restart_delay_s: expected a finite number, got float nan"),
    ("hang_timeout_s: .nan", "hang_timeout_s: expected a finite number, got float nan"),
    ("max_restarts: -1", "max_restarts: must be in [0, 1000000], got -1"),
])
def test_launch_keys_out_of_range_are_refused(tmp_path, key, message):
    launch = write_pipeline(tmp_path)
    lines = [line.replace("}\n", f", {key}}}\n") if "name: watchdog" in line else line  # the last key wins
             for line in launch.read_text().splitlines(True)]
    launch.write_text("".join(lines))
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_launch_file(launch)


@pytest.mark.parametrize("period", ["0", "-1", ".nan"])
def test_a_status_period_that_would_flood_the_terminal_is_refused(tmp_path, period):
    launch = write_pipeline(tmp_path)
    launch.write_text(launch.read_text().replace("status_period_s: 60", f"status_period_s: {period}"))
    with pytest.raises(ConfigError, match="status_period_s"):
        load_launch_file(launch)


def test_a_refused_watchdog_config_is_one_line_and_exit_78_with_no_node_started(tmp_path):
    """The issue's case: `.inf` passed the launcher, the watchdog refused its JSON copy and exited 78,
    and capture, detector and decision ran on with nobody enforcing the budget."""
    launch = with_params(write_pipeline(tmp_path), "watchdog", "{rules.heartbeat_timeout_ms: .inf}")
    started = time.monotonic()
    result = run_python(["-m", "perception.cli", "launch", str(launch)], timeout_s=60)
    assert result.returncode == 78 and "Traceback" not in result.stderr
    assert "rules.heartbeat_timeout_ms: expected a finite number" in result.stderr
    assert "started" not in result.stderr and time.monotonic() - started < 30


def test_the_budget_is_the_launch_files_alone_and_at_most_10_s(tmp_path):
    """Found in review: the watchdog's params could give it 1e9 ms while the launch promised 100. The
    budget is now one launch parameter, handed to every node: no node config or params may set it."""
    launch = with_params(write_pipeline(tmp_path), "watchdog", "{node.budget_ms: 1000}")
    with pytest.raises(ConfigError, match=r"nodes\[watchdog\]: node\.budget_ms comes from the launch file's budget_ms"):
        Launcher(load_launch_file(launch), str(launch))
    launch = write_pipeline(tmp_path)
    (tmp_path / "decision.yaml").write_text("node: {heartbeat_period_ms: 50, budget_ms: 5000}\n")
    with pytest.raises(ConfigError, match=r"nodes\[decision\]: node\.budget_ms comes from the launch file's budget_ms"):
        Launcher(load_launch_file(launch), str(launch))
    (tmp_path / "decision.yaml").write_text("node: {heartbeat_period_ms: 50}\n")
    spec = load_launch_file(launch)
    assert {n.name: resolve_node_config(n, "x", spec.budget_ms)[1].node.budget_ms for n in spec.nodes} == \
        {"capture": 100.0, "detector": 100.0, "decision": 100.0, "watchdog": 100.0}
    launch.write_text(launch.read_text().replace("budget_ms: 100", "budget_ms: 100000"))
    with pytest.raises(ConfigError, match=r"budget_ms: must be in \[1, 10000\]"):
        load_launch_file(launch)


def test_a_node_reading_from_a_node_the_launch_does_not_have_is_refused(tmp_path):
    """A typo in the watchdog's frames input once left it watching nothing (found in review)."""
    launch = write_pipeline(tmp_path)
    launch.write_text(launch.read_text().replace("inputs: {frames: capture/frames, detections", "inputs: {frames: captrue/frames, detections"))
    with pytest.raises(ConfigError) as error:
        Launcher(load_launch_file(launch), str(launch))
    assert str(error.value) == (f"{launch}: nodes[watchdog].inputs.frames: captrue/frames: 'captrue' is no node of this "
                                f"launch (its nodes: capture, decision, detector, watchdog)")


def test_a_launch_that_decides_without_a_watchdog_is_refused(tmp_path):
    launch = write_pipeline(tmp_path)
    launch.write_text("".join(line for line in launch.read_text().splitlines(True) if "name: watchdog" not in line))
    with pytest.raises(ConfigError, match="no watchdog node: the pipeline never runs unwatched"):
        load_launch_file(launch)


@pytest.mark.parametrize("launch_file", ["launch/replay.yaml", "launch/vehicle.yaml"])
def test_every_node_reads_back_exactly_the_config_the_launcher_validated(launch_file):
    spec = load_launch_file(REPO / launch_file)
    launcher = Launcher(spec, launch_file)
    try:
        validated = {node.name: typed for node, _, typed in resolve_launch(spec, launch_file, launcher.graph)}
        for managed in launcher.nodes:
            assert load_config(managed.config_path, node_module(managed.spec, launch_file).CONFIG) == validated[managed.spec.name]
    finally:
        shutil.rmtree(launcher.run_dir)


def test_a_config_that_would_not_read_back_as_validated_stops_the_launch():
    from nodes.decision import DecisionConfig

    typed = DecisionConfig(deterministic=True)
    assert "deterministic: true" in node_config_text({"deterministic": True}, typed, REPO, "decision.yaml")
    with pytest.raises(ConfigError, match="would not read back as validated"):
        node_config_text({"deterministic": False}, typed, REPO, "decision.yaml")


class DecisionLog:
    """Every decision published at the given endpoints, with its receipt time."""

    def __init__(self, endpoints: list[str]) -> None:
        self.context = zmq.Context()
        self.subscriber = Subscriber(self.context, endpoints, DECISIONS, latest=False)
        self.seen: list = []

    def poll(self) -> list:
        self.seen += [r.message for r in self.subscriber.receive()]
        return self.seen

    def close(self) -> None:
        self.subscriber.close()
        self.context.term()


def launch_in_background(launch: Path, status_file: Path, log: Path) -> subprocess.Popen:
    with log.open("w") as stderr:  # a file, not a pipe nobody reads while it runs: a full pipe would stall the nodes
        return subprocess.Popen([sys.executable, "-m", "perception.cli", "launch", str(launch), "--status-file",
                                 str(status_file)], cwd=REPO, stderr=stderr, text=True)


def read_status(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def test_a_watchdog_that_fails_for_good_is_braked_for_in_its_place_and_the_launch_ends(tmp_path):
    status_file = tmp_path / "status.json"
    stderr = tmp_path / "launch.log"
    launcher = launch_in_background(write_pipeline(tmp_path, watchdog_restart="never"), status_file, stderr)
    log = None
    try:
        status = wait_for(lambda: read_status(status_file), timeout_s=20)
        assert status, "the launcher did not start"
        run_dir = Path(status["run_dir"])
        log = DecisionLog([resolve_endpoint(name, run_dir) for name in ("decision", "watchdog")])
        assert wait_for(lambda: any(d.decided_by == "decision" for d in log.poll()), timeout_s=60)
        pids = {row["name"]: row["pid"] for row in read_status(status_file)["nodes"]}
        killed_at = time.monotonic()
        os.kill(pids["watchdog"], signal.SIGKILL)  # a crash it is not restarted from (restart: never)
        # Read as a consumer does, all along: what a publisher queued is gone with it once it has stopped.
        assert wait_for(lambda: log.poll() and launcher.poll() is not None, timeout_s=20, interval_s=0.01)
        code, stopped_in = launcher.returncode, time.monotonic() - killed_at
        brakes = [d for d in log.poll() if d.decided_by == "launcher"]
        assert brakes and all(b.action == Action.BRAKE and b.reason == Reason.NODE_DOWN for b in brakes)
        assert "critical node watchdog failed" in brakes[0].detail
        assert code == 1 and stopped_in < 10, (code, stopped_in)  # 0.5 s of braking, then a stop of at most 2 s
        assert "critical node watchdog failed (signal 9): braking and stopping the pipeline" in stderr.read_text()
        assert not any(pid_alive(pid) for pid in pids.values())
    finally:
        if log is not None:
            log.close()
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()


def test_a_critical_detector_that_cannot_load_its_model_ends_the_bench_at_once(tmp_path):
    """Issue 16 item 9: a broken model was reported in 1 s, then the bench went on for 130 s printing
    1,277 fail-safe lines. The detector is critical in launch/replay.yaml: the run ends now, non-zero."""
    weights = REPO / "perception/weights"
    models = tmp_path / "models"
    models.mkdir()
    for path in weights.glob("yolox_nano_*"):
        shutil.copy(path, models / path.name)
    (models / "yolox_nano_stage1.onnx").write_bytes(b"\x08\x07corrupt" * 100)
    manifest = json.loads((weights / "yolox_nano_exits.json").read_text())
    manifest["classes_file"] = str(weights / "coco_classes.txt")
    (models / "yolox_nano_exits.json").write_text(json.dumps(manifest))
    started = time.monotonic()
    result = run_python(["-m", "perception.cli", "bench", "--synthetic", "320x240", "--duration", "30",
                         "--detector", f"model={models / 'yolox_nano_exits.json'}"], timeout_s=120)
    assert result.returncode != 0 and time.monotonic() - started < 60
    assert "critical node detector failed (code 78)" in result.stderr
    assert result.stderr.count("fail-safe BRAKE") < 100


def custom_model(tmp_path: Path) -> tuple[Path, list[str]]:
    """The bundled network under a class list of its own: COCO's with person and car swapped (a model
    trained on another label order), named by a MODEL.names file beside it."""
    names = read_class_names(WEIGHTS_DIR / "coco_classes.txt")
    names[0], names[2] = names[2], names[0]
    model = tmp_path / "custom.onnx"
    shutil.copy(WEIGHTS_DIR / "yolox_nano.onnx", model)
    model.with_suffix(".names").write_text("\n".join(names) + "\n")
    return model, names


def test_every_node_reading_a_detector_labels_and_judges_its_ids_by_that_models_class_names(tmp_path):
    """The decision node read id 0 as COCO's "person" whatever the model said (found in review)."""
    model, names = custom_model(tmp_path)
    launch = with_params(write_pipeline(tmp_path), "detector", f"{{model: {model}}}")
    spec = load_launch_file(launch)
    resolved = {node.name: typed for node, _, typed in resolve_launch(spec, str(launch), build_graph(spec, str(launch)))}
    assert resolved["decision"].node.class_names == names
    assert resolved["capture"].node.class_names == []  # it reads no detections
    assert detections_class_names(resolved["decision"].node.class_names, None)[:3] == ["car", "bicycle", "person"]


def test_a_classes_file_naming_other_classes_than_the_model_is_refused_before_start(tmp_path):
    model, _ = custom_model(tmp_path)
    launch = with_params(write_pipeline(tmp_path), "detector", f"{{model: {model}}}")
    coco = WEIGHTS_DIR / "coco_classes.txt"
    with_params(launch, "decision", f"{{classes_file: {coco}}}")
    with pytest.raises(ConfigError) as error:
        Launcher(load_launch_file(launch), str(launch))
    assert str(error.value) == (
        f"{tmp_path / 'decision.yaml'} (node decision): classes_file: {coco} names 80 classes (person, bicycle, car, "
        "motorbike, ...), the detector's model 80 classes (car, bicycle, person, motorbike, ...); remove classes_file: "
        "the launcher takes the names from the model")
