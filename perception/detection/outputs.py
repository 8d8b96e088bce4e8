"""What a frame gives: boxes with scores, classes, tracks and velocities, how they were got, and the
one mapping from that to the Detections message the detector node (and every tool) publishes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from perception.detection.manifest import PART_STAMP_PREFIX
from perception.detection.network import FrameInference
from perception.messages import Detections, NetworkPass, Stamp


@dataclass
class Output:
    """Boxes (N, 4 xyxy, frame pixels) with their scores, class ids, track ids (0: untracked) and
    velocities (px/s)."""

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    track_ids: np.ndarray
    velocities: np.ndarray

    @classmethod
    def empty(cls) -> "Output":
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.uint16),
                   np.zeros(0, np.uint32), np.zeros((0, 2), np.float32))

    def select(self, keep: np.ndarray) -> "Output":
        return Output(self.boxes[keep], self.scores[keep], self.class_ids[keep], self.track_ids[keep], self.velocities[keep])


@dataclass
class Outcome:
    """One frame's result: the level it ran (an exit index, or LEVEL_PROPAGATE), the input it ran at
    (None when propagated), the plan's reason, the published output, the network pass its boxes were
    measured by (a propagated frame's: the last network frame's) and the work done."""

    level: int
    input_size: tuple[int, int] | None
    why: str
    output: Output  # at the detector's score threshold
    inference: FrameInference | None  # the network's work (stage timings), None when propagated
    flow_ns: int  # optical flow and change signals for this frame, before any network
    measured_by: NetworkPass | None = None
    warm_ns: int = 0  # warming an input size up before this frame (a GPU's first run at it; FrameDetector)


def detections_message(outcome: Outcome, *, frame_id: int, capture_ns: int, media_ns: int, image_width: int,
                       image_height: int, exit_count: int, stamps: tuple[Stamp, ...], received_ns: int | None,
                       done_ns: int) -> Detections:
    """The Detections message of a frame: its origin, the hops so far plus the detector's own
    (det.recv at `received_ns` when it came over a socket, det.warm, det.flow, one per network part,
    det.post at `done_ns`) and the output."""
    hops = stamps
    if received_ns is not None:
        hops += (Stamp("det.recv", received_ns),)
    if outcome.warm_ns and hops:  # warming a GPU up at an input size, before this frame's own work
        hops += (Stamp("det.warm", hops[-1].t_ns + outcome.warm_ns),)
    if outcome.flow_ns and hops:  # the flow's time, from where the detector's work began
        hops += (Stamp("det.flow", hops[-1].t_ns + outcome.flow_ns),)
    if outcome.inference is not None:
        hops += tuple(Stamp(f"{PART_STAMP_PREFIX}{part}", end) for part, end, _ in outcome.inference.timings)
    out = outcome.output
    return Detections(
        frame_id=frame_id, capture_ns=capture_ns, stamps=hops + (Stamp("det.post", done_ns),), media_ns=media_ns,
        image_width=image_width, image_height=image_height, exit_index=outcome.level, exit_count=exit_count,
        boxes=out.boxes, scores=out.scores, class_ids=out.class_ids, track_ids=out.track_ids, velocities=out.velocities,
        measured_by=outcome.measured_by,
    )
