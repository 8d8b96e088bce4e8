"""What a user would write instead of the pipeline: one process that reads a frame, runs the full
YOLOX-nano, decodes it and decides, in a loop. `perception bench --baseline` runs it after the
pipeline, on the same source, at the same rate, with the same engine and load, and reports the
pipeline's end-to-end latency as a ratio of this loop's.

Equivalence with the pipeline, on purpose:
- source, rate, frame count and engine settings are not restated here: they are read from the
  same launch spec the pipeline run starts (the capture, detector and decision nodes' resolved
  configs, bench overrides included), and frames are paced by the capture node's own Pacer;
- stamp semantics are the capture node's: read and decode the frame, wait until it is due, stamp.
  End of the measured latency is the decision made (the pipeline's ends at the harness receiving
  the published decision), so both measure capture -> decision over the same work;
- the model is the original YOLOX-nano, one ONNX graph (perception/weights/yolox_nano.json), not
  the pipeline's split stages: that is what a user would run, and it is the stronger baseline
  (one session call instead of three);
- warmed up before the first frame as the detector node is (the pipeline starts its source only
  once every node is warm).

What it cannot do is what the pipeline is for: it cannot skip. A frame read after its due time
has waited in the loop's backlog since then, so it is stamped at its due time, not when the loop
got to it, and latency grows while the loop is behind (`late_frames`, `max_behind_ms`). With a
fixed --rate the Pacer, as in the capture node, re-anchors when more than one period behind, so
there the backlog carried is at most a period and `rate_slips` counts the rest.
"""

from __future__ import annotations

import time

import numpy as np

from perception.config import ConfigError
from perception.decision import DecisionMaker, decision_maker
from perception.detection.builder import DetectorSettings, build_network
from perception.detection.classes import detections_class_names
from perception.detection.manifest import WEIGHTS_DIR
from perception.detection.network import StagedNetwork
from perception.detection.outputs import Outcome, Output, detections_message
from perception.latency import now_ns, percentiles_ms
from perception.launch import LaunchFile, resolve_node_config
from perception.messages import NetworkPass, Stamp
from perception.report import QUANTILES, Collected, build_report
from perception.sources import SourceError, open_source
from perception.timing import Pacer

FULL_MODEL = WEIGHTS_DIR / "yolox_nano.json"  # the original YOLOX-nano as one graph, full depth only


def node_configs(spec: LaunchFile, launch_path: str) -> dict[str, object]:
    """The typed configs of the capture, detector and decision nodes, as the pipeline run resolves them."""
    wanted = ("capture", "detector", "decision")
    return {n.name: resolve_node_config(n, launch_path, spec.budget_ms)[1] for n in spec.nodes if n.name in wanted}


def run_baseline(spec: LaunchFile, launch_path: str, title: str = "") -> dict:
    """Run the single-process loop on the source of `spec` (a pipeline_launch spec) and return its
    report: the latency report's schema (docs/REPORT.md) plus `model`, `late_frames`,
    `max_behind_ms`, `rate_slips` and `end_to_end_without_backlog_ms`."""
    configs = node_configs(spec, launch_path)
    capture, detector_config, decision_config = configs["capture"], configs["detector"], configs["decision"]
    # The plain network, not the detector node's (policy, ceilings, tracking): a user's loop has none
    # of that. Engine and thresholds are the node's; built and warmed up as the node's is. The node's
    # `frame_sizes` are not needed: this graph has one input size (416x416), which the warm-up runs.
    network = build_network(DetectorSettings(model=FULL_MODEL, engine=detector_config.engine,
                                             score_threshold=detector_config.score_threshold,
                                             nms_threshold=detector_config.nms_threshold))
    try:
        names = detections_class_names(network.manifest.class_names(), decision_config.classes_file)
        maker = decision_maker(decision_config.rules, names, "baseline")
        try:
            source = open_source(capture.source)
        except SourceError as exc:
            raise ConfigError(str(exc)) from None
        with source:
            pacer = Pacer(capture.rate, capture.speed, source.paced_by_device)
            collected, behind_ns, slips = _loop(source, pacer, network, maker, capture.max_frames)
    finally:
        network.close()
    report = build_report(collected, spec.budget_ms, frames_sent=len(collected.decisions), title=title)
    # What the loop would give if it could skip to the newest frame: the same minus the backlog
    # (not a real figure of this loop, but it separates slower work from falling behind).
    without_backlog = [end - next(s.t_ns for s in d.stamps if s.stage == "backlog") for end, d in collected.decisions]
    report.update(model=network.manifest.name, late_frames=len(behind_ns),
                  max_behind_ms=round(max(behind_ns, default=0) / 1e6, 3), rate_slips=slips,
                  end_to_end_without_backlog_ms={k: round(v, 3) for k, v in percentiles_ms(without_backlog, QUANTILES).items()})
    return report


