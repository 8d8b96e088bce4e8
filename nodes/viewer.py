"""Viewer node: the live view, the pipeline served to Foxglove over WebSocket (foxglove-sdk).

Streams every topic of the topic table (perception.topics) as a JSON channel of the same name with
its derived schema, carrying the exact wire bytes, and the view channels of perception.visualization:
/camera/image (JPEG, downscaled to `image_max_width`, at most `image_rate_hz`, and encoded only while
a client subscribes to it), /camera/annotations (the boxes, scaled to that image), /latency and /log.

Never on the hot path: frames are read latest-only, so a viewer that falls behind skips frames and
never holds a ring slot; the other topics queue behind ZeroMQ's high-water mark, where publishers
drop rather than wait; the server drops the oldest queued message for a slow client; the launcher
runs this node at nice 10 (perception.visualization.with_viewer). It publishes nothing but its
heartbeat, and the watchdog does not wait for it: a viewer that dies costs the view, not the vehicle.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import cv2
import numpy as np

from perception.config import ConfigError, Fraction, Range, check_ranges
from perception.detection.classes import detections_class_names
from perception.latency import now_ns, wall_clock_offset_ns
from perception.log_rate import limit_log_rate
from perception.node import FatalInputError, Node, NodeSettings, run_node
from perception.shm_ring import FrameOverwritten, RingError
from perception.timing import Periodic
from perception.graph import ANY_INPUTS
from perception.topics import DETECTIONS, FRAMES, Topic
from perception.transport import FrameReceiver, Received, Subscriber
from perception.visualization import (ANNOTATIONS_CHANNEL, DEFAULT_PORT, IMAGE_CHANNEL, PipelineView, compressed_image,
                                      pipeline_channels)

log = logging.getLogger("viewer")


@dataclass(frozen=True)
class ViewerConfig:
    node: NodeSettings = field(default_factory=NodeSettings)
    host: str = "127.0.0.1"  # 0.0.0.0 serves other machines too: the server has no authentication
    port: Annotated[int, Range(0, 65535)] = DEFAULT_PORT  # 0: any free port (logged)
    image_max_width: Annotated[int, Range(16, 16384)] = 640  # pixels; larger frames are downscaled before JPEG encoding
    image_rate_hz: Annotated[float, Range(0, 100, low_open=True)] = 10.0  # at most this many images a second; annotations follow every frame
    jpeg_quality: Annotated[int, Range(1, 100)] = 75
    classes_file: Path | None = None  # names of the detector's class ids; default: its model's (node.class_names)
    min_score: Fraction = 0.0  # boxes scoring lower are not drawn

    def __post_init__(self) -> None:
        check_ranges(self)


CONFIG = ViewerConfig
INPUTS = ANY_INPUTS  # whatever its launch entry connects (`--foxglove`: every output of the launch)
OUTPUTS = ()


def _foxglove():  # noqa: ANN202 - the foxglove module
    try:
        import foxglove
    except ImportError:
        raise FatalInputError("the live view needs the foxglove-sdk package: pip install 'perception[tools]'") from None
    return foxglove


class Streams:
    """The server's channels (perception.visualization's one table, as the recording's), and what
    goes on each for one received message."""

    def __init__(self, foxglove, context, config: ViewerConfig, class_names: list[str]) -> None:  # noqa: ANN001
        self.config = config
        self.class_names = class_names
        self.channels = {
            c.name: foxglove.Channel(c.name, schema=foxglove.Schema(name=c.schema_name, encoding=c.schema_encoding,
                                                                     data=c.schema),
                                     message_encoding=c.message_encoding, context=context)
            for c in pipeline_channels("jpeg")}
        self.image, self.annotations = self.channels[IMAGE_CHANNEL], self.channels[ANNOTATIONS_CHANNEL]
        self.view = PipelineView(class_names, config.min_score)  # the same views the recording writes
        self.image_due = Periodic(1.0 / config.image_rate_hz, first_now=True)
        self.wall_offset_ns = wall_clock_offset_ns()  # the log's entries in Unix time, as a recording's

    def scale(self, width: int) -> float:
        return min(1.0, self.config.image_max_width / width)

    def message(self, topic: Topic, received: Received, received_ns: int) -> None:
        channel = self.channels[topic.name]
        if channel.has_sinks():  # the wire bytes as they are: nothing re-encoded
            channel.log(bytes(received.parts[1].buffer))
        message = received.message
        if topic is DETECTIONS and not self.annotations.has_sinks():
            return  # boxes nobody watches: not drawn (every other message feeds the event log's state)
        scale = self.scale(message.image_width) if topic is DETECTIONS else 1.0
        # A person reads the log against the wall clock: its entries in Unix time, converted as a recording's are.
        for name, data in self.view.derive(topic, message, received_ns, received_ns + self.wall_offset_ns, scale):
            if self.channels[name].has_sinks():
                self.channels[name].log(data)

    def frame(self, node: Node, receiver: FrameReceiver, received: Received) -> None:
        """The newest frame as a small JPEG, if a client watches and one is due."""
        if not self.image.has_sinks() or not self.image_due.due():
            return
        header = received.message
        try:
            jpeg = encode_jpeg(receiver, received, self.scale(header.width), self.config.jpeg_quality)
        except (FrameOverwritten, RingError):  # fell behind the ring: this frame is gone, the next one will do
            node.count("image.lost")
            return
        self.image.log(compressed_image(header.media_ns, jpeg).encode())
        node.count("image.sent")


def encode_jpeg(receiver: FrameReceiver, received: Received, scale: float, quality: int) -> bytes:
    """The frame, resized by `scale`, as JPEG. Resizing reads the ring slot once into a private
    image; the slot is checked after that read, so a frame overwritten meanwhile raises
    FrameOverwritten instead of being sent torn."""
    view = receiver.view(received)
    pixels = view.array
    height, width = pixels.shape[:2]
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        small = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
    else:
        small = np.array(pixels)
    if not view.still_valid():
        raise FrameOverwritten(f"frame {received.message.frame_id} was overwritten while read")
    if small.ndim == 3 and small.shape[2] == 4:
        small = cv2.cvtColor(small, cv2.COLOR_BGRA2BGR)
    ok, encoded = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RingError(f"frame {received.message.frame_id}: JPEG encoding failed")
    return encoded.tobytes()


def start_server(foxglove, context, config: ViewerConfig):  # noqa: ANN001, ANN201 - foxglove.WebSocketServer
    try:
        return foxglove.start_server(name="perception", host=config.host, port=config.port, context=context)
    except RuntimeError as exc:  # e.g. "FoxgloveError: Failed to bind port: Address already in use (os error 98)"
        reason = str(exc).split(": ", 1)[-1]
        raise FatalInputError(f"live view: cannot listen on {config.host}:{config.port}: {reason}") from None


def view(node: Node, config: ViewerConfig) -> None:
    # OpenCV's thread pool would spread each resize over every core, the detector's included: the
    # view takes one core's time slices, never the pipeline's (docs/LIVE_VIEW.md, "Cost").
    cv2.setNumThreads(1)
    foxglove = _foxglove()
    try:
        class_names = detections_class_names(config.node.class_names, config.classes_file)
    except ConfigError as exc:
        raise FatalInputError(str(exc)) from None
    # The SDK logs through Python logging; its routine lines (server started, shutting down) would
    # repeat what this node says. FOXGLOVE_LOG_LEVEL overrides this.
    foxglove.set_log_level("DEBUG" if config.node.log_level.upper() == "DEBUG" else "WARNING")
    # The server logs every bad message a client sends, and clients are not authenticated: capped.
    client_lines = limit_log_rate("foxglove", burst=5, period_s=10.0)
    context = foxglove.Context()
    streams = Streams(foxglove, context, config, class_names)
    server = start_server(foxglove, context, config)
    try:
        inputs: dict[Subscriber, Topic] = {
            node.subscribe(name, edges[0].topic, latest=edges[0].topic is FRAMES): edges[0].topic
            for name, edges in node.settings.edges.items()}
        receiver = node.frame_receiver()
        log.info("live view on ws://%s:%d (Foxglove: Open connection, Foxglove WebSocket)", config.host, server.port)
        while node.ok():
            ready = node.poll(0.1)
            received_ns = now_ns()
            for subscriber in ready:
                topic = inputs[subscriber]
                for received in subscriber.receive():
                    streams.message(topic, received, received_ns)
                    if topic is FRAMES:
                        streams.frame(node, receiver, received)
                        node.mark_frame_done(received.message.frame_id, received.message.capture_ns)
            node.counters["log.suppressed"] = client_lines.suppressed
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    return run_node(__doc__.splitlines()[0], ViewerConfig, view, argv)


if __name__ == "__main__":
    raise SystemExit(main())
