"""Paper-style tables from a sweep's tidy job table: one per model and pruner, plus the paired statistics.

Where it sits: :mod:`redvtp_eval.report.report` calls :func:`paper_table` and :func:`paired_table` on the
output of :func:`redvtp_eval.report.sweep.collect` and writes each as Markdown, LaTeX and CSV.

Paper table: rows are the unpruned model, then each ratio r; columns are each benchmark's score (in
percent of its best score), their average, p50 latency, throughput (``gen_length`` tokens/s), and the
change against the unpruned model. Every change is taken inside a job — pruned and unpruned ran on the
same samples, alternating — then averaged over the benchmarks: points for scores, percent for latency
and throughput, and the geometric mean of the per-benchmark speed-ups. The unpruned row pools the
paired unpruned runs of all the jobs of a benchmark. A benchmark whose job is not ``done`` shows its
status instead of a number, and the row's averages stay empty: a missing job is never a zero.
"""

from __future__ import annotations

import math

import pandas as pd

from redvtp_eval.report.sweep import SUB_SCORE

BENCHMARKS = {
    "ai2d": "AI2D",
    "realworldqa": "RealWorldQA",
    "infovqa_val": "InfoVQA",
    "docvqa_val": "DocVQA",
    "mme": "MME",
    "mmbench_en_dev": "MMBench",
}
"""The paper's benchmarks in its column order, with their display names; other tasks follow by name."""

SUMMARY_COLUMNS = {
    "avg": "Avg",
    "delta_avg_pts": "Δ Avg (pts)",
    "latency_s": "Latency p50 (s)",
    "delta_latency_pct": "Δ Latency (%)",
    "tokens_per_s": "Tokens/s",
    "delta_tokens_per_s_pct": "Δ Tokens/s (%)",
    "speedup": "Speed-up (×)",
}


def task_order(tasks) -> list[str]:
    known = [task for task in BENCHMARKS if task in set(tasks)]
    return known + sorted(set(tasks) - set(known))


def label(task: str) -> str:
    return BENCHMARKS.get(task, task)


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values and not any(pd.isna(v) for v in values) else math.nan


def _geometric_mean(values) -> float:
    values = list(values)
    if not values or any(pd.isna(v) for v in values):
        return math.nan
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _status(row: pd.Series) -> str:
    if row["status"] == "incomplete":
        return f"incomplete ({int(row['samples'])} logged)"
    return row["status"]


