"""W&B: one run per job, grouped by sweep, always finished, even when the job fails; one summary run per sweep.

Where it sits: the job opens :func:`wandb_run` around its evaluation and calls ``log_job`` once at the end;
the report logs a sweep's tables and figures with :func:`log_sweep` and, online, builds a W&B report
from them with :func:`build_report` (``wandb-workspaces``). ``mode: offline`` (the default) writes runs
next to the results for a later ``wandb sync``; ``mode: disabled`` (tests) logs nothing and never
imports wandb.
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


def log_sweep(
    settings: DictConfig, sweep_dir: Path, sweep: str, tables: dict[str, pd.DataFrame], figures: list[Path]
) -> None:
    """The sweep's summary run: every table (as a W&B table) and figure, in the sweep's group."""
    with wandb_run(settings, sweep_dir, {"pruner": {"tag": "summary"}}, f"{sweep} summary", sweep) as tracker:
        if tracker.run is None:
            return
        import wandb

        tracker.run.log({name: wandb.Table(dataframe=table.astype(str)) for name, table in tables.items()})
        tracker.run.log({path.stem: wandb.Image(str(path)) for path in figures})
        if settings.mode == "online":
            report = build_report(tracker.run.entity, tracker.run.project, sweep, tables, figures)
            report.save()
            print(f"W&B report: {report.url}")


def build_report(entity: str, project: str, sweep: str, tables: dict[str, pd.DataFrame], figures: list[Path]):
    """The online W&B report of a sweep: its paper tables as text, then its summary run's tables and figures."""
    import wandb_workspaces.reports.v2 as wr

    blocks = [wr.H1(text=f"redvtp-eval: {sweep}")]
    for name, table in tables.items():
        blocks += [wr.H2(text=name), wr.MarkdownBlock(text=table.to_markdown(index=False, disable_numparse=True))]
    blocks.append(
        wr.PanelGrid(
            runsets=[wr.Runset(entity=entity, project=project, name=sweep, filters=f"Group = '{sweep}'")],
            panels=[wr.MediaBrowser(media_keys=[path.stem for path in figures])]
            + [wr.WeavePanelSummaryTable(table_name=name) for name in tables],
        )
    )
    return wr.Report(entity=entity, project=project, title=f"redvtp-eval: {sweep}", blocks=blocks)
