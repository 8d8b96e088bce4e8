"""Shared fixtures: tiny media made on the fly, a private run directory."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from helpers import make_video


@pytest.fixture
def tiny_video(tmp_path: Path) -> Path:
    return make_video(tmp_path / "tiny.avi")


@pytest.fixture
def run_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    # ipc:// paths must stay under ~100 characters, so not inside pytest's long tmp paths.
    directory = Path(f"/tmp/pt-{os.getpid()}-{time.monotonic_ns() % 10**9}")
    directory.mkdir()
    monkeypatch.setenv("PERCEPTION_RUN_DIR", str(directory))
    monkeypatch.setenv("PERCEPTION_RUN_ID", directory.name)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


