"""make reproduce-tables SMOKE=1 end to end, and the report on partial sweeps: numbers come from the logs."""

from __future__ import annotations

import itertools
import json
import math
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from helpers import toy_visual_tokens

from redvtp_eval.harness.job import FAILED
from redvtp_eval.harness.tracking import build_report
from redvtp_eval.report.paired import paired_difference, stratified_difference
from redvtp_eval.report.report import report
from redvtp_eval.report.reproduce import missing_inputs

TASKS = ("redvtp_toy_docvqa", "redvtp_toy_mcq")
RATIOS = (1.0, 0.75, 0.5, 0.25)
RIVALS, RIVAL_RATIOS = ("redvtp", "random", "fastv", "visionzip"), (0.5, 0.25)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The smoke reproduction, as make reproduce-tables SMOKE=1 runs it (both grids), on 2 samples per job."""
    root = tmp_path_factory.mktemp("smoke")
    sweep, out = root / "smoke_tables", root / "results"
    done = subprocess.run(
        [sys.executable, "-m", "redvtp_eval.report.reproduce", "--smoke", "--out", str(out), "--sweeps-dir", str(root),
         "limit=2", "warmup=0", "wandb.mode=disabled"],
        capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return sweep, out, done.stdout


def samples_of(job_dir: str) -> list[dict]:
    return [json.loads(line) for line in (Path(job_dir) / "samples.jsonl").read_text().splitlines()]


@pytest.mark.slow(reason="it checks the whole SMOKE=1 run: 8 + 16 paired jobs (2 samples each here), then the reports")
def test_smoke_reproduction_writes_every_table_and_figure(smoke):
    sweep, out, stdout = smoke
    tables, figures = out / "tables" / "smoke_tables", out / "figures" / "smoke_tables"
    expected = {"jobs.csv", "jobs.parquet"} | {f"toy-redvtp{suffix}" for suffix in (".md", ".tex", ".csv")}
    expected |= {"toy-redvtp-paired.md", "toy-redvtp-paired.csv"}
    assert expected <= {path.name for path in tables.iterdir()}
    assert {path.name for path in figures.iterdir()} == {
        f"toy-redvtp-{kind}.png" for kind in ("scores", "speedup", "pareto")
    }
    assert all(path.stat().st_size > 10_000 for path in figures.iterdir())
    assert "smoke_tables: 8 done" in stdout and "smoke_rivals: 16 done" in stdout
    assert "W&B report skipped" not in stdout  # wandb disabled: no summary run, no message about a report


def test_tables_match_the_per_sample_logs(smoke):
    _, out, _ = smoke
    jobs = pd.read_csv(out / "tables" / "smoke_tables" / "jobs.csv")
    assert sorted(zip(jobs["task"], jobs["ratio"])) == sorted((t, r) for t in TASKS for r in RATIOS)
    assert set(jobs["status"]) == {"done"}
    for _, job in jobs.iterrows():
        samples = samples_of(job["job_dir"])
        assert job["samples"] == len(samples) == 2
        assert job["score_pct"] == pytest.approx(100 * statistics.fmean(s["score"] for s in samples))
        assert job["baseline_pct"] == pytest.approx(100 * statistics.fmean(s["baseline"]["score"] for s in samples))
        assert job["latency_p50_s"] == pytest.approx(statistics.median(s["latency_s"] for s in samples))
        assert job["speedup_p50"] == pytest.approx(
            statistics.median(s["baseline"]["latency_s"] for s in samples) / job["latency_p50_s"]
        )
        kept = [max(1, int(toy_visual_tokens(job["task"], s["doc_id"]) * job["ratio"])) for s in samples]
        assert [s["visual_tokens_after"] for s in samples] == kept
        assert job["visual_tokens_after"] == pytest.approx(statistics.fmean(kept))
        paired = paired_difference([s["score"] for s in samples], [s["baseline"]["score"] for s in samples])
        assert job["paired_delta_pts"] == pytest.approx(100 * paired["mean"])

    table = pd.read_csv(out / "tables" / "smoke_tables" / "toy-redvtp.csv").set_index("setting")
    assert list(table.index) == ["unpruned", "r=1", "r=0.75", "r=0.5", "r=0.25"]
    for ratio in RATIOS:
        rows = jobs[jobs["ratio"] == ratio].set_index("task")
        row = table.loc[f"r={ratio:g}"]
        for task in TASKS:
            assert row[task] == pytest.approx(rows.loc[task, "score_pct"])
        assert row["avg"] == pytest.approx(rows["score_pct"].mean())
        assert row["delta_avg_pts"] == pytest.approx((rows["score_pct"] - rows["baseline_pct"]).mean())
        assert row["latency_s"] == pytest.approx(rows["latency_p50_s"].mean())
    for task in TASKS:
        assert table.loc["unpruned", task] == pytest.approx(jobs[jobs["task"] == task]["baseline_pct"].mean())

    markdown = (out / "tables" / "smoke_tables" / "toy-redvtp.md").read_text()
    first = jobs[(jobs["task"] == TASKS[0]) & (jobs["ratio"] == 0.5)].iloc[0]
    assert "| r=0.5 " in markdown and f"{first['score_pct']:.1f}" in markdown
    assert "\\_" in (out / "tables" / "smoke_tables" / "toy-redvtp.tex").read_text()  # task names escaped


def test_the_rivals_table_and_fronts_match_the_per_sample_logs(smoke):
    _, out, _ = smoke
    tables, figures = out / "tables" / "smoke_rivals", out / "figures" / "smoke_rivals"
    assert {f"toy-rivals.{kind}" for kind in ("md", "tex", "csv")} <= {path.name for path in tables.iterdir()}
    fronts = [figures / f"toy-rivals-{kind}.png" for kind in ("flops", "latency")]
    assert all(path.stat().st_size > 10_000 for path in fronts)

    jobs = pd.read_csv(tables / "jobs.csv")
    assert sorted(zip(jobs["pruner"], jobs["task"], jobs["ratio"])) == sorted(
        (p, t, r) for p in RIVALS for t in TASKS for r in RIVAL_RATIOS
    )
    assert set(jobs["status"]) == {"done"} and jobs["budget"].isna().all()
    logs = {}
    for _, job in jobs.iterrows():
        samples = logs[(job["pruner"], job["ratio"], job["task"])] = samples_of(job["job_dir"])
        assert job["flops"] == pytest.approx(statistics.fmean(s["flops"]["total"] for s in samples))
        assert job["baseline_flops"] == pytest.approx(
            statistics.fmean(s["baseline"]["flops"]["total"] for s in samples)
        )
        assert job["effective_visual_tokens"] == pytest.approx(
            statistics.fmean(s["effective_visual_tokens"] for s in samples)
        )

    table = pd.read_csv(tables / "toy-rivals.csv")
    assert list(zip(table["pruner"], table["setting"])) == [("none", "unpruned")] + [
        (p, f"r={r:g}") for p in RIVALS for r in RIVAL_RATIOS
    ]
    rows = table.set_index(["pruner", "setting"])
    for pruner, ratio in itertools.product(RIVALS, RIVAL_RATIOS):
        row, per_task = rows.loc[(pruner, f"r={ratio:g}")], [logs[(pruner, ratio, task)] for task in TASKS]
        scores = [100 * statistics.fmean(s["score"] for s in samples) for samples in per_task]
        assert [row[task] for task in TASKS] == pytest.approx(scores) and row["avg"] == pytest.approx(
            statistics.fmean(scores)
        )
        flops = [
            statistics.fmean(s["flops"]["total"] for s in samples)
            / statistics.fmean(s["baseline"]["flops"]["total"] for s in samples)
            for samples in per_task
        ]
        assert row["flops_pct"] == pytest.approx(100 * math.prod(flops) ** (1 / len(flops)))
        assert row["effective_visual_tokens"] == pytest.approx(
            statistics.fmean(statistics.fmean(s["effective_visual_tokens"] for s in samples) for samples in per_task)
        )
        differences = [[100 * (s["score"] - s["baseline"]["score"]) for s in samples] for samples in per_task]
        interval = stratified_difference(differences)
        assert row["delta_per_sample_pts"] == pytest.approx(interval["mean"])
        assert (row["delta_ci_low_pts"], row["delta_ci_high_pts"]) == pytest.approx(
            (interval["ci_low"], interval["ci_high"])
        )
    markdown = (tables / "toy-rivals.md").read_text()
    assert "| visionzip " in markdown and "FLOPs (% of unpruned)" in markdown


def test_a_missing_and_a_failed_job_show_as_such(smoke, tmp_path):
    sweep, _, _ = smoke
    partial = tmp_path / "partial"
    shutil.copytree(sweep, partial)
    shutil.rmtree(next(partial.glob("toy/redvtp_toy_mcq/paper/redvtp-r0.25/*/metrics.json")).parent)
    failed = next(partial.glob("toy/redvtp_toy_docvqa/paper/redvtp-r0.5/*/metrics.json")).parent
    (failed / "metrics.json").unlink()
    (failed / FAILED).write_text(json.dumps({"error": "RuntimeError: CUDA out of memory", "traceback": ""}))

    report(partial, tmp_path / "results", wandb_mode="offline")
    jobs = pd.read_csv(tmp_path / "results" / "tables" / "partial" / "jobs.csv")
    status = {(row.task, row.ratio): row.status for row in jobs.itertuples()}
    assert status[("redvtp_toy_mcq", 0.25)] == "missing"
    assert status[("redvtp_toy_docvqa", 0.5)] == "failed"
    assert jobs[jobs["status"] == "failed"]["error"].tolist() == ["RuntimeError: CUDA out of memory"]
    assert sum(s == "done" for s in status.values()) == 6

    table = pd.read_csv(tmp_path / "results" / "tables" / "partial" / "toy-redvtp.csv").set_index("setting")
    assert pd.isna(table.loc["r=0.5", "redvtp_toy_docvqa"]) and pd.isna(table.loc["r=0.5", "avg"])
    assert pd.isna(table.loc["r=0.25", "redvtp_toy_mcq"]) and pd.isna(table.loc["r=0.25", "speedup"])
    assert not pd.isna(table.loc["r=0.75", "avg"])
    markdown = (tmp_path / "results" / "tables" / "partial" / "toy-redvtp.md").read_text()
    row_05 = next(line for line in markdown.splitlines() if line.startswith("| r=0.5 "))
    row_025 = next(line for line in markdown.splitlines() if line.startswith("| r=0.25 "))
    assert "failed" in row_05 and "missing" in row_025
    assert list((partial / "wandb").glob("offline-run-*"))  # the sweep's W&B summary run, offline


def test_preflight_names_what_is_missing_and_how_to_get_it():
    problems = missing_inputs("smoke_tables", ["model.path=/nonexistent/toy"])
    assert len(problems) == 1
    assert problems[0].startswith("model toy: ") and "/nonexistent/toy" in problems[0]
    assert missing_inputs("smoke_tables", []) == missing_inputs("smoke_rivals", []) == []


def test_the_online_wandb_report_is_built_from_the_tables():
    tables = {"toy-redvtp": pd.DataFrame({"Setting": ["unpruned", "r=0.5"], "Avg": ["100.0", "50.0"]})}
    built = build_report("entity", "project", "smoke_tables", tables, [Path("toy-redvtp-scores.png")])
    assert built.title == "redvtp-eval: smoke_tables"
    assert any("| r=0.5" in getattr(block, "text", "") for block in built.blocks)
