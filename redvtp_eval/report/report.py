"""python -m redvtp_eval.report SWEEP_DIR [--out results] [--wandb offline|online|disabled]

Aggregates a finished or partial sweep of ``python -m redvtp_eval`` (any sweep directory: the paper grid
of ``make reproduce-tables``, its smoke version, or your own ``-m`` sweep) into

- ``<out>/tables/<sweep>/jobs.csv`` and ``jobs.parquet``: the tidy table, one row per job of the grid,
  with its status (done, failed, incomplete, missing) and numbers (:mod:`redvtp_eval.report.sweep`); the
  per-sample paired differences (``paired_differences_pts``) are in the parquet file only;
- ``<out>/tables/<sweep>/<model>-<pruner>.{md,tex,csv}``: the paper-style table (:mod:`redvtp_eval.report.tables`),
  and ``<model>-<pruner>-paired.{md,csv}``: the paired differences with 95% bootstrap intervals;
- ``<out>/figures/<sweep>/<model>-<pruner>-{scores,speedup,pareto}.png`` (:mod:`redvtp_eval.report.plots`);
- for a model with more than one pruner in the sweep, ``<out>/tables/<sweep>/<model>-rivals.{md,tex,csv}``: every
  pruner × setting with Δ and its paired interval, FLOPs, effective visual tokens, latency and throughput
  (:func:`redvtp_eval.report.tables.rivals_table`), and ``<out>/figures/<sweep>/<model>-rivals-{flops,latency}.png``:
  the accuracy–FLOPs and accuracy–latency fronts across pruners;
- one W&B summary run in the sweep's group with all of it; with ``--wandb online`` and an API key, also
  an online W&B report (``wandb-workspaces``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from redvtp_eval.harness.tracking import log_sweep
from redvtp_eval.report.plots import draw_all, draw_rivals
from redvtp_eval.report.sweep import collect
from redvtp_eval.report.tables import paired_table, paper_table, rivals_table

CAPTION = (
    "Scores in percent of each benchmark's best score. Changes are paired inside each job (pruned and "
    "unpruned on the same samples, alternating), then averaged over benchmarks; speed-up is the geometric "
    "mean of the per-benchmark p50 speed-ups. Tokens/s counts `gen_length` tokens. The unpruned row pools "
    "the paired unpruned runs. A cell naming a status (missing, failed, incomplete) is a job without "
    "results; averages over a row with such a cell are left empty."
)
RIVALS_CAPTION = (
    "Every pruner against the unpruned model it was paired with, rows pruner × setting (r: fraction of visual "
    "tokens kept, b: budget). Scores in percent of each benchmark's best score; Δ Avg is the mean over benchmarks "
    "of each job's score minus its paired unpruned score; Δ per sample is the mean over benchmarks of the mean "
    "per-sample paired difference (points of accuracy or ANLS; MME per question) with its 95% stratified "
    "percentile-bootstrap interval (each benchmark resampled within itself). FLOPs: 100 × the geometric mean over "
    "benchmarks of pruned / unpruned mean FLOPs per sample (analytic model). Effective visual tokens: visual "
    "tokens averaged over every layer of every forward, mean over benchmarks; latency p50 and Tokens/s "
    "(`gen_length` tokens) likewise. The unpruned row pools the paired unpruned runs of every job. A cell naming "
    "a status is a job without results; the row's averages are then left empty."
)


def markdown(table: pd.DataFrame) -> str:
    return table.to_markdown(index=False, disable_numparse=True)


def wandb_settings(mode: str, project: str, entity: str | None) -> OmegaConf:
    """Online needs an API key; without one the summary run stays offline and the report is skipped."""
    if mode == "online":
        import wandb

        if not (os.environ.get("WANDB_API_KEY") or wandb.api.api_key):
            print("W&B report skipped: no API key (set WANDB_API_KEY); the summary run is written offline.")
            mode = "offline"
    elif mode == "offline":
        print("W&B report skipped: it needs --wandb online and an API key; the summary run is written offline.")
    return OmegaConf.create({"mode": mode, "project": project, "entity": entity, "group": None})


def report(sweep_dir: Path, out: Path, wandb_mode: str = "offline", project: str = "redvtp-eval", entity=None) -> dict:
    """Write every table and figure of ``sweep_dir`` under ``out``; returns the paths written, by kind."""
    sweep = sweep_dir.resolve().name
    tables_dir, figures_dir = out / "tables" / sweep, out / "figures" / sweep
    tables_dir.mkdir(parents=True, exist_ok=True)
    figures_dir.mkdir(parents=True, exist_ok=True)
    jobs = collect(sweep_dir)
    listed = jobs.drop(columns="paired_differences_pts", errors="ignore")  # one number per sample: parquet only
    listed.to_csv(tables_dir / "jobs.csv", index=False)
    jobs.to_parquet(tables_dir / "jobs.parquet", index=False)
    written = {"tables": [tables_dir / "jobs.csv", tables_dir / "jobs.parquet"], "figures": []}
    logged = {"jobs": listed}
    for (model, pruner), group in jobs.groupby(["model", "pruner"], sort=True):
        stem = f"{model}-{pruner}"
        numbers, shown = paper_table(group)
        paired = paired_table(group)
        numbers.to_csv(tables_dir / f"{stem}.csv", index=False)
        paired.to_csv(tables_dir / f"{stem}-paired.csv", index=False)
        (tables_dir / f"{stem}.tex").write_text(
            shown.to_latex(index=False, escape=True, caption=CAPTION, label=f"tab:{stem}")
        )
        (tables_dir / f"{stem}.md").write_text(
            f"# {model}, {pruner}\n\n{CAPTION}\n\n{markdown(shown)}\n\n"
            "## Paired differences per benchmark\n\n"
            "Mean per-sample difference (pruned − unpruned, points of per-sample accuracy or ANLS; for MME "
            "per-question accuracy) with its 95% percentile-bootstrap interval and lmms-eval's paired t-test.\n\n"
            f"{markdown(paired)}\n"
        )
        (tables_dir / f"{stem}-paired.md").write_text(markdown(paired) + "\n")
        written["tables"] += [tables_dir / f"{stem}.{kind}" for kind in ("md", "tex", "csv")]
        written["figures"] += draw_all(group, numbers, f"{model}, {pruner}", figures_dir / stem)
        logged |= {stem: shown, f"{stem}-paired": paired}
    for model, group in jobs.groupby("model", sort=True):
        if group["pruner"].nunique() < 2:
            continue
        stem = f"{model}-rivals"
        numbers, shown = rivals_table(group)
        numbers.to_csv(tables_dir / f"{stem}.csv", index=False)
        (tables_dir / f"{stem}.tex").write_text(
            shown.to_latex(index=False, escape=True, caption=RIVALS_CAPTION, label=f"tab:{stem}")
        )
        (tables_dir / f"{stem}.md").write_text(f"# {model}, all pruners\n\n{RIVALS_CAPTION}\n\n{markdown(shown)}\n")
        written["tables"] += [tables_dir / f"{stem}.{kind}" for kind in ("md", "tex", "csv")]
        written["figures"] += draw_rivals(numbers, f"{model}, all pruners", figures_dir / stem)
        logged[stem] = shown
    settings = wandb_settings(wandb_mode, project, entity)
    log_sweep(settings, sweep_dir, sweep, logged, written["figures"])
    counts = jobs["status"].value_counts().to_dict()
    print(f"{sweep}: " + ", ".join(f"{count} {status}" for status, count in sorted(counts.items())))
    print(f"tables: {tables_dir}\nfigures: {figures_dir}")
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--wandb", choices=("offline", "online", "disabled"), default="offline")
    parser.add_argument("--wandb-project", default="redvtp-eval")
    parser.add_argument("--wandb-entity")
    args = parser.parse_args()
    if not args.sweep_dir.is_dir():
        parser.exit(2, f"error: {args.sweep_dir} is not a directory\n")
    report(args.sweep_dir, args.out, args.wandb, args.wandb_project, args.wandb_entity)
