"""What RedVTP's scoring costs on the scoring step, next to the official way of getting the scores.

Where it sits: part of ``python -m redvtp_eval.bench`` (``scoring=true``), on the same workload and
model as the end-to-end runs.

Three versions of the first denoising step over the workload's full sequence (prompt + ``gen_length``
masks), each ending with logits at the response positions as the sampler computes them:
``plain`` — the unpruned step on SDPA; ``probed`` — the same step with the attention probe, then
RedVTP's score and top-k (what the sampler does); ``official`` — the official code's way: eager
attention returning each layer's head-averaged T×T map, the maps kept and averaged over layers, then the
score of the still-masked rows and top-k. Time and peak memory of each, interleaved.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

import torch

from redvtp_eval.bench.runs import alternate
from redvtp_eval.bench.workload import Workload
from redvtp_eval.engine.sampler import ProbedAttention, transfer_schedule
from redvtp_eval.harness.measurement import measure
from redvtp_eval.harness.summary import distribution
from redvtp_eval.models.attention import PROBED, AttentionProbe
from redvtp_eval.models.llada_v import LladaV
from redvtp_eval.pruners import PruneContext, make_pruner
from redvtp_eval.pruners.base import kept_count

VARIANTS = ("plain", "probed", "official")


@contextmanager
def eager_attention(model: LladaV) -> Iterator[None]:
    """Switch the language model's layers to eager attention (they read the setting on every forward)."""
    text = model.config.text
    previous = text._attn_implementation
    text._attn_implementation = PROBED.format("eager")
    try:
        yield
    finally:
        text._attn_implementation = previous


def scoring_steps(workload: Workload, ratio: float) -> tuple[dict[str, Callable[[], None]], int]:
    """The three versions of the scoring step on one prepared prompt, and the sequence length they run on."""
    model, settings = workload.model, workload.settings
    device = model.device
    prompt = workload.prompt()
    ((start, end),) = prompt.visual_spans
    length = len(prompt.embeds) + settings.gen_length
    masks = torch.full((settings.gen_length,), model.mask_token_id, device=device)
    embeds = torch.cat([prompt.embeds, model.embed(masks)])
    positions = torch.arange(length, device=device)
    response = positions[len(prompt.embeds) :]
    visual = positions[start:end]
    prompt_text = torch.cat([positions[:start], positions[end : len(prompt.embeds)]])
    decoded = transfer_schedule(settings.block_length, settings.steps // settings.num_blocks)[0]
    masked = response[decoded:]
    pruner = make_pruner("redvtp", ratio=ratio)

    def plain() -> None:
        model.logits(embeds, positions, response)

    def probed() -> None:
        probe = AttentionProbe(torch.cat([prompt_text, response]), visual)
        model.logits(embeds, positions, response, probe)
        context = PruneContext(
            step=1,
            visual_spans=[(start, end)],
            masked=masked,
            decoded=response[:decoded],
            response=response,
            prompt_text=prompt_text,
            attention=ProbedAttention(probe, length),
        )
        pruner.select(context)

    def official() -> None:
        maps = []
        hooks = [
            layer.self_attn.register_forward_hook(lambda module, args, output: maps.append(output[1][0].mean(dim=0)))
            for layer in model.network.model.layers
        ]
        try:
            with eager_attention(model):
                model.logits(embeds, positions, response)
        finally:
            for hook in hooks:
                hook.remove()
        scores = torch.stack(maps).mean(dim=0)[masked][:, start:end].mean(dim=0)
        torch.topk(scores, kept_count(len(scores), ratio)).indices.sort()

    return {"plain": plain, "probed": probed, "official": official}, length


def _timed(device: torch.device, step: Callable[[], None]) -> dict:
    run = measure(device, step)
    return {"seconds": run.seconds, "peak_memory_gib": run.peak_memory_gib}


def scoring(workload: Workload, ratio: float, warmup: int, runs: int) -> dict:
    device = workload.model.device
    steps, length = scoring_steps(workload, ratio)
    measured, order = alternate({name: partial(_timed, device, steps[name]) for name in VARIANTS}, warmup, runs)
    results = {}
    for name in VARIANTS:
        peaks = [run["peak_memory_gib"] for run in measured[name] if run["peak_memory_gib"] is not None]
        results[name] = {
            "seconds": distribution([run["seconds"] for run in measured[name]]),
            "peak_memory_gib": max(peaks, default=None),
        }
    plain = results["plain"]["seconds"]["p50"]
    return {
        "ratio": ratio,
        "sequence_length": length,
        "steps": results,
        "order": order,
        "probed_overhead_p50": results["probed"]["seconds"]["p50"] / plain - 1,
        "official_overhead_p50": results["official"]["seconds"]["p50"] / plain - 1,
    }
