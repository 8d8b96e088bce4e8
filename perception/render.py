"""`perception render DRIVE.mcap OUT.mp4`: a recorded drive as a video anyone can play, each frame with
what the pipeline made of it: boxes with class, score and track id, the decision (its action as the
banner's colour) with its reason and target, the frame's capture-to-decision time, and the depth the
detector ran at. A frame the watchdog had to brake for shows its fail-safe.

MPEG-4 Part 2 (`mp4v`), the encoder every OpenCV build has; H.264 needs an OpenCV built with it.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from perception.cli_args import add_classes_argument, read_classes
from perception.detection.classes import class_name
from perception.messages import Action, Decision, Detections
from perception.recording import RecordingError
from perception.topics import DECISIONS, DETECTIONS, FRAMES

ACTION_COLOURS = {Action.PROCEED: (60, 160, 40), Action.SLOW: (0, 170, 240), Action.BRAKE: (40, 40, 220)}  # BGR
NO_DECISION_COLOUR = (110, 110, 110)
BOX_COLOUR = (255, 200, 0)
BANNER_HEIGHT = 34  # pixels at a 720-pixel-high frame; scaled with the frame
DEFAULT_FPS = 10.0


@dataclass
class FrameOutputs:
    """What the pipeline published for one frame."""

    detections: Detections | None = None
    decision: Decision | None = None  # the decision node's, else a fail-safe's
    failsafes: list[Decision] = field(default_factory=list)


def outputs_by_frame(reader) -> tuple[dict[int, FrameOutputs], list[int]]:  # noqa: ANN001 - a RecordingReader
    """What the pipeline published per frame, and the recorded frames' media times (in one pass,
    without decoding a single image)."""
    frames: dict[int, FrameOutputs] = {}
    media_ns: list[int] = []
    for topic, _, message in reader.messages({FRAMES, DETECTIONS, DECISIONS}):
        if topic is FRAMES:
            media_ns.append(message.media_ns)
            continue
        entry = frames.setdefault(message.frame_id, FrameOutputs())
        if topic is DETECTIONS:
            entry.detections = message
        elif message.failsafe:
            entry.failsafes.append(message)
        else:
            entry.decision = message
    return frames, media_ns


def frame_rate(media_ns: list[int]) -> float:
    """The recording's frame rate from its frames' media times (their median spacing)."""
    steps = np.diff(np.asarray(media_ns, np.int64))
    steps = steps[steps > 0]
    return float(1e9 / np.median(steps)) if steps.size else DEFAULT_FPS


def draw(frame: np.ndarray, frame_id: int, outputs: FrameOutputs, class_names: list[str]) -> np.ndarray:
    """`frame` (BGR, drawn on a copy) with the pipeline's outputs for it."""
    image = frame.copy()
    scale = max(0.8, image.shape[0] / 720)  # legible on small frames too
    thickness = max(1, round(2 * scale))
    detections = outputs.detections
    if detections is not None:
        track_ids = detections.track_ids if detections.track_ids is not None else np.zeros(len(detections.boxes), np.uint32)
        for box, score, class_id, track in zip(detections.boxes, detections.scores, detections.class_ids, track_ids):
            x1, y1, x2, y2 = (int(round(v)) for v in box)
            label = f"{class_name(class_names, class_id)} {score:.2f}" + (f" #{track}" if track else "")
            cv2.rectangle(image, (x1, y1), (x2, y2), BOX_COLOUR, thickness)
            _label(image, label, (x1, y1), 0.45 * scale, BOX_COLOUR, (0, 0, 0), above=True)
    decision = outputs.decision or (outputs.failsafes[0] if outputs.failsafes else None)
    banner = int(BANNER_HEIGHT * scale)
    colour = ACTION_COLOURS[decision.action] if decision is not None else NO_DECISION_COLOUR
    cv2.rectangle(image, (0, 0), (image.shape[1], banner), colour, -1)
    if decision is None:
        headline = "no decision recorded"
    else:
        target = ""
        if decision.target is not None:
            name = class_names[decision.target.class_id] if decision.target.class_id < len(class_names) else ""
            target = f" ({name})" if name else ""
        headline = f"{decision.action.name}  {decision.reason.name.lower().replace('_', ' ')}{target}"
        if decision.failsafe:
            headline += f"  fail-safe by {decision.decided_by}"
    _text(image, headline, (int(8 * scale), int(banner * 0.72)), 0.65 * scale, (255, 255, 255), thickness)
    facts = [f"frame {frame_id}"]
    if decision is not None and decision.stamps:
        facts.append(f"capture to decision {(decision.stamps[-1].t_ns - decision.capture_ns) / 1e6:.1f} ms")
    if detections is not None:
        facts.append(f"detector: {detections.level}")
    _label(image, "   ".join(facts), (0, image.shape[0]), 0.5 * scale, (30, 30, 30), (255, 255, 255), above=True)
    return image


