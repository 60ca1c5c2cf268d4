"""A sweep directory as one tidy table: one row per job of the grid, with its status and its numbers.

Where it sits: :mod:`redvtp_eval.report.report` reads a sweep with :func:`collect` and draws every table and
figure from the result. A job is found by its ``config.yaml`` (written when it starts); its status is

- ``done``: ``metrics.json`` exists (written last);
- ``failed``: ``failed.json`` holds the exception that stopped it;
- ``incomplete``: neither — killed, or still running; ``samples`` counts what it logged so far;
- ``missing``: in the grid of the sweep's ``multirun.yaml`` but never started (no directory).

Scores are also given in percent of the best score (``task.percent_scale``), so that benchmarks on
different scales (MME's 2000 points, accuracies in [0, 1]) can be averaged. Paired differences are
computed from the per-sample scores (``x100``: points of per-sample accuracy / ANLS; for MME that is
per-question accuracy, not the perception total) by :func:`redvtp_eval.report.paired.paired_difference`;
``paired_differences_pts`` keeps them, one per paired sample, for intervals over several benchmarks
(:func:`redvtp_eval.report.tables.rivals_table`). Cost per side, from ``metrics.json``: ``effective_visual_tokens``
(visual tokens averaged over every layer of every forward) and ``flops`` (mean total FLOPs per sample, analytic
model), empty for a job logged before they existed. ``budget`` is the job's ``budget`` key (a fraction of the
unpruned model's cost by its ``budget_metric``; :mod:`redvtp_eval.engine.budget`), None where its config has none
or null; ``calibrated_ratio`` is the ratio a budget job ran at (the ratio itself otherwise).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pandas as pd
import yaml

from redvtp_eval.harness.samples_log import SamplesLog
from redvtp_eval.report.paired import paired_difference

AXES = ("model", "task", "pruner", "ratio", "budget")
PER_SAMPLE_POINTS = 100
"""Per-sample scores lie in [0, 1] (accuracy, ANLS); differences are reported in points, x100."""


def grid_ratio(pruner: str, ratio: float) -> float:
    """The unpruned model has one ratio whatever the sweep says."""
    return 1.0 if pruner == "none" else float(ratio)


def grid_budget(pruner: str, budget) -> float | None:
    """A job's ``budget`` (a fraction of the unpruned cost; null: ``ratio`` decides); the unpruned model has none."""
    return None if pruner == "none" or budget is None or budget in ("null", "None") else float(budget)


def grid(composed: dict) -> set[tuple]:
    """(model, task, pruner, ratio, budget) of every job a composed multirun config (with its ``hydra`` node) asks
    for; ``budget`` is None where the config has none."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    hydra = composed["hydra"]
    axes = {key: [hydra["runtime"]["choices"][key]] for key in AXES[:3]}
    axes |= {"ratio": [composed["ratio"]], "budget": [composed.get("budget")]}
    declared = [f"{key}={value}" for key, value in (hydra["sweeper"]["params"] or {}).items()]
    for override in OverridesParser.create().parse_overrides(declared + list(hydra["overrides"]["task"])):
        key = override.key_or_group
        if key in AXES:
            values = override.sweep_string_iterator() if override.is_sweep_override() else None
            axes[key] = list(values) if values else [override.get_value_element_as_str()]
    return {
        (model, task, pruner, grid_ratio(pruner, ratio), grid_budget(pruner, budget))
        for model, task, pruner, ratio, budget in itertools.product(*(axes[key] for key in AXES))
    }


def expected_jobs(sweep_dir: Path) -> set[tuple]:
    """The grid of the sweep's ``multirun.yaml`` (written by Hydra when the sweep starts); empty without one."""
    path = sweep_dir / "multirun.yaml"
    return grid(yaml.safe_load(path.read_text())) if path.exists() else set()


def job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(path.parent for path in sweep_dir.rglob("config.yaml") if path.parent.name != ".hydra")


def _choices(job_dir: Path, config: dict) -> dict:
    hydra = job_dir / ".hydra" / "hydra.yaml"
    if hydra.exists():
        return yaml.safe_load(hydra.read_text())["hydra"]["runtime"]["choices"]
    return {"model": config["model"]["path"], "task": config["task"]["name"], "pruner": config["pruner"]["name"]}


def _logged(job_dir: Path) -> list[dict]:
    """The job's samples: its log, or while a data-parallel job runs, its ranks' logs."""
    merged = job_dir / "samples.jsonl"
    paths = [merged] if merged.exists() else sorted(job_dir.glob("samples.rank*.jsonl"))
    entries = {}
    for path in paths:
        for entry in SamplesLog(path).read():
            entries.setdefault((entry["task"], entry["doc_id"]), entry)
    return list(entries.values())


SUB_SCORE = "sub_score:"
"""Column prefix of a task's further aggregate scores (``sub_score:mme_cognition_score,none``; ``baseline_`` before
it for the unpruned side): one column each, so that the tidy table stays flat."""


