"""The shipped Foxglove layout (docs/foxglove/perception_layout.json) shows channels the recordings
and the live view really have, with fields their schemas declare, and places every panel it configures."""

import json
import re

from perception import REPO
from perception.recording_reader import RecordingReader
from perception.visualization import LATENCY_SCHEMA

LAYOUT = REPO / "docs" / "foxglove" / "perception_layout.json"


def panels(tree) -> list[str]:  # noqa: ANN001 - a panel id or a split
    return [tree] if isinstance(tree, str) else panels(tree["first"]) + panels(tree["second"])


def test_the_layout_names_channels_and_fields_a_recording_has_and_places_every_panel():
    layout = json.loads(LAYOUT.read_text())
    assert sorted(panels(layout["layout"])) == sorted(layout["configById"])
    text = json.dumps(layout["configById"])
    named = set(re.findall(r'"(/[a-z_/]+)', text))
    paths = set(re.findall(r'"(/[a-z_/]+)\.([a-z_]+)"', text))
    channels = {channel for channel, _, _ in RecordingReader(REPO / "recordings" / "udacity_approach.mcap").records()}
    assert named - {channel for channel, _ in paths} <= channels and {"/camera/image", "/camera/annotations", "/log"} <= named
    for channel, field in paths:
        assert channel == "/latency" and field in LATENCY_SCHEMA["properties"], (channel, field)
