"""Rivals at matched cost: the tidy table's cost columns, the table across pruners, the fronts, the grids."""

from __future__ import annotations

import itertools
import json
import math
import statistics

import pandas as pd
import pytest
import yaml

from redvtp_eval.harness.summary import summarize
from redvtp_eval.report.paired import paired_difference, stratified_difference
from redvtp_eval.report.plots import draw_rivals, pareto_front
from redvtp_eval.report.reproduce import GRIDS, compose_job
from redvtp_eval.report.sweep import grid, job_row
from redvtp_eval.report.tables import rivals_table

BENCHMARKS = ("ai2d", "realworldqa", "infovqa_val", "docvqa_val", "mme", "mmbench_en_dev")


def job(task, pruner, ratio, score, baseline, differences, flops, budget=None, **more) -> dict:
    """A done job's row of the tidy table, as :func:`redvtp_eval.report.sweep.job_row` gives it."""
    return {
        "model": "toy",
        "task": task,
        "pruner": pruner,
        "ratio": ratio,
        "budget": budget,
        "status": "done",
        "samples": len(differences),
        "score_pct": score,
        "baseline_pct": baseline,
        "paired_differences_pts": differences,
        "flops": flops[0],
        "baseline_flops": flops[1],
        "effective_visual_tokens": more.get("tokens", 100.0),
        "baseline_effective_visual_tokens": 400.0,
        "latency_p50_s": more.get("latency", 1.0),
        "baseline_latency_p50_s": more.get("baseline_latency", 2.0),
        "tokens_per_s": more.get("tokens_per_s", 10.0),
        "baseline_tokens_per_s": 5.0,
    }


@pytest.fixture
def jobs() -> pd.DataFrame:
    return pd.DataFrame(
        [
            job("ai2d", "redvtp", 0.5, 70.0, 80.0, [0, -100, 0, -100, 0], (1e9, 2e9), tokens=150.0, latency=1.0),
            job("docvqa_val", "redvtp", 0.5, 50.0, 60.0, [0, 0, -100, 0], (4e9, 5e9), tokens=250.0, latency=3.0),
            job("ai2d", "fastv", 0.5, 80.0, 80.0, [0, 0, 0], (1.5e9, 2e9), baseline_latency=4.0),
            job("docvqa_val", "fastv", 0.5, 60.0, 60.0, [0, 0, 0], (2.5e9, 5e9), baseline_latency=6.0),
            job("ai2d", "fastv", 0.5, 75.0, 80.0, [0, -100], (1e9, 2e9), budget=64.0),
            {"model": "toy", "task": "docvqa_val", "pruner": "fastv", "ratio": 0.5, "budget": 64.0, "status": "failed"},
            job("ai2d", "zz_custom", 0.25, 60.0, 80.0, [-100, 0], (1e9, 2e9)),  # a pruner not in the registry: last
            job("docvqa_val", "zz_custom", 0.25, 40.0, 60.0, [-100, 0], (1e9, 2e9)),
        ]
    )


