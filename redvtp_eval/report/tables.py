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

Rivals table (:func:`rivals_table`): the same for every pruner of one model at once, rows pruner × setting
(``r=<ratio>``, or ``b=<budget>`` for a job with a ``budget``), with what a matched-cost comparison needs:
the paired change per sample with its stratified 95% interval, FLOPs relative to the unpruned model and the
effective visual tokens.
"""

from __future__ import annotations

import math

import pandas as pd

from redvtp_eval.pruners import PRUNERS
from redvtp_eval.report.paired import stratified_difference
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


def in_order(names, known) -> list[str]:
    """``names`` in the order of ``known``, then any other name alphabetically."""
    listed = [name for name in known if name in set(names)]
    return listed + sorted(set(names) - set(listed))


def task_order(tasks) -> list[str]:
    """The paper's column order (:data:`BENCHMARKS`), then other tasks by name."""
    return in_order(tasks, BENCHMARKS)


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


def _row_cells(frames: dict) -> tuple[dict, dict, list, bool]:
    """One table row's cells from each task's jobs: (task → the done job or None, task → what the cell shows —
    the score, ``missing`` or the job's status —, the done jobs, whether every task is done)."""
    cells, shown = {}, {}
    for task, frame in frames.items():
        job = frame.iloc[0] if len(frame) else None
        cells[task] = job if job is not None and job["status"] == "done" else None
        shown[task] = (
            "missing" if job is None else f"{job['score_pct']:.1f}" if cells[task] is not None else _status(job)
        )
    finished = [job for job in cells.values() if job is not None]
    return cells, shown, finished, len(finished) == len(frames)


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
        cells, shown, finished, complete = _row_cells(at_ratio)

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


RIVALS_COLUMNS = {
    "avg": "Avg",
    "delta_avg_pts": "Δ Avg (pts)",
    "delta_per_sample": "Δ per sample (pts) [95% CI]",
    "flops_pct": "FLOPs (% of unpruned)",
    "effective_visual_tokens": "Effective visual tokens",
    "latency_s": "Latency p50 (s)",
    "tokens_per_s": "Tokens/s",
}
RIVALS_FORMATS = {
    "avg": "{:.1f}",
    "delta_avg_pts": "{:+.1f}",
    "flops_pct": "{:.1f}",
    "effective_visual_tokens": "{:.1f}",
    "latency_s": "{:.3f}",
    "tokens_per_s": "{:.1f}",
}


def pruner_order(pruners) -> list[str]:
    """The registry's order (``redvtp_eval.pruners.PRUNERS``), then any other name alphabetically."""
    return in_order(pruners, PRUNERS)


def setting(job) -> str:
    """A row's key: its budget (visual tokens kept) where the job has one, else its ratio."""
    budget = job.get("budget")
    return f"b={budget:g}" if budget is not None and not pd.isna(budget) else f"r={job['ratio']:g}"


def _settings(frame: pd.DataFrame) -> list[str]:
    """Ratio rows from the largest ratio down, then budget rows from the largest budget down."""
    keys = {}
    for _, job in frame.iterrows():
        budget = job.get("budget")
        has_budget = budget is not None and not pd.isna(budget)
        keys[setting(job)] = (1, -budget) if has_budget else (0, -job["ratio"])
    return sorted(keys, key=keys.get)


def _ratio(value, reference) -> float:
    """value / reference, empty where either is missing (a job logged before FLOPs were recorded)."""
    return math.nan if value is None or reference is None or pd.isna(value) or pd.isna(reference) else value / reference


def _differences(job) -> list[float]:
    """A job's per-sample paired differences (none for a table read back from CSV, which leaves them out)."""
    values = job.get("paired_differences_pts")
    return [] if values is None or (isinstance(values, float) and math.isnan(values)) else list(values)


def _interval(estimate: dict) -> str:
    if estimate["mean"] is None:
        return "—"
    if estimate["ci_low"] is None:
        return f"{estimate['mean']:+.1f}"
    return f"{estimate['mean']:+.1f} [{estimate['ci_low']:+.1f}, {estimate['ci_high']:+.1f}]"


