"""`perception record OUTPUT.mcap --source VIDEO|IMAGE_DIR|RECORDING | --camera N`: a drive, every topic
and its frames, to MCAP. The source is opened and the output folder checked (writable, `min_free_mb`
free) before anything starts (a bad one is one line, exit 2); the run ends when the recorder cannot
go on (out of space), and an empty file or a failed run is never reported as recorded."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from perception.config import from_mapping
from perception.live_sources import is_stream_url, shown
from perception.launch import resolve_node_config
from perception.node import EXIT_OUTPUT
from perception.pipeline import PIPELINE_LAUNCH, count_recorded_frames, pipeline_launch, run_pipeline
from perception.replay import EXIT_BAD_INPUT
from perception.ros2bag import is_ros2_bag


def source_spec(source: str, topic: str | None = None) -> dict:
    """The capture source for `perception record --source SOURCE`: a stream URL, a ROS 2 bag directory
    (its image `topic`), an image folder, an MCAP recording or a video."""
    if is_stream_url(source):
        return {"kind": "stream", "url": source}
    path = Path(source)
    if is_ros2_bag(path):
        return {"kind": "ros2", "path": str(path.resolve()), "topic": topic}
    if path.is_dir():
        return {"kind": "images", "path": str(path.resolve()), "fps": 10.0}
    return {"kind": "recording" if path.suffix == ".mcap" else "video", "path": str(path.resolve())}


def camera_spec(camera: str) -> dict:
    """`--camera 0` (an OpenCV index) or `--camera /dev/video0` (a V4L2 device)."""
    return {"kind": "camera", "camera_index": int(camera)} if camera.isdigit() else {"kind": "camera", "device": camera}


def probe_source(spec: dict) -> None:
    """Open the source as the capture node will, and close it again, so that a missing file, an
    undecodable video, an empty image folder or a file that is not a recording is one line now,
    before any process starts. Raises SourceError."""
    from perception.sources import SourceConfig, open_source

    open_source(from_mapping(SourceConfig, spec, source="--source")).close()


def record_main(argv: list[str] | None = None) -> int:
    from perception.recording import MB, RecordingError, check_room
    from perception.sources import SourceError

    parser = argparse.ArgumentParser(prog="perception record", description="record a drive (every topic) to MCAP")
    parser.add_argument("output", type=Path, help="the MCAP file to write")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--source", help="a video file, image folder, recording, ROS 2 bag directory or stream URL "
                                         "(rtsp://, http://, udp://, ...)")
    source.add_argument("--camera", help="a camera: its OpenCV index (0) or V4L2 device path (/dev/video0)")
    parser.add_argument("--topic", help="a ROS 2 bag source: its image topic (default: the bag's only one)")
    parser.add_argument("--frames", type=int, default=None, help="stop after this many frames")
    parser.add_argument("--frames-only", action="store_true", help="record the camera alone, without the pipeline")
    parser.add_argument("--image-format", choices=["jpeg", "raw"], default=None, help="default: configs/recorder.yaml")
    parser.add_argument("--jpeg-quality", type=int, default=None, help="1-100; default: configs/recorder.yaml")
    parser.add_argument("--min-free-mb", type=float, default=None,
                        help="space to leave free on the output's disk: no start with less, the end when less is "
                             "left; default: configs/recorder.yaml")
    args = parser.parse_args(argv)
    if args.frames is not None and args.frames < 1:
        parser.error(f"--frames must be at least 1, got {args.frames}")
    recorder_params = {key: value for key, value in (("image_format", args.image_format), ("jpeg_quality", args.jpeg_quality),
                                                     ("min_free_mb", args.min_free_mb)) if value is not None}
    spec_source = camera_spec(args.camera) if args.camera is not None else source_spec(args.source, args.topic)
    if args.topic is not None and spec_source["kind"] != "ros2":
        parser.error(f"--topic {args.topic}: the source is no ROS 2 bag directory")
    # The recorder never overwrites a file (it would write NAME-1.mcap beside it), so an existing
    # output would leave this command reporting on the wrong file.
    if args.output.exists():
        print(f"record: {args.output} exists; remove it or choose another name", file=sys.stderr)
        return EXIT_BAD_INPUT
    spec = pipeline_launch(spec_source, record_to=args.output, pipeline=not args.frames_only, max_frames=args.frames,
                           recorder_params=recorder_params)
    recorder = next(n for n in spec.nodes if n.name == "recorder")
    min_free = int(resolve_node_config(recorder, str(PIPELINE_LAUNCH))[1].min_free_mb * MB)
    folder = args.output.resolve().parent
    try:
        probe_source(spec_source)
        check_room(folder, min_free)
    except (SourceError, RecordingError) as exc:
        print(f"record: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    result = run_pipeline(spec, f"record {args.output}", args.frames, collect=not args.frames_only)
    try:
        frames = count_recorded_frames(args.output) if args.output.exists() else 0
    except RecordingError as exc:  # written but unreadable: kept for a look, never called a drive
        print(f"record: failed: {exc}", file=sys.stderr)
        return 1
    what = shown(args.source) if args.source else f"camera {args.camera}"
    if frames == 0:
        # An empty file is not a drive: leave nothing that `perception replay` would take for one.
        args.output.unlink(missing_ok=True)
    if result.exit_code != 0 or frames == 0:
        reasons = [_output_failure(args.output, min_free) if name == "recorder" and code == EXIT_OUTPUT
                   else f"{name} exited with code {code}" for name, code in result.failed.items()]
        why = ", ".join(reasons) or (f"the launcher exited with code {result.exit_code}" if result.exit_code
                                     else f"no frame of {what} reached the recorder")
        kept = f"the {frames} frames recorded before it are in {args.output}" if frames else "nothing was recorded"
        print(f"record: failed: {why} (see the log above); {kept}", file=sys.stderr)
        return result.exit_code or 1
    print(f"recorded {frames} frames of {what} to {args.output} in {result.seconds:.1f} s")
    return 0


def _output_failure(output: Path, min_free: int) -> str:
    """Why the recorder could not go on (it exited with EXIT_OUTPUT), as the disk tells it now: it
    stops when less than `min_free` is left, and a write the disk refused leaves about nothing."""
    folder = output.resolve().parent
    if shutil.disk_usage(folder).free < max(min_free, 1):
        return f"out of space on {folder}"
    return f"the recorder could not write {output}"
