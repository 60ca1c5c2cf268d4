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


LAVIDA_FAMILIES = ("lavida_llada", "lavida_dream")


@pytest.fixture(scope="session")
def lavida_dirs(tmp_path_factory) -> dict:
    return {family: make_tiny(tmp_path_factory.mktemp(f"tiny-{family}"), family=family) for family in LAVIDA_FAMILIES}


@pytest.fixture(scope="session")
def lavida_models(lavida_dirs) -> dict:
    """Per LaViDa family, the tiny model on SDPA and on eager attention (for naive references)."""
    from redvtp_eval.engine.families import FAMILIES

    return {
        family: tuple(
            FAMILIES[family].load(path, dtype="float32", attn_implementation=attention)
            for attention in ("sdpa", "eager")
        )
        for family, path in lavida_dirs.items()
    }


DEEP_LAYERS = 4
"""Depth of the tiny LLaDA-V the rival pruners are tested on: in-LM stages act after layers 1..3."""


@pytest.fixture(scope="session")
def deep_dir(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("tiny4"), seed=0, layers=DEEP_LAYERS)


@pytest.fixture(scope="session")
def deep(deep_dir):
    return load_llada_v(deep_dir, dtype="float32")


@pytest.fixture(scope="session")
def deep_eager(deep_dir):
    return load_llada_v(deep_dir, dtype="float32", attn_implementation="eager")
