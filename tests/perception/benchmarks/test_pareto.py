"""The Pareto sweep and the drive agreement of perception pareto (issue 17)."""

import json

import pytest

from helpers import REPO
from perception.benchmarks.pareto import detector_settings, drive_agreement, main


@pytest.mark.parametrize("drive", ["udacity_approach", "udacity_dashcam"])
def test_the_adaptive_policy_decides_as_full_depth_does_on_both_bundled_drives(drive):
    """In process, as a deterministic replay runs them: the frames the decision node acts on run at
    full size and depth, so its decisions are full depth's (the approach brakes, the dashcam never does)."""
    result = drive_agreement(REPO / "recordings" / f"{drive}.mcap", detector_settings(["policy.kind=adaptive"]))
    assert result["decisions_identical"], [f for f in result["frames"] if f["action"] != f["action_full"]]
    actions = {f["action"] for f in result["frames"]}
    assert actions == ({"PROCEED", "SLOW", "BRAKE"} if drive == "udacity_approach" else {"PROCEED"})


def test_a_sweep_writes_every_row_the_fixed_frontier_and_each_adaptive_rows_margin(tmp_path):
    out, plot = tmp_path / "pareto.json", tmp_path / "pareto.png"
    assert main(["--pixels", "43264,86528", "--exits", "1", "--intervals", "1,2", "--max-frames", "12",
                 "--detector", "engine.threads=1", "--json", str(out), "--plot", str(plot)]) == 0
    report = json.loads(out.read_text())
    names = [r["name"] for r in report["results"]]
    assert names[:4] == ["fixed 43264 px exit1 every 1", "fixed 43264 px exit1 every 2",
                         "fixed 86528 px exit1 every 1", "fixed 86528 px exit1 every 2"]
    assert names[4:] == ["adaptive", "adaptive, no ego path", "adaptive, full size only"]
    assert all(r["frames"] == 12 for r in report["results"]) and report["frontier_AP50"]
    assert {a["name"] for a in report["adaptive"]} == set(names[4:])
    assert all("AP50_points_above_frontier" in a for a in report["adaptive"]) and plot.stat().st_size > 10_000
