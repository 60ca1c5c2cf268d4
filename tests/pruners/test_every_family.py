"""Every registered pruner runs on both LaViDa families (LLaDA-V is covered pruner by pruner elsewhere)."""

from __future__ import annotations

import pytest
import torch
from helpers import page

from redvtp_eval.analysis import train_lvpruning, train_rfm
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
    return model, trained_modules(model, request.param, tmp_path_factory.mktemp(f"{request.param}-modules"))


def trained_modules(model, family: str, out) -> dict[str, dict]:
    """The trained pruners' options: module files their trainers fit to this model in a few steps."""
    lv, _ = train_lvpruning.train(model, family, steps=2, ratio=0.25)
    lv.save(out / "lv.pt")
    rfm, _ = train_rfm.train(model, family, samples=1, epochs=1)
    rfm.save(out / "rfm.pt")
    return {"lvpruning": {"modules": str(out / "lv.pt")}, "rfm_dip": {"modules": str(out / "rfm.pt")}}


@pytest.mark.parametrize("name", [name for name in PRUNERS if name != "none"])
def test_every_pruner_prunes_on_lavida(deep_lavida, name):
    model, trained = deep_lavida
    pruner = make_pruner(name, ratio=0.25, **trained.get(name, {}))
    prompt = model.prepare("What is the total?", [page((384, 192))], tower_layer=pruner.tower_attention_layer())
    ((start, end),) = prompt.visual_spans
    region = torch.zeros(end - start, dtype=torch.bool)
    region[5:9] = True
    record = generate(model, prompt, SETTINGS, pruner, region=[region]).record
    assert record.steps == 4 and record.pruned_at
    assert record.visual_tokens_after < prompt.visual_tokens