def test_rivals_rows_are_pruner_by_setting_and_every_cell_is_recomputable(jobs):
    numbers, shown = rivals_table(jobs)
    assert list(zip(numbers["pruner"], numbers["setting"])) == [
        ("none", "unpruned"),
        ("redvtp", "r=0.5"),
        ("fastv", "r=0.5"),
        ("fastv", "b=64"),
        ("zz_custom", "r=0.25"),
    ]
    rows = numbers.set_index(["pruner", "setting"])
    redvtp = rows.loc[("redvtp", "r=0.5")]
    assert redvtp["avg"] == pytest.approx((70 + 50) / 2)
    assert redvtp["delta_avg_pts"] == pytest.approx(((70 - 80) + (50 - 60)) / 2)
    assert redvtp["flops_pct"] == pytest.approx(100 * math.sqrt(0.5 * 0.8))  # geometric mean of 1/2 and 4/5
    assert redvtp["effective_visual_tokens"] == pytest.approx(200.0)
    assert redvtp["latency_s"] == pytest.approx(2.0) and redvtp["tokens_per_s"] == pytest.approx(10.0)
    # Δ per sample: mean over benchmarks of each one's mean difference (-40 and -25), interval stratified by benchmark
    assert redvtp["delta_per_sample_pts"] == pytest.approx((-40 + -25) / 2)
    expected = stratified_difference([[0, -100, 0, -100, 0], [0, 0, -100, 0]])
    assert (redvtp["delta_ci_low_pts"], redvtp["delta_ci_high_pts"]) == pytest.approx(
        (expected["ci_low"], expected["ci_high"])
    )
    assert redvtp["delta_ci_low_pts"] < redvtp["delta_per_sample_pts"] < redvtp["delta_ci_high_pts"]

    fastv = rows.loc[("fastv", "r=0.5")]
    assert fastv["flops_pct"] == pytest.approx(100 * math.sqrt(0.75 * 0.5))
    assert fastv["delta_per_sample_pts"] == 0 and fastv["delta_ci_low_pts"] == fastv["delta_ci_high_pts"] == 0

    budget = rows.loc[("fastv", "b=64")]  # its docvqa job failed: the cell says so, the averages stay empty
    assert budget["ai2d"] == 75.0 and budget["budget"] == 64.0
    assert all(pd.isna(budget[c]) for c in ("avg", "delta_avg_pts", "delta_per_sample_pts", "flops_pct"))

    unpruned = rows.loc[("none", "unpruned")]  # pools the unpruned side of every job of the benchmark
    assert unpruned["ai2d"] == pytest.approx(80.0) and unpruned["avg"] == pytest.approx(70.0)
    assert unpruned["flops_pct"] == 100.0 and unpruned["effective_visual_tokens"] == 400.0
    ai2d_latencies = [2.0, 4.0, 2.0, 2.0]
    docvqa_latencies = [2.0, 6.0, 2.0]
    expected_latency = (statistics.median(ai2d_latencies) + statistics.median(docvqa_latencies)) / 2
    assert unpruned["latency_s"] == pytest.approx(expected_latency)

    table = shown.set_index(["Pruner", "Setting"])
    assert table.loc[("redvtp", "r=0.5"), "FLOPs (% of unpruned)"] == f"{100 * math.sqrt(0.4):.1f}" == "63.2"
    assert table.loc[("redvtp", "r=0.5"), "Δ Avg (pts)"] == "-10.0"
    assert table.loc[("redvtp", "r=0.5"), "Δ per sample (pts) [95% CI]"].startswith("-32.5 [")
    assert table.loc[("fastv", "b=64"), "DocVQA"] == "failed" and table.loc[("fastv", "b=64"), "Avg"] == "—"
    assert list(table.columns[:2]) == ["AI2D", "DocVQA"]


def test_one_benchmarks_stratified_interval_is_its_paired_interval():
    pruned, unpruned = [1, 0, 1, 1, 0, 1, 0, 1], [1, 1, 1, 0, 0, 1, 1, 1]
    paired = paired_difference(pruned, unpruned)
    stratified = stratified_difference([[a - b for a, b in zip(pruned, unpruned)]])
    assert stratified["mean"] == pytest.approx(paired["mean"])
    assert (stratified["ci_low"], stratified["ci_high"]) == pytest.approx((paired["ci_low"], paired["ci_high"]))
    assert stratified_difference([[0.5, 0.5], [1.0, 1.0]]) == {"n": 4, "mean": 0.75, "ci_low": 0.75, "ci_high": 0.75}
    assert stratified_difference([[1.0], [0.0, 1.0]])["ci_low"] is None  # one sample: no interval
    assert stratified_difference([[], [1.0]])["mean"] is None


def test_the_front_keeps_only_points_nothing_beats_on_both_cost_and_score():
    points = pd.DataFrame(
        [
            ("A", 1.0, 50.0),
            ("B", 2.0, 60.0),
            ("C", 2.0, 55.0),  # B: same cost, higher score
            ("D", 3.0, 58.0),  # B: cheaper and higher
            ("E", 4.0, 70.0),
            ("F", 1.0, 40.0),  # A: same cost, higher score
            ("G", 2.0, 60.0),  # B's twin: one of the two stays
            ("H", 5.0, 70.0),  # E: cheaper, same score
        ],
        columns=["name", "flops_pct", "avg"],
    )
    front = pareto_front(points, "flops_pct", "avg")
    assert list(front["flops_pct"]) == [1.0, 2.0, 4.0] and list(front["avg"]) == [50.0, 60.0, 70.0]
    assert set(front["name"]) - {"B", "G"} == {"A", "E"}
    dominated = {"C", "D", "F", "H"}
    for _, point in points[points["name"].isin(dominated)].iterrows():
        assert any(
            other["flops_pct"] <= point["flops_pct"] and other["avg"] >= point["avg"] for _, other in front.iterrows()
        )
    latency = points.rename(columns={"flops_pct": "latency_s"})
    assert list(pareto_front(latency)["latency_s"]) == [1.0, 2.0, 4.0]  # the default axes: latency and average


