"""Scale-out on existing engines: Hydra's submitit launcher (local executor) and lmms-eval ranks under accelerate."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

QUICK = ["task=redvtp_toy_mcq", "wandb.mode=disabled", "warmup=0"]


@pytest.mark.slow(reason="each job runs in its own submitit process, which loads torch, lmms-eval and the model anew")
def test_submitit_launcher_runs_each_job_of_a_sweep(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "redvtp_eval", "-m", "hydra/launcher=local", "ratio=0.5,0.25", "limit=2",
         f"results_dir={tmp_path}", *QUICK],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = sorted(tmp_path.glob("toy/redvtp_toy_mcq/paper/*/*/metrics.json"))
    assert [path.parts[-3] for path in metrics] == ["redvtp-r0.25", "redvtp-r0.5"]
    assert all(json.loads(path.read_text())["samples"] == 2 for path in metrics)
    assert list((tmp_path / ".submitit").rglob("*_submitted.pkl"))  # went through submitit, not the basic launcher


@pytest.mark.skipif(shutil.which("accelerate", path=str(Path(sys.executable).parent)) is None, reason="no accelerate")
def test_two_ranks_split_the_samples_and_the_job_merges_their_logs(tmp_path):
    """``accelerate launch`` with 2 CPU processes (ACCELERATE_USE_CPU=1): lmms-eval gives each rank its share."""
    job = tmp_path / "job"
    done = subprocess.run(
        [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
         "-m", "redvtp_eval", f"hydra.run.dir={job}", "limit=5", *QUICK],
        capture_output=True, text=True, timeout=600, env=os.environ | {"ACCELERATE_USE_CPU": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [[json.loads(line) for line in (job / f"samples.rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    assert {entry["rank"] for entry in ranks[0]} == {0} and {entry["rank"] for entry in ranks[1]} == {1}
    merged = [json.loads(line) for line in (job / "samples.jsonl").read_text().splitlines()]
    assert [entry["doc_id"] for entry in merged] == [0, 1, 2, 3, 4]
    assert all(entry["score"] is not None and entry["baseline"]["score"] is not None for entry in merged)
    metrics = json.loads((job / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["samples"] == 5
    per_rank = metrics["per_rank"]
    assert sorted(per_rank) == ["0", "1"] and sum(rank["samples"] for rank in per_rank.values()) == 5
    assert all(rank["samples"] >= 2 for rank in per_rank.values())
