"""Where a job finds its checkpoint: project paths from any directory, and errors worded for what was given."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from redvtp_eval.harness.job import checkpoint_path, project_path
from redvtp_eval.harness.offline_tasks import ROOT
from redvtp_eval.models.checkpoint import CheckpointError, resolve_checkpoint


def test_the_shipped_model_path_is_the_projects_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = OmegaConf.create({"model": {"path": "checkpoints/toy-llada-v", "make_tiny": False, "family": "llada_v"}})
    assert checkpoint_path(cfg) == str(ROOT / "checkpoints" / "toy-llada-v")


def test_a_relative_path_that_exists_here_and_a_hub_id_are_taken_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints" / "mine").mkdir(parents=True)
    assert project_path("checkpoints/mine") == (tmp_path / "checkpoints" / "mine").relative_to(tmp_path)
    assert str(project_path("GSAI-ML/LLaDA-V")) == "GSAI-ML/LLaDA-V"


def test_a_missing_folder_is_named_as_a_folder_not_as_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(CheckpointError, match=r"no checkpoint directory at checkpoints/absent"):
        resolve_checkpoint("checkpoints/absent", "GSAI-ML/LLaDA-V")
    with pytest.raises(CheckpointError, match=r"someone/model is not in the local Hugging Face cache"):
        resolve_checkpoint("someone/model", "GSAI-ML/LLaDA-V")
