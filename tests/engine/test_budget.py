"""Matched cost: every pruner's cost grows with its ratio, and calibration finds the largest ratio within a budget.

On the shipped toy LLaDA-V (4 layers, a 384×192 page is 444 visual tokens): the smallest real checkpoint whose
depth lets FastV's layer 2 and PDrop's three stages act, and fast enough for grids of generations on a CPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import page

from redvtp_eval.engine.budget import BudgetError, calibrate, generation_cost
from redvtp_eval.engine.sampler import GenerationSettings, generate
from redvtp_eval.models.llada_v import load_llada_v
from redvtp_eval.pruners import PRUNERS, Pruner, make_pruner

SETTINGS = GenerationSettings(8, 4, 8)
"""With the default stop string: calibration must drop it (fixed shape) whatever the answer."""
FIXED = GenerationSettings(8, 4, 8, stop_strings=())
METRICS = ("effective_visual_tokens", "flops")
TOY = Path(__file__).resolve().parents[2] / "checkpoints" / "toy-llada-v"


@pytest.fixture(scope="module")
def toy():
    return load_llada_v(TOY, dtype="float32")


def prompt_for(model, pruner: Pruner):
    return model.prepare("What color is the box?", [page((384, 192))], "no_think", pruner.tower_attention_layer())


def region_of(prompt) -> list[torch.Tensor]:
    ((start, end),) = prompt.visual_spans
    return [torch.arange(end - start) % 7 == 0]


def cost_fractions(model, prompt, name: str):
    """``ratio`` → the cost of ``name`` at it over the unpruned model's, by both metrics, in the fixed shape."""
    region = region_of(prompt)
    unpruned = generate(model, prompt, FIXED, Pruner()).record
    base = {metric: generation_cost(model, unpruned, metric) for metric in METRICS}

    def at(ratio: float) -> dict[str, float]:
        pruner = make_pruner(name, ratio=ratio)
        record = generate(model, prompt, FIXED, pruner, torch.Generator().manual_seed(0), region).record
        return {metric: generation_cost(model, record, metric) / base[metric] for metric in METRICS}

    return at


@pytest.mark.parametrize("name", [name for name in PRUNERS if name != "none"])
def test_cost_never_falls_as_the_ratio_grows(toy, name):
    """The assumption bisection rests on. Not strict: kept counts are int(N·r) (flat between multiples of 1/N),
    pooling's stride round(1/√r) keeps every token for r > 4/9, and flops at r = 1 exceed the unpruned model's
    for the pruners that probe attention (RedVTP, D³ToM, …)."""
    prompt = prompt_for(toy, make_pruner(name, ratio=1.0))
    grid = [1 / 16, 1 / 8, 1 / 4, 3 / 8, 1 / 2, 5 / 8, 3 / 4, 1.0]
    at = cost_fractions(toy, prompt, name)
    costs = [at(ratio) for ratio in grid]
    for metric in METRICS:
        values = [cost[metric] for cost in costs]
        assert values == sorted(values), f"{name} by {metric}: {values}"
    assert costs[-1]["effective_visual_tokens"] == 1.0


@pytest.mark.parametrize(
    ("name", "target", "metric"),
    [
        ("redvtp", 0.5, "effective_visual_tokens"),
        ("redvtp", 0.6, "flops"),
        ("fastv", 0.6, "effective_visual_tokens"),
        ("pdrop", 0.5, "effective_visual_tokens"),
        ("divprune", 0.3, "effective_visual_tokens"),
        ("divprune", 0.5, "flops"),
    ],
)
def test_calibration_agrees_with_a_brute_force_grid(toy, name, target, metric):
    """The chosen ratio meets the target and the ratio one tolerance above it does not; on a grid, every ratio up to
    the chosen one meets it and every ratio from one tolerance above does not (in between: the bracket's width)."""
    prompt = prompt_for(toy, make_pruner(name, ratio=1.0))
    tolerance = 1 / 256
    found = calibrate(toy, prompt, SETTINGS, lambda r: make_pruner(name, ratio=r), target, metric, tolerance)
    at = cost_fractions(toy, prompt, name)
    assert found.fraction <= target and at(found.ratio)[metric] == found.fraction
    assert 0 < found.ratio < 1
    assert at(min(1.0, found.ratio + tolerance))[metric] > target
    for ratio in [k / 16 for k in range(1, 17)]:
        meets = at(ratio)[metric] <= target
        if ratio <= found.ratio or ratio >= found.ratio + tolerance:
            assert meets == (ratio <= found.ratio), (ratio, found.ratio)


def test_calibration_is_deterministic_and_ignores_stop_strings(toy):
    prompt = prompt_for(toy, Pruner())
    runs = [
        calibrate(toy, prompt, settings, lambda r: make_pruner("random", ratio=r), 0.5)
        for settings in (SETTINGS, SETTINGS, FIXED)
    ]
    assert runs[0] == runs[1] == runs[2]


def test_a_budget_the_pruner_cannot_meet_says_the_least_it_costs(toy):
    """FastV runs the full sequence through layers 1–2 of the toy's 4 on every step: at least (2·444 + 2)/4 of the
    unpruned model's effective visual tokens, just over half."""
    prompt = prompt_for(toy, Pruner())
    with pytest.raises(BudgetError, match=r"pruner 'fastv' cannot meet budget=0.5 .* choose budget >= 0.501"):
        calibrate(toy, prompt, SETTINGS, lambda r: make_pruner("fastv", ratio=r), 0.5)


def test_a_budget_met_at_ratio_one_keeps_every_token(toy):
    prompt = prompt_for(toy, Pruner())
    found = calibrate(toy, prompt, SETTINGS, lambda r: make_pruner("divprune", ratio=r), 1.0)
    assert found.ratio == 1.0 and found.fraction == 1.0 and len(found.tried) == 1


@pytest.mark.parametrize(("target", "metric", "message"), [(0, "flops", r"\(0, 1\]"), (0.5, "latency", "one of")])
def test_bad_budgets_are_refused(toy, target, metric, message):
    with pytest.raises(BudgetError, match=message):
        calibrate(toy, prompt_for(toy, Pruner()), SETTINGS, lambda r: make_pruner("redvtp", ratio=r), target, metric)
