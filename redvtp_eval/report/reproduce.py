"""python -m redvtp_eval.report.reproduce [--smoke] [--out results] [overrides...]   (make reproduce-tables [SMOKE=1])

The paper's tables from nothing but this repository and the inputs it names:

1. checks that every checkpoint and dataset of the grid (``configs/experiment/paper_tables.yaml``, or
   ``smoke_tables.yaml`` with ``--smoke``: the toy model on the offline toy tasks) is here, and lists
   everything missing with how to fetch it, before any job starts;
2. runs the grid as one Hydra sweep, ``python -m redvtp_eval experiment=<grid>``, into a fixed sweep
   directory, so that running this again resumes where it stopped;
3. aggregates the sweep with :func:`redvtp_eval.report.report` into ``<out>/tables`` and ``<out>/figures``.

Extra arguments are Hydra overrides for every job (``limit=8``, ``wandb.mode=disabled``,
``hydra/launcher=slurm``…). The exit status is the sweep's: non-zero when a job failed, after the
report has shown which.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from redvtp_eval.harness.job import (
    JobError,
    check_family,
    check_limit,
    checkpoint_path,
    lmms_task_of,
    load_task,
    task_manager_for,
)
from redvtp_eval.models.checkpoint import CheckpointError
from redvtp_eval.report.report import report
from redvtp_eval.report.sweep import grid

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def compose_job(overrides: list[str]):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=True)


def missing_inputs(experiment: str, overrides: list[str]) -> list[str]:
    """One line per checkpoint or dataset of the grid that is not here, saying how to get it."""
    sweep = OmegaConf.to_container(compose_job([f"experiment={experiment}", *overrides]), resolve=False)
    problems, checked, task_managers = [], set(), {}

    def check_task(cfg) -> None:
        if cfg.task.offline not in task_managers:
            task_managers[cfg.task.offline] = task_manager_for(cfg)
        load_task(task_managers[cfg.task.offline], lmms_task_of(cfg)[0])

    for model, task, _, _ in sorted(grid(sweep)):
        cfg = compose_job([f"experiment={experiment}", *overrides, f"model={model}", f"task={task}"])
        try:
            check_family(cfg)
            check_limit(cfg)
        except JobError as error:
            problems.append(f"model {model} on task {task}: {error}")
            continue
        for kind, name, check in (
            ("model", model, lambda: checkpoint_path(cfg)),
            ("task", task, lambda: check_task(cfg)),
        ):
            if (kind, name) in checked:
                continue
            checked.add((kind, name))
            try:
                check()
            except (CheckpointError, JobError) as error:
                problems.append(f"{kind} {name}: {error}")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="the toy model on the offline toy tasks (CPU, minutes)")
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every job of the sweep")
    args = parser.parse_args()
    experiment = "smoke_tables" if args.smoke else "paper_tables"

    problems = missing_inputs(experiment, args.overrides)
    if problems:
        print(f"error: {len(problems)} input(s) of the {experiment} grid are missing:", file=sys.stderr)
        print("\n".join(f"- {problem}" for problem in problems), file=sys.stderr)
        sys.exit(2)
    swept = subprocess.run([sys.executable, "-m", "redvtp_eval", f"experiment={experiment}", *args.overrides])
    cfg = compose_job([f"experiment={experiment}", *args.overrides])
    report(Path(cfg.results_dir), args.out, cfg.wandb.mode, cfg.wandb.project, cfg.wandb.entity)
    sys.exit(swept.returncode)


if __name__ == "__main__":
    main()
