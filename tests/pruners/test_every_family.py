"""Every registered pruner runs on both LaViDa families (LLaDA-V is covered pruner by pruner elsewhere)."""

from __future__ import annotations

import pytest
import torch
from helpers import page

from redvtp_eval.engine.families import FAMILIES
from redvtp_eval.engine.sampler import GenerationSettings, generate
from redvtp_eval.models.make_tiny import make_tiny
from redvtp_eval.pruners import PRUNERS, make_pruner

SETTINGS = GenerationSettings(8, 4, 8, stop_strings=())


@pytest.fixture(scope="module", params=["lavida_llada", "lavida_dream"])
def deep_lavida(request, tmp_path_factory):
    """A 4-layer tiny LaViDa model (the in-LM pruners act after layers 1..3)."""
    directory = make_tiny(tmp_path_factory.mktemp(request.param), family=request.param, layers=4)
    model = FAMILIES[request.param].load(directory, dtype="float32")
    return model


@pytest.mark.parametrize("name", [name for name in PRUNERS if name != "none"])
def test_every_pruner_prunes_on_lavida(deep_lavida, name):
    model, pruner = deep_lavida, make_pruner(name, ratio=0.25)
    prompt = model.prepare("What is the total?", [page((384, 192))], tower_layer=pruner.tower_attention_layer())
    ((start, end),) = prompt.visual_spans
    region = torch.zeros(end - start, dtype=torch.bool)
    region[5:9] = True
    record = generate(model, prompt, SETTINGS, pruner, region=[region]).record
    assert record.steps == 4 and record.pruned_at
    assert record.visual_tokens_after < prompt.visual_tokens