def rivals_table(jobs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(numbers, display) for the jobs of one model, every pruner: rows pruner × setting after the unpruned row.

    Per row, over the benchmarks (each weighing the same): score in percent of the best and their average;
    ``delta_avg_pts``, the mean of each job's score − its paired unpruned score; ``delta_per_sample_pts`` with
    ``delta_ci_low_pts`` / ``delta_ci_high_pts``, the mean per-sample paired difference and its stratified 95%
    bootstrap interval (:func:`~redvtp_eval.report.paired.stratified_difference`; per-sample accuracy / ANLS,
    for MME per-question accuracy, so it equals ``delta_avg_pts`` where a score is its samples' mean);
    ``flops_pct``, 100 × the geometric mean of each job's FLOPs / its unpruned FLOPs (both sides measured on
    the same samples); ``effective_visual_tokens``, ``latency_s`` (p50) and ``tokens_per_s``, means over the
    benchmarks. The unpruned row pools the paired unpruned runs of every job of the model, as
    :func:`paper_table` does. A benchmark whose job is not ``done`` shows its status and empties the averages.
    """
    tasks = task_order(jobs["task"].unique())
    done = jobs[jobs["status"] == "done"]
    unpruned = {task: done[done["task"] == task] for task in tasks}

    def pooled(column: str, combine: str = "mean") -> float:
        if any(frame.empty for frame in unpruned.values()):
            return math.nan
        return _mean(getattr(frame[column], combine)() for frame in unpruned.values())

    row = {task: _mean(frame["baseline_pct"]) if len(frame) else math.nan for task, frame in unpruned.items()}
    row |= {
        "avg": _mean(row[task] for task in tasks),
        "delta_avg_pts": math.nan,
        "delta_per_sample_pts": math.nan,
        "delta_ci_low_pts": math.nan,
        "delta_ci_high_pts": math.nan,
        "flops_pct": 100.0 if not math.isnan(pooled("baseline_flops")) else math.nan,
        "effective_visual_tokens": pooled("baseline_effective_visual_tokens"),
        "latency_s": pooled("baseline_latency_p50_s", "median"),
        "tokens_per_s": pooled("baseline_tokens_per_s"),
    }
    numbers = [{"pruner": "none", "setting": "unpruned", "ratio": 1.0, "budget": math.nan} | row]
    display = [
        {"pruner": "none", "setting": "unpruned"}
        | {task: "—" if pd.isna(row[task]) else f"{row[task]:.1f}" for task in tasks}
        | {"delta_per_sample": "—"}
    ]

    for pruner in pruner_order(jobs["pruner"].unique()):
        of_pruner = jobs[jobs["pruner"] == pruner]
        keys = [setting(job) for _, job in of_pruner.iterrows()]
        for key in _settings(of_pruner):
            at_setting = of_pruner[[k == key for k in keys]]
            cells, shown, finished, complete = _row_cells(
                {task: at_setting[at_setting["task"] == task] for task in tasks}
            )

            def over(value, combine=_mean, finished=finished, complete=complete):
                return combine(value(job) for job in finished) if complete else math.nan

            per_sample = stratified_difference([_differences(job) for job in finished])
            if not complete:
                per_sample = {"mean": None, "ci_low": None, "ci_high": None}
            first = at_setting.iloc[0]
            row = {task: math.nan if job is None else job["score_pct"] for task, job in cells.items()}
            row |= {
                "avg": over(lambda job: job["score_pct"]),
                "delta_avg_pts": over(lambda job: job["score_pct"] - job["baseline_pct"]),
                "delta_per_sample_pts": math.nan if per_sample["mean"] is None else per_sample["mean"],
                "delta_ci_low_pts": math.nan if per_sample["ci_low"] is None else per_sample["ci_low"],
                "delta_ci_high_pts": math.nan if per_sample["ci_high"] is None else per_sample["ci_high"],
                "flops_pct": 100 * over(lambda job: _ratio(job["flops"], job["baseline_flops"]), _geometric_mean),
                "effective_visual_tokens": over(lambda job: job["effective_visual_tokens"]),
                "latency_s": over(lambda job: job["latency_p50_s"]),
                "tokens_per_s": over(lambda job: job["tokens_per_s"]),
            }
            budget = math.nan if first.get("budget") is None else first["budget"]
            numbers.append({"pruner": pruner, "setting": key, "ratio": first["ratio"], "budget": budget} | row)
            display.append({"pruner": pruner, "setting": key} | shown | {"delta_per_sample": _interval(per_sample)})

    numbers = pd.DataFrame(numbers)
    shown = pd.DataFrame(display)
    for column, spec in RIVALS_FORMATS.items():
        shown[column] = [("—" if pd.isna(value) else spec.format(value)) for value in numbers[column]]
    headers = {"pruner": "Pruner", "setting": "Setting"} | {task: label(task) for task in tasks} | RIVALS_COLUMNS
    return numbers, shown[list(headers)].rename(columns=headers)
