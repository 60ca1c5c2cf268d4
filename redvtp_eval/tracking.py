"""W&B for one job: one run per job, grouped by sweep, always finished, even when the job fails.

Where it sits: the job opens :func:`wandb_run` around its evaluation and calls ``log_job`` once at the end.
``mode: offline`` (the default) writes the run into the job directory for a later ``wandb sync``;
``mode: disabled`` (tests) logs nothing and never imports wandb.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig


class _Tracker:
    def __init__(self, run) -> None:
        self.run = run

    def log_job(self, metrics: dict, entries: list[dict]) -> None:
        if self.run is None:
            return
        import wandb

        flat = pd.json_normalize(metrics, sep="/").iloc[0].to_dict()
        self.run.summary.update({key: value for key, value in flat.items() if not isinstance(value, list)})
        samples = pd.json_normalize(entries, sep="/")
        self.run.log({"samples": wandb.Table(dataframe=samples.astype(str))})


@contextmanager
def wandb_run(settings: DictConfig, job_dir: Path, config: dict, name: str, group: str | None) -> Iterator[_Tracker]:
    if settings.mode == "disabled":
        yield _Tracker(None)
        return
    import wandb

    run = wandb.init(
        project=settings.project,
        entity=settings.entity,
        mode=settings.mode,
        dir=str(job_dir),
        name=name,
        group=settings.group or group,
        job_type=config["pruner"]["tag"],
        config=pd.json_normalize(config, sep=".").iloc[0].to_dict(),
        reinit="create_new",
    )
    failed = True
    try:
        yield _Tracker(run)
        failed = False
    finally:
        run.finish(exit_code=1 if failed else 0)
