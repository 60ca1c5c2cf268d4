"""The goals command: its verdicts on hand-set numbers, and one end-to-end run on the tiny size."""

from __future__ import annotations

import json

import pytest

from redvtp_eval.bench.goals import RUNS, evaluate, run_goals


def _row(flops, projected, latency, roofline=(2.0, 1.0)) -> dict:
    """A speed report's row with (baseline, pruned) FLOPs at the run size and the projected one, p50 latencies."""
    base = {"flops_total": flops[0], "latency_s": {"p50": latency[0]}}
    pruned = {"flops_total": flops[1], "latency_s": {"p50": latency[1]}}
    speedup = latency[0] / latency[1]
    return {
        "baseline": base,
        "pruned": pruned,
        "ideal": {"speedup": flops[0] / flops[1]},
        "speedup_p50": speedup,
        "achieved_over_ideal": speedup / (flops[0] / flops[1]),
        "projected": {
            "generation_flops_baseline": projected[0],
            "generation_flops_pruned": projected[1],
            "speedup": projected[0] / projected[1],
            "roofline_s_baseline": roofline[0],
            "roofline_s_pruned": roofline[1],
            "roofline_speedup": roofline[0] / roofline[1],
        },
    }


ROWS = {
    # no cache: FLOP bound 4× at the run size, measured 3.6× (90%); at the projected size 1000 → 250
    "docvqa": _row((400.0, 100.0), (1000.0, 250.0), (36.0, 10.0), roofline=(8.0, 4.0)),
    # goal 1 divides the no-cache baseline (1000 projected, 400 / 36 s here) by the pruned Fast-dLLM side
    "docvqa_fast_dual": _row((80.0, 40.0), (200.0, 100.0), (8.0, 3.6)),  # 1000 / 100 = 10×: met; 36 / 3.6 = 10×
    "docvqa_fast_prefix": _row((80.0, 50.0), (200.0, 101.0), (8.0, 4.0)),  # 1000 / 101 < 10×; 36 / 4 = 9×
    "long_fast_dual": _row((30.0, 20.0), (300.0, 200.0), (3.0, 2.0)),  # 1.5×: met, measured 1.5×
    "long_fast_prefix": _row((30.0, 25.0), (300.0, 201.0), (3.0, 2.1)),  # under 1.5× both ways
}


def test_the_goals_divide_the_right_sides_and_hold_at_exactly_the_threshold():
    goals = {goal["goal"]: goal for goal in evaluate(ROWS, same_size=False)}
    assert list(goals) == ["1 dual", "1 prefix", "2", "3 dual", "3 prefix"]
    dual, prefix = goals["1 dual"], goals["1 prefix"]
    assert dual["projected"]["flop_ratio"] == 10.0 and dual["projected"]["met"] is True
    assert dual["projected"]["roofline_ratio"] == 8.0 / 1.0
    assert dual["measured"]["flop_ratio"] == 400.0 / 40.0 and dual["measured"]["speedup_p50"] == pytest.approx(10.0)
    assert dual["measured"]["met"] is True and dual["measured"]["achieved_over_bound"] == pytest.approx(1.0)
    assert prefix["projected"]["flop_ratio"] == pytest.approx(1000 / 101) and prefix["projected"]["met"] is False
    assert prefix["measured"]["speedup_p50"] == 9.0 and prefix["measured"]["met"] is False
    share = goals["2"]
    assert share["projected"]["flop_bound"] == 4.0 and share["projected"]["roofline_over_bound"] == 2.0 / 4.0
    assert share["projected"]["met"] is None  # a share of the bound needs a measured time at that size
    assert share["measured"]["achieved_over_bound"] == pytest.approx(0.9) and share["measured"]["met"] is True
    assert goals["3 dual"]["projected"]["met"] is True and goals["3 dual"]["measured"]["met"] is True
    assert goals["3 prefix"]["projected"]["met"] is False and goals["3 prefix"]["measured"]["met"] is False
    slower = {**ROWS, "docvqa": _row((400.0, 100.0), (1000.0, 250.0), (35.0, 10.0))}
    (share,) = [goal for goal in evaluate(slower, same_size=True) if goal["goal"] == "2"]
    assert share["measured"]["met"] is False and share["projected"]["met"] is False  # measured at that size


def test_the_goals_command_runs_end_to_end_on_the_tiny_size(tmp_path):
    shrink = [
        "bench_shape.image_size=[384,384]",
        "bench_shape.task.generation.llada_v.gen_length=64",
        "bench_shape.task.generation.llada_v.block_length=32",
        "bench_shape.task.generation.llada_v.steps=8",
    ]
    result, path = run_goals("tiny", "tiny", "full", 1, 0, str(tmp_path), shrink, "test")
    assert path.name == "goals.json" and json.loads(path.read_text()) == json.loads(json.dumps(result))
    reports = {name: json.loads((path.parent / run["report"]).read_text()) for name, run in result["runs_made"].items()}
    assert list(reports) == list(RUNS)
    for name, report in reports.items():
        assert (report["config"]["bench_shape"]["name"], report["config"]["fast_dllm"]) == RUNS[name]
        assert report["config"]["ratios"] == [0.25] and report["projection"]["size"] == "full"
    official, dual = reports["docvqa"]["speed"][0], reports["docvqa_fast_dual"]["speed"][0]
    goals = {goal["goal"]: goal for goal in result["goals"]}
    ratio = official["projected"]["generation_flops_baseline"] / dual["projected"]["generation_flops_pruned"]
    assert goals["1 dual"]["projected"]["flop_ratio"] == ratio
    assert goals["1 dual"]["projected"]["met"] == (ratio >= 10)
    # Fast-dLLM's cache and pruning both save: the pruned cached run beats either one alone
    assert ratio > official["projected"]["speedup"] and ratio > dual["projected"]["speedup"]
    long = reports["long_fast_dual"]["speed"][0]
    assert goals["3 dual"]["projected"]["flop_ratio"] == long["projected"]["speedup"] > 1
    assert goals["2"]["measured"]["achieved_over_bound"] == official["achieved_over_ideal"]
    table = path.with_suffix(".md").read_text()
    assert "| 1 dual: DocVQA: Fast-dLLM dual + RedVTP r = 0.25 ≥ 10×" in table and "goals/" in table
