"""Shared fixtures: one tiny LLaDA-V checkpoint per test session, loaded through the real loader."""

from __future__ import annotations

import pytest

from redvtp_eval.models.llada_v import LladaV, load_llada_v
from redvtp_eval.models.make_tiny import make_tiny


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("tiny-llada-v"), seed=0)


@pytest.fixture(scope="session")
def tiny(tiny_dir) -> LladaV:
    return load_llada_v(tiny_dir, dtype="float32")


@pytest.fixture(scope="session")
def tiny_eager(tiny_dir) -> LladaV:
    return load_llada_v(tiny_dir, dtype="float32", attn_implementation="eager")
