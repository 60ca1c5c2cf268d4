"""python -m redvtp_eval [model=tiny|llada_v] [task=...] [pruner=redvtp|none] [ratio=0.5] [-m ...]

The Hydra entry point: composes ``configs/``, then runs one job (or, with ``-m``, one per combination).
Errors in the inputs (a bad ratio, a missing checkpoint or dataset) end with one line saying what to
do, not a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from redvtp_eval.harness.job import JobError, run_job
from redvtp_eval.models.checkpoint import CheckpointError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> None:
    hydra_config = HydraConfig.get()
    try:
        multirun = hydra_config.mode == RunMode.MULTIRUN
        sweep = Path(hydra_config.sweep.dir).name if multirun else None
        run_job(cfg, Path(hydra_config.runtime.output_dir), sweep, list(hydra_config.overrides.task))
    except (JobError, CheckpointError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        if multirun:
            raise
        sys.exit(2)


if __name__ == "__main__":
    main()