def paper_table(jobs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(numbers, display) for the jobs of one model and pruner; display cells name a job's status if not done."""
    tasks = task_order(jobs["task"].unique())
    done = jobs[jobs["status"] == "done"]
    numbers, display = [], []

    unpruned = {task: done[done["task"] == task] for task in tasks}
    row = {task: _mean(unpruned[task]["baseline_pct"]) if len(unpruned[task]) else math.nan for task in tasks}
    row |= {
        "avg": _mean(row[task] for task in tasks),
        "latency_s": _mean(frame["baseline_latency_p50_s"].median() for frame in unpruned.values()),
        "tokens_per_s": _mean(frame["baseline_tokens_per_s"].mean() for frame in unpruned.values()),
    }
    numbers.append({"setting": "unpruned"} | row)
    display.append(
        {"setting": "unpruned"} | {task: "—" if pd.isna(row[task]) else f"{row[task]:.1f}" for task in tasks}
    )

    for ratio in sorted(jobs["ratio"].unique(), reverse=True):
        at_ratio = {task: jobs[(jobs["ratio"] == ratio) & (jobs["task"] == task)] for task in tasks}
        cells, shown = {}, {}
        for task, frame in at_ratio.items():
            job = frame.iloc[0] if len(frame) else None
            cells[task] = job if job is not None and job["status"] == "done" else None
            shown[task] = (
                "missing" if job is None else f"{job['score_pct']:.1f}" if cells[task] is not None else _status(job)
            )
        finished = [job for job in cells.values() if job is not None]
        complete = len(finished) == len(tasks)

        def over(value, combine=_mean):
            return combine(value(job) for job in finished) if complete else math.nan

        row = {task: math.nan if job is None else job["score_pct"] for task, job in cells.items()}
        row |= {
            "avg": over(lambda job: job["score_pct"]),
            "delta_avg_pts": over(lambda job: job["score_pct"] - job["baseline_pct"]),
            "latency_s": over(lambda job: job["latency_p50_s"]),
            "delta_latency_pct": over(lambda job: 100 * (job["latency_p50_s"] / job["baseline_latency_p50_s"] - 1)),
            "tokens_per_s": over(lambda job: job["tokens_per_s"]),
            "delta_tokens_per_s_pct": over(lambda job: 100 * (job["tokens_per_s"] / job["baseline_tokens_per_s"] - 1)),
            "speedup": over(lambda job: job["speedup_p50"], _geometric_mean),
        }
        numbers.append({"setting": f"r={ratio:g}"} | row)
        display.append({"setting": f"r={ratio:g}"} | shown)

    numbers = pd.DataFrame(numbers)
    shown = pd.DataFrame(display)
    formats = {
        "avg": "{:.1f}",
        "delta_avg_pts": "{:+.1f}",
        "latency_s": "{:.3f}",
        "delta_latency_pct": "{:+.1f}",
        "tokens_per_s": "{:.1f}",
        "delta_tokens_per_s_pct": "{:+.1f}",
        "speedup": "{:.2f}",
    }
    for column, spec in formats.items():
        shown[column] = [("—" if pd.isna(value) else spec.format(value)) for value in numbers[column]]
    headers = {"setting": "Setting"} | {task: label(task) for task in tasks} | SUMMARY_COLUMNS
    return numbers, shown.rename(columns=headers)


def _pair(pruned, unpruned, spec: str = "") -> str:
    shown = ["—" if value is None or pd.isna(value) else format(value, spec) for value in (pruned, unpruned)]
    return " / ".join(shown)


def paired_table(jobs: pd.DataFrame) -> pd.DataFrame:
    """Per benchmark and ratio: both sides' scores, the paired difference with its 95% bootstrap interval."""
    rows = []
    for task in task_order(jobs["task"].unique()):
        for _, job in jobs[jobs["task"] == task].sort_values("ratio", ascending=False).iterrows():
            row = {"Benchmark": label(task), "r": f"{job['ratio']:g}", "Status": _status(job)}
            if job["status"] == "done":
                interval = (
                    "—"
                    if pd.isna(job["paired_ci_low_pts"])
                    else f"[{job['paired_ci_low_pts']:+.1f}, {job['paired_ci_high_pts']:+.1f}]"
                )
                row |= {
                    "Score (%)": f"{job['score_pct']:.1f}",
                    "Unpruned (%)": f"{job['baseline_pct']:.1f}",
                    "Δ per sample (pts)": "—"
                    if pd.isna(job["paired_delta_pts"])
                    else f"{job['paired_delta_pts']:+.1f}",
                    "95% CI": interval,
                    "p (paired t)": "—" if pd.isna(job["paired_p_value"]) else f"{job['paired_p_value']:.3g}",
                    "n": int(job["paired_n"]),
                    "p50 s": f"{job['latency_p50_s']:.3f}",
                    "Unpruned p50 s": f"{job['baseline_latency_p50_s']:.3f}",
                    "Speed-up (×)": f"{job['speedup_p50']:.2f}",
                    "Visual tokens": f"{job['visual_tokens_before']:.0f} → {job['visual_tokens_after']:.0f}",
                    "Unparseable (pruned / unpruned)": _pair(job.get("unparseable"), job.get("baseline_unparseable")),
                    "Sub-scores (pruned / unpruned)": "; ".join(
                        f"{column.removeprefix(SUB_SCORE).split(',')[0]} "
                        f"{_pair(job[column], job.get(f'baseline_{column}'), '.1f')}"
                        for column in job.index
                        if column.startswith(SUB_SCORE) and not pd.isna(job[column])
                    ),
                }
            rows.append(row)
    return pd.DataFrame(rows).fillna("")
