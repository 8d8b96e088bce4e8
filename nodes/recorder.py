"""Recorder node: writes every topic of the pipeline, frames included, to an MCAP file.

Subscribes in queue mode (never latest-only: a recording must not skip messages) and reads each
frame from the shared-memory ring as soon as its header arrives. A frame whose slot was reused
before it could be read is counted as `frames.lost`, never written torn. The writer adds what
Foxglove shows (perception.recording): boxes over the image from each detections message, the
latency of each decision up to its receipt here, and a log of fail-safes and state changes.

A disk that cannot take the recording (a read-only folder, less than `min_free_mb` free, a write
refused) ends it: the file keeps everything written before, readable, and the node exits with
EXIT_OUTPUT, which the launcher does not restart (a restart would fail alike, leaving empty files).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from perception.config import ConfigError, Range, check_ranges
from perception.detection.classes import detections_class_names
from perception.latency import now_ns
from perception.interface import NodeInterface
from perception.node import FatalInputError, NodeSettings, OutputError, run_node
from perception.recording import MB, Compression, RecordingWriteError, RecordingWriter, missing_codec
from perception.shm_ring import FrameOverwritten, RingError
from perception.graph import ANY_INPUTS
from perception.topics import FRAMES

log = logging.getLogger("recorder")


@dataclass(frozen=True)
class RecorderConfig:
    output: Path
    node: NodeSettings = field(default_factory=NodeSettings)
    image_format: Literal["jpeg", "raw"] = "jpeg"
    jpeg_quality: Annotated[int, Range(1, 100)] = 90
    chunk_size_kb: Annotated[int, Range(1, 1 << 20)] = 1024  # a killed recorder loses at most the chunk in progress
    compression: Compression = "zstd"  # of the MCAP chunks; every MCAP reader (Foxglove's too) reads zstd
    min_free_mb: Annotated[float, Range(0, 1e9)] = 100.0  # left free on the recording's disk: it does not start, and ends, with less
    classes_file: Path | None = None  # the detector's class names, labels of the boxes; default: its model's

    def __post_init__(self) -> None:
        check_ranges(self)
        if (missing := missing_codec(self.compression)) is not None:  # refused before start, not at the first chunk
            raise ValueError(f"compression {self.compression}: {missing}")


CONFIG = RecorderConfig
INPUTS = ANY_INPUTS  # whatever its launch entry connects (`perception record`: every output of the launch)
OUTPUTS = ()


def free_path(path: Path) -> Path:
    """`path`, or the first `name-N.mcap` beside it that does not exist: a restarted recorder must
    never overwrite what the crashed one left."""
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


def record(node: NodeInterface, config: RecorderConfig) -> None:
    try:
        class_names = detections_class_names(config.node.class_names, config.classes_file)
    except ConfigError as exc:
        raise FatalInputError(str(exc)) from None
    output = free_path(config.output)
    if output != config.output:
        log.warning("%s exists; recording to %s", config.output, output)
    try:
        writer = RecordingWriter(output, config.image_format, config.jpeg_quality, config.chunk_size_kb * 1024,
                                 class_names, int(config.min_free_mb * MB), compression=config.compression)
    except RecordingWriteError as exc:
        raise OutputError(str(exc)) from None
    subscribers = [node.subscribe(name, edges[0].topic, latest=False) for name, edges in node.settings.edges.items()]
    receiver = node.frame_receiver()
    log.info("recording %s to %s", ", ".join(s.topic.name for s in subscribers), output)
    try:
        while node.ok():
            ready = node.poll(0.1)
            for subscriber in subscribers:
                if subscriber in ready:
                    for received in subscriber.receive():
                        if subscriber.topic == FRAMES:
                            write_frame(node, writer, receiver, received)
                        else:
                            # The receipt time is the log time, and where a decision's /latency ends.
                            writer.write(subscriber.topic, received.message, now_ns())
                            node.count(f"{subscriber.topic.key}.written")
        writer.close()
    except RecordingWriteError as exc:  # the writer has ended the file, readable up to here
        raise OutputError(str(exc)) from None
    finally:
        writer.close()
        log.info("wrote %s: %s", output, " ".join(f"{k} {v}" for k, v in sorted(writer.counts.items())))


def write_frame(node: NodeInterface, writer: RecordingWriter, receiver, received) -> None:
    header = received.message
    try:
        view = receiver.view(received)
        pixels = view.copy()  # raises if the slot was reused meanwhile: never write a torn frame
    except (FrameOverwritten, RingError) as exc:
        node.count("frames.lost")
        log.warning("frame %d lost: %s", header.frame_id, exc)
        return
    writer.write_frame(header, pixels, now_ns())
    node.count("frames.written")
    node.mark_frame_done(header.frame_id, header.capture_ns)


def main(argv: list[str] | None = None) -> int:
    return run_node(__doc__.splitlines()[0], RecorderConfig, record, argv)


if __name__ == "__main__":
    raise SystemExit(main())
