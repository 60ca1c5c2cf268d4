"""The figures a reader of a sweep wants: score vs ratio, speed-up vs ratio, and the accuracy–latency front;
across pruners, the accuracy–FLOPs and accuracy–latency fronts.

Where it sits: :mod:`redvtp_eval.report.report` calls :func:`draw_all` with the jobs of one model and pruner
(from :func:`redvtp_eval.report.sweep.collect`) and the numbers of its paper table, and :func:`draw_rivals`
with the numbers of one model's rivals table; only finished jobs are drawn, so a missing job is a gap in a
line, never a point at zero.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from redvtp_eval.report.sweep import PER_SAMPLE_POINTS  # noqa: E402
from redvtp_eval.report.tables import label, task_order  # noqa: E402


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def score_vs_ratio(jobs: pd.DataFrame, title: str, path: Path) -> Path:
    """One panel per benchmark: pruned score, the unpruned score dashed.

    Error bars: the paired 95% interval of the difference, where the benchmark's score is the mean of its
    per-sample scores (so that the interval is on the score's scale; not MME's or MMBench's aggregates).
    """
    tasks = task_order(jobs["task"].unique())
    columns = min(3, len(tasks))
    rows = math.ceil(len(tasks) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.2 * rows), squeeze=False)
    for axis, task in zip(axes.flat, tasks):
        done = jobs[(jobs["task"] == task) & (jobs["status"] == "done")].sort_values("ratio")
        if len(done):
            same_scale = done["percent_scale"] == PER_SAMPLE_POINTS
            below = (done["paired_delta_pts"] - done["paired_ci_low_pts"]).where(same_scale).fillna(0)
            above = (done["paired_ci_high_pts"] - done["paired_delta_pts"]).where(same_scale).fillna(0)
            axis.errorbar(done["ratio"], done["score_pct"], yerr=[below, above], marker="o", capsize=3, label="pruned")
            axis.axhline(done["baseline_pct"].mean(), linestyle="--", color="grey", label="unpruned")
        axis.set_title(label(task))
        axis.set_xlabel("ratio r (visual tokens kept)")
        axis.set_ylabel("score (% of best)")
        axis.invert_xaxis()
    for axis in list(axes.flat)[len(tasks) :]:
        axis.set_visible(False)
    axes.flat[0].legend()
    figure.suptitle(title)
    return _save(figure, path)


def speedup_vs_ratio(jobs: pd.DataFrame, title: str, path: Path) -> Path:
    """Paired p50 speed-up per benchmark against r; 1× (no gain) dotted."""
    figure, axis = plt.subplots(figsize=(6, 4))
    for task in task_order(jobs["task"].unique()):
        done = jobs[(jobs["task"] == task) & (jobs["status"] == "done")].sort_values("ratio")
        axis.plot(done["ratio"], done["speedup_p50"], marker="o", label=label(task))
    axis.axhline(1.0, linestyle=":", color="grey")
    axis.set_xlabel("ratio r (visual tokens kept)")
    axis.set_ylabel("speed-up (unpruned p50 / pruned p50)")
    axis.invert_xaxis()
    axis.legend()
    axis.set_title(title)
    return _save(figure, path)


def pareto_front(points: pd.DataFrame, cost: str = "latency_s", score: str = "avg") -> pd.DataFrame:
    """The points no other point beats on both ``cost`` (lower) and ``score`` (higher), by cost.

    A point is dominated when another costs no more and scores no less, one of the two strictly; of identical
    points one stays. Sorted by cost (ties: best score first), a point is on the front when it scores more
    than every cheaper one.
    """
    ordered = points.sort_values([cost, score], ascending=[True, False])
    front, best = [], -math.inf
    for _, point in ordered.iterrows():
        if point[score] > best:
            front.append(point)
            best = point[score]
    return pd.DataFrame(front)


def accuracy_latency(table: pd.DataFrame, title: str, path: Path) -> Path:
    """Average score against mean p50 latency for the unpruned model and every complete ratio, with the front."""
    points = table.dropna(subset=["avg", "latency_s"])
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.scatter(points["latency_s"], points["avg"])
    for _, point in points.iterrows():
        axis.annotate(point["setting"], (point["latency_s"], point["avg"]), textcoords="offset points", xytext=(4, 4))
    if len(points):
        front = pareto_front(points, "latency_s", "avg")
        axis.step(front["latency_s"], front["avg"], where="post", color="tab:red", label="Pareto front")
        axis.legend()
    axis.set_xlabel("latency p50 (s, mean over benchmarks)")
    axis.set_ylabel("average score (% of best)")
    axis.set_title(title)
    return _save(figure, path)


def draw_all(jobs: pd.DataFrame, table: pd.DataFrame, title: str, stem: Path) -> list[Path]:
    return [
        score_vs_ratio(jobs, title, stem.with_name(f"{stem.name}-scores.png")),
        speedup_vs_ratio(jobs, title, stem.with_name(f"{stem.name}-speedup.png")),
        accuracy_latency(table, title, stem.with_name(f"{stem.name}-pareto.png")),
    ]


RIVALS_AXES = {
    "flops": ("flops_pct", "FLOPs per sample (% of unpruned, geometric mean over benchmarks)"),
    "latency": ("latency_s", "latency p50 (s, mean over benchmarks)"),
}
MARKERS = "osD^v<>pPX*h"


def rivals_front(table: pd.DataFrame, kind: str, title: str, path: Path) -> Path:
    """Average score against cost (``kind``: flops or latency) for every pruner and setting of one model's
    :func:`~redvtp_eval.report.tables.rivals_table`: a marker and colour per pruner, the unpruned point, and
    the front of non-dominated points over all of them. Rows with an empty cost or average are not drawn."""
    cost, axis_label = RIVALS_AXES[kind]
    points = table.dropna(subset=["avg", cost])
    figure, axis = plt.subplots(figsize=(7, 4.5))
    pruners = [name for name in dict.fromkeys(points["pruner"]) if name != "none"]
    colours = plt.get_cmap("tab10")
    for index, pruner in enumerate(pruners):
        own = points[points["pruner"] == pruner]
        marker, colour = MARKERS[index % len(MARKERS)], colours(index % 10)
        axis.scatter(own[cost], own["avg"], marker=marker, color=colour, label=pruner)
        for _, point in own.iterrows():
            where = (point[cost], point["avg"])
            axis.annotate(point["setting"], where, textcoords="offset points", xytext=(3, 3), fontsize=7)
    unpruned = points[points["pruner"] == "none"]
    axis.scatter(unpruned[cost], unpruned["avg"], marker="*", s=160, color="black", label="unpruned", zorder=3)
    if len(points):
        front = pareto_front(points, cost, "avg")
        axis.step(front[cost], front["avg"], where="post", color="tab:red", linewidth=1, zorder=1)
        axis.scatter(front[cost], front["avg"], s=150, facecolors="none", edgecolors="tab:red", label="Pareto front")
    axis.set_xlabel(axis_label)
    axis.set_ylabel("average score (% of best)")
    axis.set_title(title)
    axis.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(figure, path)


def draw_rivals(table: pd.DataFrame, title: str, stem: Path) -> list[Path]:
    return [rivals_front(table, kind, title, stem.with_name(f"{stem.name}-{kind}.png")) for kind in RIVALS_AXES]
