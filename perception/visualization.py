"""What Foxglove shows, made once for recordings and for the live view.

Besides the pipeline's own topics (perception.topics, JSON with their schemas), a recording and the
live view carry these view channels, derived from them:

    /camera/image        foxglove.CompressedImage  the frame (JPEG), stamped with its media time
    /camera/annotations  foxglove.ImageAnnotations boxes, class, score and track id over that image
    /latency             JSON (LATENCY_SCHEMA)      per decision: end to end and per stage, ms
    /log                 foxglove.Log               fail-safes, depth changes, nodes and topics down

Image and annotations carry the same timestamp (the frame's media time), so Foxglove's image panel
draws each frame's boxes over that frame. Needs the `tools` extra (foxglove-sdk).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from perception.codec import compact_json, json_schema, schema_name
from perception.latency import stage_durations_ns
from perception.detection.classes import class_name
from perception.messages import LEVEL_PROPAGATE, Control, Decision, Detections, SystemState, WatchdogStatus
from perception.topics import CONTROL, DECISIONS, DETECTIONS, TOPICS, WATCHDOG_STATUS, Topic

if TYPE_CHECKING:
    from perception.launch import LaunchFile

IMAGE_CHANNEL = "/camera/image"
ANNOTATIONS_CHANNEL = "/camera/annotations"
LATENCY_CHANNEL = "/latency"
LOG_CHANNEL = "/log"
CAMERA_FRAME = "camera"

LATENCY_SCHEMA = {
    "title": "perception.Latency", "type": "object",
    "properties": {
        "frame_id": {"type": "integer"},
        "end_to_end_ms": {"type": "number", "description": "capture to this decision's receipt"},
        "stages_ms": {"type": "object", "additionalProperties": {"type": "number"},
                      "description": "time since the hop before, per stage stamp"},
        "action": {"type": "string"},
        "failsafe": {"type": "boolean"},
    },
}

@dataclass(frozen=True)
class Channel:
    """One channel Foxglove gets of the pipeline, as both sinks register it: its schema (name,
    encoding, data) and how its messages are encoded."""

    name: str
    schema_name: str
    schema_encoding: str  # "jsonschema" | "protobuf" (data: a FileDescriptorSet)
    schema: bytes
    message_encoding: str  # "json" | "protobuf"


def pipeline_channels(image_format: str = "jpeg") -> list[Channel]:
    """Every channel of the pipeline's view, the one table the recording (MCAP) and the live view
    (WebSocket) both register: each topic of the topic table as JSON with its derived schema (the
    wire's bytes as they are), then the view channels. `image_format`: "jpeg" (CompressedImage) or
    "raw" (RawImage, bgr8)."""
    fg = foxglove_messages()

    def as_json(name: str, title: str, schema: dict) -> Channel:
        return Channel(name, title, "jsonschema", json.dumps(schema).encode(), "json")

    def as_protobuf(name: str, message_class: type) -> Channel:
        schema = message_class.get_schema()  # name, encoding "protobuf", data: a FileDescriptorSet
        return Channel(name, schema.name, schema.encoding, bytes(schema.data), schema.encoding)

    return [*(as_json(t.name, schema_name(t.message_type), json_schema(t.message_type)) for t in TOPICS),
            as_protobuf(IMAGE_CHANNEL, fg.CompressedImage if image_format == "jpeg" else fg.RawImage),
            as_protobuf(ANNOTATIONS_CHANNEL, fg.ImageAnnotations),
            as_json(LATENCY_CHANNEL, LATENCY_SCHEMA["title"], LATENCY_SCHEMA),
            as_protobuf(LOG_CHANNEL, fg.Log)]


def encoded(view) -> bytes:  # noqa: ANN001 - a JSON dict or a Foxglove SDK message
    """A view's bytes on its channel: compact JSON or the SDK message's protobuf."""
    return compact_json(view) if isinstance(view, dict) else view.encode()


def foxglove_messages():  # noqa: ANN201 - the foxglove.messages module
    """The Foxglove SDK's message classes; RuntimeError in one line when the SDK is not installed."""
    try:
        import foxglove.messages as messages
    except ImportError:
        raise RuntimeError("Foxglove channels need the foxglove-sdk package: pip install 'perception[tools]'") from None
    return messages


def timestamp(media_ns: int):  # noqa: ANN201 - foxglove.messages.Timestamp
    return foxglove_messages().Timestamp(sec=media_ns // 1_000_000_000, nsec=media_ns % 1_000_000_000)


def image_annotations(detections: Detections, class_names: Sequence[str], min_score: float = 0.0,
                      scale: float = 1.0):  # noqa: ANN201
    """Each box as a closed outline, labelled 'class score #track'; a propagated frame (no network
    ran) is drawn in a lighter colour. Boxes scoring below `min_score` are left out. `scale`: the
    image they are drawn over was resized by this factor (the live view sends a smaller image)."""
    fg = foxglove_messages()
    stamp = timestamp(detections.media_ns)
    propagated = detections.exit_index == LEVEL_PROPAGATE
    colour = fg.Color(r=0.3, g=0.8, b=1.0, a=1.0) if propagated else fg.Color(r=0.1, g=1.0, b=0.3, a=1.0)
    points, texts = [], []
    for box, score, class_id, track_id in zip(detections.boxes, detections.scores, detections.class_ids,
                                               detections.track_ids):
        if score < min_score:
            continue
        x1, y1, x2, y2 = (float(v) * scale for v in box)
        points.append(fg.PointsAnnotation(
            timestamp=stamp, type=fg.PointsAnnotationType.LineLoop, outline_color=colour, thickness=2.0,
            points=[fg.Point2(x=x1, y=y1), fg.Point2(x=x2, y=y1), fg.Point2(x=x2, y=y2), fg.Point2(x=x1, y=y2)]))
        name = class_name(class_names, class_id)
        label = f"{name} {score:.2f}" + (f" #{int(track_id)}" if track_id else "")
        texts.append(fg.TextAnnotation(timestamp=stamp, position=fg.Point2(x=x1, y=max(y1 - 4.0, 12.0)), text=label,
                                       font_size=14.0, text_color=colour,
                                       background_color=fg.Color(r=0.0, g=0.0, b=0.0, a=0.6)))
    return fg.ImageAnnotations(points=points, texts=texts)


def compressed_image(media_ns: int, jpeg: bytes):  # noqa: ANN201 - foxglove.messages.CompressedImage
    return foxglove_messages().CompressedImage(timestamp=timestamp(media_ns), frame_id=CAMERA_FRAME, data=jpeg, format="jpeg")


def raw_image(media_ns: int, pixels):  # noqa: ANN001, ANN201 - an HxWx3 BGR array; a foxglove.messages.RawImage
    height, width = pixels.shape[:2]
    return foxglove_messages().RawImage(timestamp=timestamp(media_ns), frame_id=CAMERA_FRAME, width=width, height=height,
                                        encoding="bgr8", step=width * 3, data=pixels.tobytes())


def latency_record(decision: Decision, received_ns: int) -> dict:
    """One /latency message (LATENCY_SCHEMA)."""
    return {
        "frame_id": decision.frame_id,
        "end_to_end_ms": round((received_ns - decision.capture_ns) / 1e6, 3),
        "stages_ms": {stage: round(ns / 1e6, 3) for stage, ns in stage_durations_ns(decision.capture_ns,
                                                                                     decision.stamps).items()},
        "action": decision.action.name,
        "failsafe": decision.failsafe,
    }


class EventLog:
    """/log entries for what a person watching must notice: every fail-safe, a depth ceiling that
    changes, the system state changing. Routine traffic (every PROCEED) is not logged."""

    def __init__(self) -> None:
        self._depth: int | None = None
        self._state: SystemState | None = None

    def from_decision(self, decision: Decision, log_ns: int):  # noqa: ANN201 - foxglove Log or None
        if not decision.failsafe:
            return None
        return self._log(log_ns, "ERROR", decision.decided_by,
                         f"fail-safe BRAKE, frame {decision.frame_id}: {decision.reason.name}: {decision.detail}")

    def from_control(self, control: Control, log_ns: int):  # noqa: ANN201
        changed = self._depth is not None and control.max_depth != self._depth
        self._depth = control.max_depth
        if not changed:
            return None
        return self._log(log_ns, "WARNING", "watchdog", f"depth ceiling -> exit {control.max_depth}: {control.reason}")

    def from_status(self, status: WatchdogStatus, log_ns: int):  # noqa: ANN201
        changed = status.state != self._state
        self._state = status.state
        if not changed:
            return None
        detail = f"; down: {', '.join(status.nodes_down)}" if status.nodes_down else ""
        level = {SystemState.NOMINAL: "INFO", SystemState.DEGRADED: "WARNING"}.get(status.state, "ERROR")
        return self._log(log_ns, level, "watchdog", f"system {status.state.name}{detail}")

    @staticmethod
    def _log(log_ns: int, level: str, name: str, text: str):  # noqa: ANN205
        fg = foxglove_messages()
        return fg.Log(timestamp=timestamp(log_ns), level=getattr(fg.LogLevel, level.capitalize()), message=text,
                      name=name)


class PipelineView:
    """What Foxglove shows of the pipeline beyond its topics, derived once for both sinks of it: the
    recording (perception.recording, MCAP) and the live view (nodes/viewer.py, WebSocket). For each
    message received on a topic, `derive` gives (channel, bytes): the boxes of a Detections on
    /camera/annotations (scaled to the image the sink shows), the latency of a Decision on /latency
    (JSON), and the events a person must notice on /log; the sink writes or serves them on the
    channels of `pipeline_channels`."""

    def __init__(self, class_names: Sequence[str], min_score: float = 0.0) -> None:
        self.class_names = class_names
        self.min_score = min_score
        self.events = EventLog()

    def derive(self, topic: Topic, message, received_ns: int, log_ns: int,  # noqa: ANN001 - a Message
               scale: float = 1.0):  # noqa: ANN201 - an iterator of (channel name, bytes)
        """Each view of `message` as (channel, its encoded bytes). `received_ns`: when the message
        arrived (a latency ends there); `log_ns`: the stamp of the /log entries (wall clock)."""
        for channel, view in self._views(topic, message, received_ns, log_ns, scale):
            yield channel, encoded(view)

    def _views(self, topic: Topic, message, received_ns: int, log_ns: int, scale: float):  # noqa: ANN001, ANN202
        if topic is DETECTIONS:
            yield ANNOTATIONS_CHANNEL, image_annotations(message, self.class_names, self.min_score, scale)
            return
        entry = None
        if topic is DECISIONS:
            yield LATENCY_CHANNEL, latency_record(message, received_ns)
            entry = self.events.from_decision(message, log_ns)
        elif topic is CONTROL:
            entry = self.events.from_control(message, log_ns)
        elif topic is WATCHDOG_STATUS:
            entry = self.events.from_status(message, log_ns)
        if entry is not None:
            yield LOG_CHANNEL, entry


# -- the live view in a launch ---------------------------------------------------------------

DEFAULT_PORT = 8765  # Foxglove's default for a WebSocket connection
VIEWER_NODE = "viewer"
VIEWER_NICE = 10  # below the pipeline: the view takes the CPU it leaves, never the other way round


def add_foxglove_argument(parser: argparse.ArgumentParser) -> None:
    """`--foxglove [PORT]`, the same for launch, replay and bench. Off unless given."""
    parser.add_argument("--foxglove", nargs="?", type=int, const=DEFAULT_PORT, default=None, metavar="PORT",
                        help=f"also serve a live view to Foxglove (WebSocket, default port {DEFAULT_PORT}, host and "
                             "image settings in configs/viewer.yaml); give it after the file argument")


def check_port_free(host: str, port: int) -> None:
    """Raise ConfigError (one line) if `host:port` cannot be listened on, so that `--foxglove` on a
    taken port fails before any process starts instead of leaving a launch without its view."""
    from perception.config import ConfigError

    if not 0 <= port <= 65535:
        raise ConfigError(f"--foxglove: port {port} is outside 0..65535")
    if port == 0:  # any free port: the viewer logs the one it got
        return
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is no conflict
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"--foxglove: cannot listen on {host}:{port}: {exc.strerror}") from None


def with_viewer(spec: "LaunchFile", port: int, source: str) -> "LaunchFile":
    """`spec` plus the live-view node (nodes/viewer.py, configs/viewer.yaml) serving on `port`, at low
    priority and never ending the launch; a node that waits for others before it starts (a replay's
    capture, its `ready` input) waits for the view too, so a replay's first frame is shown.
    ConfigError (one line) if the port is taken, a node is already called 'viewer' or
    configs/viewer.yaml is wrong. `source` names the spec in errors."""
    from perception import REPO
    from perception.config import ConfigError
    from perception.graph import every_output
    from perception.launch import LaunchNode, resolve_node_config

    if any(n.name == VIEWER_NODE for n in spec.nodes):
        raise ConfigError(f"{source}: already has a node called {VIEWER_NODE!r}; --foxglove would add a second")
    viewer = LaunchNode(name=VIEWER_NODE, node="viewer", config=REPO / "configs" / "viewer.yaml",
                        inputs=every_output(spec.nodes), params={"port": port}, restart="on-failure", nice=VIEWER_NICE)
    config = resolve_node_config(viewer, source)[1]
    check_port_free(config.host, config.port)
    nodes = [dataclasses.replace(n, inputs={**n.inputs, "ready": _and_viewer(n.inputs["ready"])}) if "ready" in n.inputs
             else n for n in spec.nodes]
    return dataclasses.replace(spec, nodes=[*nodes, viewer])


def _and_viewer(ready: str | list[str]) -> list[str]:
    return [*([ready] if isinstance(ready, str) else ready), f"{VIEWER_NODE}/heartbeat"]