def test_the_rivals_figures_draw_every_pruner_and_the_unpruned_point(jobs, tmp_path):
    numbers, _ = rivals_table(jobs)
    paths = draw_rivals(numbers, "toy, all pruners", tmp_path / "toy-rivals")
    assert [path.name for path in paths] == ["toy-rivals-flops.png", "toy-rivals-latency.png"]
    assert all(path.stat().st_size > 10_000 for path in paths)


def test_a_job_row_carries_its_budget_cost_and_per_sample_differences(tmp_path):
    def run(flops, tokens, latency):
        return {
            "latency_s": latency,
            **{name: 0.0 for name in ("preprocess_s", "vision_s", "prune_s", "denoise_s", "first_step_s")},
            "gen_length": 2,
            "answer_tokens": 1,
            "visual_tokens_before": 444,
            "visual_tokens_after": 64,
            "effective_visual_tokens": tokens,
            "flops": {"vision": 1, "language_model": flops - 1, "total": flops},
            "steps": 2,
            "peak_memory_gib": None,
        }

    entries = [
        {
            "task": "redvtp_toy_mcq",
            "doc_id": i,
            "failed": None,
            "score": s,
            "baseline": run(400, 444.0, 2.0) | {"score": b},
        }
        | run(f, t, 1.0)
        for i, (s, b, f, t) in enumerate([(1.0, 1.0, 100, 64.0), (0.0, 1.0, 200, 96.0)])
    ]
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    (tmp_path / "metrics.json").write_text(json.dumps(summarize(entries, 0.5, 1.0)))
    config = {
        "model": {"path": "toy"},
        "task": {"name": "redvtp_toy_mcq", "metric": "exact_match", "percent_scale": 100},
        "pruner": {"name": "fastv"},
        "ratio": 0.5,
        "budget": 64,
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    row = job_row(tmp_path)
    assert (row["pruner"], row["ratio"], row["budget"], row["status"]) == ("fastv", 0.5, 64.0, "done")
    assert row["flops"] == 150 and row["baseline_flops"] == 400
    assert row["effective_visual_tokens"] == 80.0 and row["baseline_effective_visual_tokens"] == 444.0
    assert row["paired_differences_pts"] == [0.0, -100.0]
    assert not any(key.startswith("sub_score:") for key in row)  # a task without sub-scores adds no column


def test_the_rivals_grid_is_every_pruner_but_the_oracles_on_the_six_benchmarks():
    from redvtp_eval.pruners import PRUNERS

    composed = compose_job(["experiment=rivals"])
    assert composed.results_dir == "results/sweeps/rivals" and composed.protocol.name == "paper"
    pruners = set(PRUNERS) - {"none", "oracle", "anti_oracle"}
    expected = itertools.product(("llada_v", "lavida_llada"), BENCHMARKS, pruners, (0.75, 0.5, 0.25), (None,))
    assert grid(composed) == set(expected)
    # at matched cost: the sweep's ratio axis replaced by budgets (the ratio stays the config's, unused)
    by_budget = compose_job(
        ["experiment=rivals", "~hydra.sweeper.params.ratio", '+hydra.sweeper.params.budget="0.5,0.25"']
    )
    assert grid(by_budget) == set(
        itertools.product(("llada_v", "lavida_llada"), BENCHMARKS, pruners, (0.5,), (0.5, 0.25))
    )

    smoke = compose_job(["experiment=smoke_rivals"])
    assert smoke.limit == 8 and smoke.results_dir == "results/sweeps/smoke_rivals"
    assert grid(smoke) == set(
        itertools.product(
            ("toy",),
            ("redvtp_toy_docvqa", "redvtp_toy_mcq"),
            ("redvtp", "random", "fastv", "visionzip"),
            (0.5, 0.25),
            (None,),
        )
    )
    assert GRIDS == {"full": ("paper_tables", "rivals"), "smoke": ("smoke_tables", "smoke_rivals")}

    toy = compose_job(["experiment=toy_rivals"])
    assert (toy.limit, toy.budget_metric, toy.results_dir) == (32, "flops", "results/sweeps/toy_rivals")
    assert grid(toy) == set(
        itertools.product(
            ("toy",), ("redvtp_toy_docvqa", "redvtp_toy_mcq"), set(PRUNERS) - {"none"}, (0.5,), (0.7, 0.4)
        )
    )
