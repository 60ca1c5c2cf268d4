"""python -m redvtp_eval.report.reproduce [--smoke] [--grids ...] [--sweeps-dir DIR] [--out results] [overrides...]
(make reproduce-tables [SMOKE=1] [GRIDS=...])

The paper's tables, and the rivals table across pruners, from nothing but this repository and the inputs it names:

1. checks that every checkpoint and dataset of the grids (``configs/experiment/paper_tables.yaml`` and
   ``rivals.yaml``, or with ``--smoke`` ``smoke_tables.yaml`` and ``smoke_rivals.yaml``: the toy model on the
   offline toy tasks) is here, and lists everything missing with how to fetch it, before any job starts;
2. runs each grid as one Hydra sweep, ``python -m redvtp_eval experiment=<grid>``, into a fixed sweep
   directory (the grid's ``results_dir``, or ``<sweeps-dir>/<grid>``), so that running this again resumes
   where it stopped;
3. aggregates each sweep with :func:`redvtp_eval.report.report` into ``<out>/tables/<grid>`` and
   ``<out>/figures/<grid>``.

Extra arguments are Hydra overrides for every job (``limit=8``, ``wandb.mode=disabled``,
``hydra/launcher=slurm``…); with more than one grid ``results_dir=`` would put them into one directory, so it
is refused in favour of ``--sweeps-dir``. The exit status is non-zero when a job of any grid failed, after the
reports have shown which.
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


def missing_inputs(experiment: str, overrides: list[str], checked: set | None = None) -> list[str]:
    """One line per checkpoint or dataset of the grid that is not here, saying how to get it; ``checked`` holds
    the inputs already looked at (by another grid), which are skipped, and gains this grid's."""
    sweep = OmegaConf.to_container(compose_job([f"experiment={experiment}", *overrides]), resolve=False)
    problems, task_managers = [], {}
    checked = set() if checked is None else checked

    def check_task(cfg) -> None:
        if cfg.task.offline not in task_managers:
            task_managers[cfg.task.offline] = task_manager_for(cfg)
        load_task(task_managers[cfg.task.offline], lmms_task_of(cfg)[0])

    for model, task in sorted({(model, task) for model, task, *_ in grid(sweep)} - checked):
        checked.add((model, task))  # a pair's checks hold for every pruner and ratio
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


GRIDS = {"full": ("paper_tables", "rivals"), "smoke": ("smoke_tables", "smoke_rivals")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="the toy model on the offline toy tasks (CPU, minutes)")
    defaults = " / ".join(" ".join(grids) for grids in GRIDS.values())
    parser.add_argument("--grids", nargs="+", help=f"experiments to run (default, without / with --smoke: {defaults})")
    parser.add_argument("--sweeps-dir", type=Path, help="each grid's sweep in DIR/<grid> instead of its results_dir")
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every job of the sweeps")
    args = parser.parse_args()
    experiments = args.grids or GRIDS["smoke" if args.smoke else "full"]
    moved = any(override.split("=", 1)[0].lstrip("+") == "results_dir" for override in args.overrides)
    if moved and len(experiments) > 1:
        parser.exit(2, "error: results_dir= would put every grid in one directory; use --sweeps-dir DIR\n")

    def overrides_of(experiment: str) -> list[str]:
        where = [f"results_dir={args.sweeps_dir / experiment}"] if args.sweeps_dir else []
        return [f"experiment={experiment}", *args.overrides, *where]

    checked = set()  # an input two grids share is checked (and listed) once
    problems = [problem for grid in experiments for problem in missing_inputs(grid, overrides_of(grid)[1:], checked)]
    if problems:
        print(f"error: {len(problems)} input(s) of the {', '.join(experiments)} grid(s) are missing:", file=sys.stderr)
        print("\n".join(f"- {problem}" for problem in problems), file=sys.stderr)
        sys.exit(2)
    status = 0
    for experiment in experiments:
        swept = subprocess.run([sys.executable, "-m", "redvtp_eval", *overrides_of(experiment)])
        cfg = compose_job(overrides_of(experiment))
        report(Path(cfg.results_dir), args.out, cfg.wandb.mode, cfg.wandb.project, cfg.wandb.entity)
        status = status or swept.returncode
    sys.exit(status)


if __name__ == "__main__":
    main()