def _numbers(metrics: dict, entries: list[dict], percent: float) -> dict:
    """The row of a finished job: both sides' score, latency and throughput, and the paired statistics."""
    pruned, unpruned = metrics["pruned"], metrics["unpruned"] or {}

    def pct(value):
        return None if value is None else value * percent

    paired = [(e["score"], e["baseline"]["score"]) for e in entries if e.get("baseline") and e.get("score") is not None]
    paired = [(a, b) for a, b in paired if b is not None]
    difference = paired_difference([a for a, _ in paired], [b for _, b in paired])
    differences = [(a - b) * PER_SAMPLE_POINTS for a, b in paired]
    points = {
        key: None if difference[key] is None else difference[key] * PER_SAMPLE_POINTS
        for key in ("mean", "ci_low", "ci_high")
    }
    return {
        "samples": metrics["samples"],
        "failed_samples": metrics["failed"],
        "score": pruned["score"],
        "baseline_score": unpruned.get("score"),
        "score_pct": pct(pruned["score"]),
        "baseline_pct": pct(unpruned.get("score")),
        "paired_n": difference["n"],
        "paired_delta_pts": points["mean"],
        "paired_ci_low_pts": points["ci_low"],
        "paired_ci_high_pts": points["ci_high"],
        "paired_p_value": difference["p_value"],
        "paired_differences_pts": differences,
        "latency_p50_s": pruned["latency_s"]["p50"],
        "latency_p90_s": pruned["latency_s"]["p90"],
        "latency_mean_s": pruned["latency_s"]["mean"],
        "baseline_latency_p50_s": (unpruned.get("latency_s") or {}).get("p50"),
        "speedup_p50": metrics["speedup_p50"],
        "tokens_per_s": pruned["tokens_per_s_gen_length"],
        "baseline_tokens_per_s": unpruned.get("tokens_per_s_gen_length"),
        "answer_tokens_per_s": pruned["tokens_per_s_answer"],
        "vision_p50_s": pruned["vision_s"]["p50"],
        "first_step_p50_s": pruned["first_step_s"]["p50"],
        "visual_tokens_before": pruned["visual_tokens_before"],
        "visual_tokens_after": pruned["visual_tokens_after"],
        "effective_visual_tokens": pruned.get("effective_visual_tokens"),
        "baseline_effective_visual_tokens": unpruned.get("effective_visual_tokens"),
        "flops": pruned.get("flops"),
        "baseline_flops": unpruned.get("flops"),
        "peak_memory_gib": pruned["peak_memory_gib"],
        "unparseable": pruned.get("unparseable"),
        "baseline_unparseable": unpruned.get("unparseable"),
        **{f"{SUB_SCORE}{metric}": value for metric, value in (pruned.get("sub_scores") or {}).items()},
        **{f"baseline_{SUB_SCORE}{metric}": value for metric, value in (unpruned.get("sub_scores") or {}).items()},
    }


def job_row(job_dir: Path) -> dict:
    config = yaml.safe_load((job_dir / "config.yaml").read_text())
    choices = _choices(job_dir, config)
    pruner = config["pruner"]["name"]
    row = {
        "model": choices["model"],
        "task": config["task"]["name"],
        "pruner": pruner,
        "ratio": grid_ratio(pruner, config["ratio"]),
        "budget": grid_budget(pruner, config.get("budget")),
        "metric": config["task"]["metric"],
        "percent_scale": config["task"].get("percent_scale", 1.0),
        "job_dir": str(job_dir),
        "error": None,
    }
    entries = _logged(job_dir)
    if (job_dir / "metrics.json").exists():
        metrics = json.loads((job_dir / "metrics.json").read_text())
        calibrated = metrics.get("ratio") if row["budget"] is not None else row["ratio"]
        return (
            row | {"status": "done", "calibrated_ratio": calibrated} | _numbers(metrics, entries, row["percent_scale"])
        )
    if (job_dir / "failed.json").exists():
        row |= {"status": "failed", "error": json.loads((job_dir / "failed.json").read_text())["error"]}
    else:
        row["status"] = "incomplete"
    return row | {"samples": len(entries)}


def collect(sweep_dir: Path) -> pd.DataFrame:
    """One row per job: every job found in ``sweep_dir``, plus a ``missing`` row per grid cell never started."""
    rows = [job_row(job_dir) for job_dir in job_dirs(sweep_dir)]
    found = {tuple(row[key] for key in AXES) for row in rows}
    missing = sorted(expected_jobs(sweep_dir) - found, key=str)
    rows += [dict(zip(AXES, key)) | {"status": "missing"} for key in missing]
    table = pd.DataFrame(rows)
    return table.sort_values(
        ["model", "pruner", "task", "ratio"], ascending=[True, True, True, False], ignore_index=True
    )