def _loop(source, pacer: Pacer, network: StagedNetwork, maker: DecisionMaker, max_frames: int | None
          ) -> tuple[Collected, list[int], int]:
    collected = Collected()
    behind_ns: list[int] = []
    frame_id = 0
    while max_frames is None or frame_id < max_frames:
        item = source.read()
        if item is None:
            break
        frame, media_ns = item
        read_ns = now_ns()
        due_ns = pacer.deadline(media_ns)
        if read_ns <= due_ns:
            _sleep_until(due_ns)
            capture_ns = now_ns()  # as the capture node stamps: after waking for the due frame
        else:
            # Behind: the frame has been there since it was due, waiting for this loop.
            capture_ns = due_ns
            behind_ns.append(read_ns - due_ns)
        # The "backlog" stage: from the due time to the loop getting to the frame (0 when on time).
        backlog = Stamp("backlog", max(read_ns, capture_ns))
        frame_id += 1
        detected = network.detect(frame)
        height, width = frame.shape[:2]
        output = Output(detected.boxes, detected.scores, detected.class_ids, np.zeros(len(detected.boxes), np.uint32),
                        np.zeros((len(detected.boxes), 2), np.float32))
        detections = detections_message(
            Outcome(detected.exit_index, detected.inference.size, "every frame", output, detected.inference, 0,
                    NetworkPass(*detected.inference.size, detected.exit_index)),
            frame_id=frame_id, capture_ns=capture_ns, media_ns=media_ns, image_width=width, image_height=height,
            exit_count=network.exit_count, stamps=(backlog,), received_ns=None, done_ns=now_ns())
        decision = maker.decide(detections, now_ns())
        collected.decisions.append((now_ns(), decision))
        collected.detections.append(detections)
    slips = pacer.fixed.slips if pacer.fixed is not None else 0
    return collected, behind_ns, slips


def _sleep_until(deadline_ns: int) -> None:
    while (left := deadline_ns - now_ns()) > 0:
        time.sleep(left / 1e9)


def ratios(pipeline: dict, baseline: dict) -> dict[str, float | None]:
    """Pipeline end-to-end p50 and p99 over the baseline's (below 1: the pipeline is faster)."""
    out: dict[str, float | None] = {}
    for key in ("p50", "p99"):
        p, b = pipeline["end_to_end_ms"].get(key), baseline["end_to_end_ms"].get(key)
        out[key] = round(p / b, 3) if p is not None and b else None
    return out


def format_comparison(pipeline: dict, baseline: dict, ratio: dict[str, float | None]) -> str:
    """Both runs' end-to-end p50/p99 side by side, and the ratios."""
    def row(name: str, values: list[float | None], unit: str = "", note: str = "") -> str:
        cells = "".join((f"{v:>8.2f}{unit}" if unit else f"{v:>9.2f}") if v is not None else f"{'-':>9}" for v in values)
        return f"{name:<34}{cells}{note}"

    def p50_p99(stats: dict) -> list[float | None]:
        return [stats.get("p50"), stats.get("p99")]

    behind = f"  late frames {baseline['late_frames']}, max behind {baseline['max_behind_ms']:.1f} ms" + \
        (f", rate slips {baseline['rate_slips']}" if baseline["rate_slips"] else "")
    return "\n".join([
        f"{'end to end (ms)':<34}{'p50':>9}{'p99':>9}",
        row("pipeline", p50_p99(pipeline["end_to_end_ms"])),
        row("single process (baseline)", p50_p99(baseline["end_to_end_ms"]), note=behind),
        row("  baseline less its backlog", p50_p99(baseline["end_to_end_without_backlog_ms"]),
            note="  (if it could skip; not a real figure)"),
        row("pipeline / baseline", [ratio["p50"], ratio["p99"]], unit="x"),
    ])
