"""`perception migrate OLD.mcap NEW.mcap`: a drive recorded by an earlier build in the current recording
format, rather than only refused by the reader.

Earlier recordings differ in three ways, each converted: topic messages of wire formats 4 and 5
(no `clock`, no detections' `measured_by`; perception.codec.upgrade), images as base64 JSON (now protobuf foxglove.CompressedImage
or RawImage: the JPEG bytes are kept as they are), and log times on the recording host's
monotonic clock (now Unix time). The wall-clock time of a run recorded on a monotonic clock is not
in the file: its last message is taken to have been written when the file was last modified, and
every time moves by the same offset (their differences, the latencies, stay exact). A recording
already in Unix time keeps its offset (its publish times less the captures they stamp). The view
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


def survey(path: Path) -> tuple[int, str, bool]:
    """(what to add to the run's clock for Unix time (see the module doc), the recording's image
    format ("jpeg" or "raw"), whether its log times are Unix time already)."""
    from perception.codec import decode, upgrade
    from perception.recording_reader import RecordingReader
    from perception.visualization import IMAGE_CHANNEL

    reader = RecordingReader(path, upgrade_older=True, warn_cut_short=False)  # the copy that follows says it
    last, offset, image_format = 0, None, None
    for channel, log_time, data in reader.records():
        last = max(last, log_time)
        if channel == FRAMES.name and offset is None:
            header = decode(upgrade(data))
            if header.capture_ns > 0 and reader.publish_time > WALL_CLOCK_FLOOR_NS:
                offset = reader.publish_time - header.capture_ns  # publish time = capture + the run's offset
        elif channel == IMAGE_CHANNEL and image_format is None:  # one image says it: a recording has one format
            image_format = "jpeg" if reader.image(data)[0].get("format") == "jpeg" else "raw"
    image_format = image_format or "jpeg"
    if last >= WALL_CLOCK_FLOOR_NS:
        if offset is None:
            raise RecordingError(f"recording {path}: in Unix time, but no frame says by how much (nothing to anchor on)")
        return offset, image_format, True
    return path.stat().st_mtime_ns - last, image_format, False


def migrate(old: Path, new: Path, class_names: list[str]) -> dict[str, int]:
    """Write the recording at `old` in the current format at `new`; returns messages written per channel.
    RecordingError, one line naming `old`, for anything it cannot read; nothing is left at `new` then."""
    from perception.codec import decode, upgrade
    from perception.messages import FrameHeader
    from perception.recording_reader import RecordingReader, decode_image
    from perception.visualization import IMAGE_CHANNEL

    writer = None
    try:
        offset, image_format, unix_already = survey(old)
        unix = offset if unix_already else 0  # the writer takes log times on the run's clock and adds the offset
        writer = RecordingWriter(new, image_format, class_names=class_names, wall_offset_ns=offset)
        reader = RecordingReader(old, upgrade_older=True)
        header: FrameHeader | None = None
        for channel, log_time, data in reader.records():
            log_time -= unix
            if channel == FRAMES.name:
                header = decode(upgrade(data), expect=FrameHeader)
            elif channel == IMAGE_CHANNEL and header is not None:
                image, raw = reader.image(data)
                if image.get("format") == "jpeg" and image_format == "jpeg":
                    writer.write_jpeg(header, raw, log_time)
                else:
                    writer.write_frame(header, decode_image(image, raw), log_time)
                header = None
            elif channel in BY_NAME:  # the view channels are derived again from the topics
                writer.write(BY_NAME[channel], decode(upgrade(data), expect=BY_NAME[channel].message_type), log_time)
        writer.close()
    except Exception as exc:  # whatever the old file holds that does not convert: nothing half-written is left
        if writer is None and isinstance(exc, RecordingError):
            raise  # the old file refused as it was read, nothing written yet: its own line
        if writer is not None:
            try:
                writer.close()
            except RecordingError:
                pass  # it is removed all the same
        new.unlink(missing_ok=True)
        reason = str(exc) if isinstance(exc, RecordingError) else f"{type(exc).__name__}: {exc}"
        raise RecordingError(f"recording {old}: cannot be migrated ({reason})") from None
    if not writer.counts:
        new.unlink(missing_ok=True)
        raise RecordingError(f"recording {old}: nothing in it to migrate")
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
