"""`perception launch`: one launch file, or one host's part of it, with the live view added when asked
(the CLI composes the view: the launch package itself knows nothing of it)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from perception.config import ConfigError
from perception.launch.spec import load_launch_file
from perception.launch.supervisor import Launcher
from perception.node import EXIT_CONFIG
from perception.visualization import with_viewer

log = logging.getLogger("launch")


def launch_main(path: Path, duration_s: float | None, status_file: Path | None,
                foxglove_port: int | None = None, host: str | None = None, keys: Path | None = None) -> int:
    """`perception launch`; `foxglove_port`: also run the live view (nodes/viewer.py) on that port;
    `host`: only that host's part of a launch file with hosts; `keys`: its keys folder on this machine."""
    try:
        spec = load_launch_file(Path(path))
        if foxglove_port is not None:
            spec = with_viewer(spec, foxglove_port, str(path))  # ConfigError too, if its port is taken
            if host in spec.hosts:  # the live view runs where it was asked for
                spec = dataclasses.replace(spec, nodes=[*spec.nodes[:-1], dataclasses.replace(spec.nodes[-1], host=host)])
        launcher = Launcher(spec, str(path), status_file, host=host, keys=keys)
        return launcher.run(duration_s)  # ConfigError too: its host's clock address may not be this host's
    except ConfigError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