def _text(image: np.ndarray, text: str, origin: tuple[int, int], size: float, colour: tuple[int, int, int],
          thickness: int = 1) -> None:
    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, size, colour, thickness, cv2.LINE_AA)


def _label(image: np.ndarray, text: str, corner: tuple[int, int], size: float, fill: tuple[int, int, int],
           ink: tuple[int, int, int], above: bool) -> None:
    """Text on a filled box whose lower-left corner is `corner` (`above`: the text sits on it), legible
    on any background and after video compression."""
    (width, height), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, size, 1)
    x, y = corner
    top = max(0, y - height - baseline - 4) if above else y
    cv2.rectangle(image, (x, top), (x + width + 6, top + height + baseline + 4), fill, -1)
    _text(image, text, (x + 3, top + height + 2), size, ink)


def render(recording: Path, output: Path, class_names: list[str], fps: float | None = None) -> int:
    """Write the drive at `recording` as the video `output`; returns the frames written. RecordingError
    for an unreadable recording, OSError for a video that cannot be written."""
    from perception.recording_reader import RecordingReader

    outputs, media_ns = outputs_by_frame(RecordingReader(recording))  # the rate, before the first write
    if not media_ns:
        raise RecordingError(f"recording {recording}: no frames in it")
    rate = fps or frame_rate(media_ns)
    writer = None
    written = 0
    try:
        for header, pixels in RecordingReader(recording).frames():
            if writer is None:
                size = (pixels.shape[1], pixels.shape[0])
                writer = cv2.VideoWriter(str(output), cv2.VideoWriter_fourcc(*"mp4v"), rate, size)
                if not writer.isOpened():
                    raise OSError(f"{output}: OpenCV cannot write an MPEG-4 video there")
            if (pixels.shape[1], pixels.shape[0]) != size:  # one video, one size: a changed frame is scaled to it
                pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
            writer.write(draw(pixels, header.frame_id, outputs.get(header.frame_id, FrameOutputs()), class_names))
            written += 1
    finally:
        if writer is not None:
            writer.release()
    return written


def render_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="perception render", description=__doc__.split("\n\n")[0])
    parser.add_argument("recording", type=Path, help="a drive recorded by perception record (MCAP)")
    parser.add_argument("output", type=Path, help="the video to write (.mp4)")
    add_classes_argument(parser)
    parser.add_argument("--fps", type=float, default=None, help="frame rate (default: the recording's own)")
    args = parser.parse_args(argv)
    if args.fps is not None and not 0 < args.fps <= 1000:
        parser.error(f"--fps must be in (0, 1000], got {args.fps}")
    if args.output.suffix.lower() != ".mp4":
        parser.error(f"{args.output}: the output is an MPEG-4 video, name it .mp4")
    names = read_classes(args.classes, "render")
    if names is None:
        return 2
    try:
        frames = render(args.recording, args.output, names, args.fps)
    except (RecordingError, OSError) as exc:
        print(f"render: {exc}", file=sys.stderr)
        return 2
    print(f"{args.output}: {frames} frames")
    return 0
