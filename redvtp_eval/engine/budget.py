"""Matched cost: the retention ratio at which a pruner costs a given fraction of the unpruned model.

Where it sits: the lmms-eval adapter calls :func:`calibrate` on its first sample when a job gives a ``budget``
instead of a ``ratio``, then runs every sample at the ratio it returns. One ratio means different costs at
different stages (FastV at layer 2 runs the full sequence for two layers of every step; RedVTP for the whole
first step; D³ToM shrinks it after every step), so a comparison at matched cost picks, per pruner, the ratio
that meets the same cost.

Cost of a generation, from its :class:`~redvtp_eval.engine.sampler.GenerationRecord` (what the sampler ran):

    effective_visual_tokens   visual keys averaged over every layer of every forward (prefill included)
    flops                     vision encoder + every LM forward, by the FLOP model of :mod:`.flops` (probe included)

Both as a fraction of the unpruned model's cost on the same prompt and settings. Calibration runs the schedule's
fixed shape (``stop_strings=()``: every planned step), so that the cost does not depend on the answer; a sample
whose answer ends early runs fewer steps, and a pruner that pays full price on its first steps (RedVTP, D³ToM)
then costs a larger fraction than calibrated.

Search: cost is a non-decreasing step function of the ratio for every registered pruner (kept counts are
``int(N·r)``-like; ``tests/engine/test_budget.py`` checks each one on the tiny model), so bisection on (0, 1]
finds, within ``tolerance``, the largest ratio whose cost fraction is at most the target.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from redvtp_eval.engine.flops import recorded_flops
from redvtp_eval.engine.sampler import GenerationRecord, GenerationSettings, generate
from redvtp_eval.models.base import DiffusionVLM, Prompt
from redvtp_eval.pruners.base import Pruner

COST_METRICS = ("effective_visual_tokens", "flops")
TOLERANCE = 1 / 1024
"""Width of the final bisection bracket: 11 halvings of (0, 1], finer than one token of a 444-token page."""


class BudgetError(ValueError):
    """A budget that the pruner cannot meet, or that is not a budget; the message says what to choose."""


def check_budget(target: float, metric: str) -> tuple[float, str]:
    if metric not in COST_METRICS:
        raise BudgetError(f"budget_metric {metric!r} is not one of {', '.join(COST_METRICS)}")
    if not 0 < target <= 1:
        raise BudgetError(f"budget is a fraction of the unpruned model's cost and must lie in (0, 1], got {target}")
    return float(target), metric


def generation_cost(model: DiffusionVLM, record: GenerationRecord, metric: str) -> float:
    """One generation's cost by ``metric`` (:data:`COST_METRICS`)."""
    if metric == "effective_visual_tokens":
        return float(record.effective_visual_tokens)
    return float(recorded_flops(model.config, record)["total"])


@dataclass(frozen=True)
class Calibration:
    ratio: float
    """The largest ratio found whose cost fraction is at most ``target``."""
    fraction: float
    """Its cost as a fraction of the unpruned model's, on the calibration prompt in the fixed shape."""
    target: float
    metric: str
    unpruned_cost: float
    tried: list[tuple[float, float]] = field(default_factory=list)
    """Every (ratio, cost fraction) evaluated, in order."""


def calibrate(
    model: DiffusionVLM,
    prompt: Prompt,
    settings: GenerationSettings,
    pruner_at: Callable[[float], Pruner],
    target: float,
    metric: str = "effective_visual_tokens",
    tolerance: float = TOLERANCE,
    seed: int = 0,
    region: list[torch.Tensor | None] | None = None,
) -> Calibration:
    """The largest ratio r in (0, 1], within ``tolerance``, at which ``pruner_at(r)`` costs at most ``target`` of the
    unpruned model on ``prompt`` (by ``metric``), in the fixed shape of ``settings`` (no stop strings).

    Every generation draws from a fresh generator seeded with ``seed``, so the result is deterministic. Raises
    :class:`BudgetError` when even the smallest ratio tried (``tolerance``) costs more than ``target``."""
    target, metric = check_budget(target, metric)
    shape = replace(settings, stop_strings=())

    def cost(pruner: Pruner) -> float:
        generator = torch.Generator(model.device).manual_seed(seed)
        return generation_cost(model, generate(model, prompt, shape, pruner, generator, region).record, metric)

    unpruned = cost(Pruner())
    tried: list[tuple[float, float]] = []

    def fraction(ratio: float) -> float:
        value = cost(pruner_at(ratio)) / unpruned
        tried.append((ratio, value))
        return value

    def found(ratio: float, value: float) -> Calibration:
        return Calibration(ratio, value, target, metric, unpruned, tried)

    at_one = fraction(1.0)
    if at_one <= target:
        return found(1.0, at_one)
    low, high = tolerance, 1.0
    at_low = fraction(low)
    if at_low > target:
        name = pruner_at(low).name
        raise BudgetError(
            f"pruner {name!r} cannot meet budget={target} by {metric}: at ratio {low:.4g} it still costs "
            f"{at_low:.3f} of the unpruned model on this sample (the vision encoder and the steps before it prunes "
            f"are paid in full); choose budget >= {at_low:.3f}, or the other budget_metric"
        )
    while high - low > tolerance:
        middle = (low + high) / 2
        value = fraction(middle)
        if value <= target:
            low, at_low = middle, value
        else:
            high = middle
    return found(low, at_low)
