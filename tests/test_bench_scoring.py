from __future__ import annotations

from redvtp_eval.bench.scoring import SHAPE, run


def test_scoring_benchmark_reports_every_step_with_its_environment():
    report = run("tiny", "cpu", "float32", repeats=2)
    assert report["sequence_length"] == sum(SHAPE.values()) == 3736
    assert set(report["steps"]) == {"plain", "probed", "official"}
    assert all(len(step["seconds"]) == 2 and step["median_s"] > 0 for step in report["steps"].values())
    assert report["probed_overhead"] == report["steps"]["probed"]["median_s"] / report["steps"]["plain"]["median_s"] - 1
    assert {"device", "libraries", "commit"} <= set(report["environment"])
