"""`perception migrate OLD.mcap NEW.mcap`: a drive recorded by an earlier build in the current recording
format, rather than only refused by the reader.

Earlier recordings differ in three ways, each converted: topic messages of wire format 4 (no
`clock`; perception.codec.upgrade), images as base64 JSON (now protobuf foxglove.CompressedImage
or RawImage: the JPEG bytes are kept as they are), and log times on the recording host's
monotonic clock (now Unix time). The wall-clock time of a run recorded on a monotonic clock is not
in the file: its last message is taken to have been written when the file was last modified, and
every time moves by the same offset (their differences, the latencies, stay exact). The view
channels (/camera/annotations, /latency, /log) are derived again from the topics, as a new
recording's are.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from perception.cli_args import add_classes_argument, output_taken, read_classes
from perception.recording import RecordingError, RecordingWriter
from perception.topics import BY_NAME, FRAMES

# Before this (1973), a log time cannot be Unix time: it is a monotonic clock's, seconds since boot.
WALL_CLOCK_FLOOR_NS = 100_000_000 * 1_000_000_000


def wall_offset_ns(path: Path) -> int:
    """What to add to the log times of the recording at `path` for Unix time: 0 when they already
    are; else the file's modification time less its last log time."""
    from perception.recording_reader import RecordingReader

    last = max((log_time for _, log_time, _ in RecordingReader(path, upgrade_older=True).records()), default=0)
    return 0 if last >= WALL_CLOCK_FLOOR_NS else path.stat().st_mtime_ns - last


def migrate(old: Path, new: Path, class_names: list[str]) -> dict[str, int]:
    """Write the recording at `old` in the current format at `new`; returns messages written per channel."""
    from perception.codec import decode, upgrade
    from perception.messages import FrameHeader
    from perception.recording_reader import RecordingReader, decode_image
    from perception.visualization import IMAGE_CHANNEL

    offset = wall_offset_ns(old)
    reader = RecordingReader(old, upgrade_older=True)
    header: FrameHeader | None = None
    writer: RecordingWriter | None = None
    try:
        for channel, log_time, data in reader.records():
            if channel == FRAMES.name:
                header = decode(upgrade(data), expect=FrameHeader)
                continue
            if channel == IMAGE_CHANNEL and header is not None:
                image, raw = reader.image(data)
                if writer is None:  # the image format is known from the first frame
                    fmt = "jpeg" if image.get("format") == "jpeg" else "raw"
                    writer = RecordingWriter(new, fmt, class_names=class_names, wall_offset_ns=offset)
                if writer.image_format == "jpeg":
                    writer.write_jpeg(header, raw, log_time)
                else:
                    writer.write_frame(header, decode_image(image, raw), log_time)
                header = None
                continue
            topic = BY_NAME.get(channel)
            if topic is None:
                continue  # a view channel: derived again from the topics
            if writer is None:
                writer = RecordingWriter(new, class_names=class_names, wall_offset_ns=offset)
            writer.write(topic, decode(upgrade(data), expect=topic.message_type), log_time)
    except ValueError as exc:  # a message of the old file that does not decode, upgraded or not
        if writer is not None:
            writer.close()
        new.unlink(missing_ok=True)
        raise RecordingError(f"recording {old}: cannot be migrated ({exc})") from None
    if writer is None:
        raise RecordingError(f"recording {old}: nothing in it to migrate")
    writer.close()
    return dict(writer.counts)


def migrate_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="perception migrate", description=__doc__.split("\n\n")[0])
    parser.add_argument("recording", type=Path, help="a drive recorded by an earlier build (MCAP)")
    parser.add_argument("output", type=Path, help="the recording to write in the current format (must not exist)")
    add_classes_argument(parser)
    args = parser.parse_args(argv)
    names = read_classes(args.classes, "migrate")
    if names is None or output_taken(args.output, "migrate"):
        return 2
    try:
        counts = migrate(args.recording, args.output, names)
    except RecordingError as exc:
        print(f"migrate: {exc}", file=sys.stderr)
        return 2
    print(f"{args.output}: {counts.get(FRAMES.name, 0)} frames, {sum(counts.values())} messages in the current format")
    return 0
