"""Every command the README and docs/*.md show: each uses only options its command has, and one of
every kind that finishes in seconds runs, shortened, and succeeds (`bench-handoff` was documented
while it crashed). Commands that need what CI has not (a camera, a GPU, a Ray cluster, torch, a
second host) or take minutes (the accuracy sweeps) are named in NOT_RUN with the reason."""

import contextlib
import io
import re
import subprocess
import sys

import pytest

from perception import REPO
from perception.cli import DELEGATED, build_parser, main

DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def documented_commands() -> list[tuple[str, str]]:
    """(document, command) for every `perception ...` line in a fenced block, continuations joined,
    comments cut."""
    found = []
    for document in DOCUMENTS:
        in_block, pending = False, ""
        for line in document.read_text().splitlines():
            if line.startswith("```"):
                in_block, pending = not in_block, ""
                continue
            if not in_block:
                continue
            text = f"{pending} {line.strip()}".strip() if pending else line.strip()
            if text.endswith("\\"):
                pending = text[:-1].strip()
                continue
            pending = ""
            text = text.split(" #")[0].strip()
            match = re.match(r"^(?:\.venv/bin/)?perception\s+(.*)$", text)
            if match:
                found.append((document.name, match.group(1)))
    return found


def options_of(command: str) -> set[str]:
    """The --options `perception COMMAND --help` lists."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        if command in DELEGATED:
            main([command, "--help"])
        else:
            build_parser().parse_args([command, "--help"])
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", out.getvalue()))


# Commands the documents keep as the history of figures measured with them, marked there as removed.
REMOVED = {"bench-temporal": "replaced by pareto in issue 17 (docs/BENCHMARKS.md, its history section)"}
ALL_COMMANDS = documented_commands()
COMMANDS = [(document, command) for document, command in ALL_COMMANDS if command.split()[0] not in REMOVED]
# Commands that cannot run here, by their first words, and why (each is still checked for its options).
NOT_RUN = {
    "record drive.mcap --camera": "needs a camera",
    "launch launch/vehicle.yaml": "needs a camera",
    "launch launch/two_hosts.yaml --host": "runs until stopped on two machines; tests/perception/test_launch.py runs it split on loopback",
    "fleet-replay": "needs the fleet extra (Ray); tests/perception/test_fleet.py runs it where Ray is installed",
    "train-exits": "needs the train extra (torch) and minutes",
    "export": "needs the train extra (torch)",
    "build-engine": "needs TensorRT",
    "evaluate": "minutes over 400 frames; tests/perception/evaluation run its parts",
    "pareto": "minutes: a sweep of configurations",
    "bench-detector": "minutes: passes over the evaluation clip",
    "soak launch/replay.yaml --minutes 30": "30 minutes (the benchmark); the 1-minute CI soak is test_soak.py",
    "soak LAUNCH": "LAUNCH is a placeholder",
    "record drive.mcap --source clip.mp4": "clip.mp4 is a placeholder; RUN runs record on the bundled video",
}


def test_the_documents_show_commands_of_every_kind_and_removed_ones_are_gone():
    kinds = {command.split()[0] for _, command in COMMANDS}
    assert len(COMMANDS) > 50 and {"replay", "record", "bench", "launch", "soak", "bench-handoff"} <= kinds
    commands = build_parser()._subparsers._group_actions[0].choices
    assert [name for name in REMOVED if name in commands] == []


def test_every_documented_command_uses_only_options_its_command_has():
    known: dict[str, set[str]] = {}
    wrong = []
    for document, command in COMMANDS:
        name = command.split()[0]
        if name not in known:
            known[name] = options_of(name)
        wrong += [f"{document}: perception {command}: {option}" for option in re.findall(r"(?<!\S)(--[a-z][a-z0-9-]*)", command)
                  if option not in known[name]]
    assert wrong == []


# The documented commands that finish in seconds, shortened (fewer frames, shorter durations);
# each must be in the documents as it stands before the shortening.
RUN = [
    ("replay recordings/udacity_approach.mcap --speed max --compare recordings/udacity_approach.reference.jsonl "
     "--decision rules.brake_height=0.9", {}, 1),  # the compare catches the changed rule: exit 1, as documented
    ("bench-handoff --frames 500 --json handoff.json", {"--frames 500": "--frames 30"}, 0),
    ("bench-watchdog --frames 300 --json wd.json", {"--frames 300": "--frames 20"}, 0),
    ("bench --synthetic 1280x720 --rate 30 --duration 20 --json syn720.json", {"--duration 20": "--duration 2"}, 0),
    ("soak launch/replay.yaml --minutes 1 --every 2.5 --seed 16 --failsafe-delay-ms 250", None, 0),  # test_soak.py runs it
    ("keys ~/.config/perception/keys --launch launch/two_hosts.yaml", {"~/.config/perception/keys": "{tmp}/keys"}, 0),
    ("launch launch/replay.yaml", {}, 0),
]


def test_every_command_run_here_or_not_is_documented():
    documented = {command for _, command in COMMANDS}
    assert [command for command, _, _ in RUN if command not in documented] == []
    for prefix in NOT_RUN:
        assert any(command.startswith(prefix) for command in documented), prefix


@pytest.mark.timeout(300)
@pytest.mark.parametrize("command, shorten, code", [r for r in RUN if r[1] is not None], ids=lambda v: str(v)[:40])
def test_a_documented_command_runs(command, shorten, code, tmp_path):
    for long, short in shorten.items():
        command = command.replace(long, short.format(tmp=tmp_path))
    args = [arg if not arg.endswith((".json",)) or "/" in arg else str(tmp_path / arg) for arg in command.split()]
    result = subprocess.run([sys.executable, "-m", "perception.cli", *args], cwd=REPO, capture_output=True, text=True,
                            timeout=280)
    assert result.returncode == code, (result.stdout + result.stderr)[-3000:]
    assert "Traceback" not in result.stderr
