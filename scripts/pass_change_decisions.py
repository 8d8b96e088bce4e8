"""Decisions on a recorded drive when the detector changes network pass under load.

Usage: python scripts/pass_change_decisions.py DRIVE.mcap [--detector KEY=VALUE ...]
The drive is detected at full depth on every frame (the reference), then again with the watchdog's
depth ceiling (exit 0) on some frames, in blocks at every phase, as load would put it. Each run is
decided twice by the decision node's rules (configs/decision.yaml): growth fitted within a network
pass (this build), and across passes (the pass dropped, as the fit was before wire 6). Prints each
pattern's actions (P, S, B) and, over all patterns, the frames that differ from the reference, less
or more cautious, and the first SLOW and BRAKE.
"""
import argparse
from dataclasses import replace
from pathlib import Path

from perception import REPO
from perception.benchmarks.pareto import decide_frame, drive_rules
from perception.decision import decision_maker
from perception.detection.builder import build_detector, load_settings
from perception.recording_reader import RecordingReader

PATTERNS = [(8, 4), (6, 3), (4, 2), (2, 1), (10, 3)]  # (period, frames of it under the ceiling)
RANK = {"P": 0, "S": 1, "B": 2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("drive", type=Path)
    parser.add_argument("--detector", metavar="KEY=VALUE", action="append", default=[])
    args = parser.parse_args()
    frames = list(RecordingReader(args.drive).frames())
    detector = build_detector(load_settings(REPO / "configs/detector.yaml", ["policy.kind=fixed", *args.detector]))
    rules, class_names = drive_rules(detector.network)

    def detect(ceiling) -> list:  # noqa: ANN001 - frame number -> bool
        detector.reset("next run")
        return [(header, detector.process(pixels, header.media_ns, max_exit=0 if ceiling(n) else None))
                for n, (header, pixels) in enumerate(frames, 1)]

    def actions(outcomes: list, within_pass: bool) -> str:
        maker = decision_maker(rules, class_names)
        return "".join(decide_frame(maker, header, outcome if within_pass else replace(outcome, measured_by=None),
                                    detector.exit_count).action.name[0] for header, outcome in outcomes)

    reference = actions(detect(lambda n: False), True)
    print(f"{'full depth':<16}{reference}")
    totals = {"within a pass": [], "across passes": []}
    for period, under in PATTERNS:
        for phase in range(period):
            ceiling = lambda n: (n + phase) % period < under  # noqa: E731, B023 - used before the loop moves on
            outcomes = detect(ceiling)
            print(f"{'exit 0 on':<16}" + "".join("0" if ceiling(n) else "." for n in range(1, len(frames) + 1)))
            for label, within in (("within a pass", True), ("across passes", False)):
                decided = actions(outcomes, within)
                totals[label].append(decided)
                print(f"  {label:<14}{decided}")
    print(f"{len(totals['within a pass'])} patterns x {len(frames)} frames; full depth: first SLOW or BRAKE at frame "
          f"{first(reference, 'SB') or 'none'}, first BRAKE at {first(reference, 'B') or 'none'}")
    for label, runs in totals.items():
        less = sum(RANK[a] < RANK[b] for run in runs for a, b in zip(run, reference))
        more = sum(RANK[a] > RANK[b] for run in runs for a, b in zip(run, reference))
        false_brakes = sum(a == "B" != b for run in runs for a, b in zip(run, reference))
        line = (f"{label}: {less + more} frames differ, {less} less cautious, {more} more cautious ({false_brakes} BRAKE "
                f"where full depth does not)")
        due = first(reference, "B")
        if due:
            late = [(first(run, "B") or len(run) + 1) - due for run in runs]
            line += (f"; first BRAKE later than full depth's in {sum(d > 0 for d in late)} patterns (at most "
                     f"{max(late)} frames), earlier in {sum(d < 0 for d in late)} (up to {-min(late)})")
        print(line)


def first(actions: str, of: str) -> int | None:
    """The 1-based frame of the first action among `of`; None when there is none."""
    return next((n for n, action in enumerate(actions, 1) if action in of), None)


if __name__ == "__main__":
    main()
