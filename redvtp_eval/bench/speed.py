"""End-to-end speed of a pruner against the unpruned model, per retention ratio, next to the FLOP model's bound.

Where it sits: ``python -m redvtp_eval.bench`` runs :func:`speed` on a :class:`~redvtp_eval.bench.workload.Workload`.

Each run is one call of the evaluation's engine, timed like an evaluation sample (see
:mod:`redvtp_eval.harness.measurement`): ``latency`` = preprocessing + vision encoder + splice + every
denoising step + pruning. Per ratio, the unpruned baseline and the pruner run in alternating rounds.
Besides the sample fields, a run keeps every step's seconds and the (query rows, key positions) of its
forward, and two derived times: the scoring step (the step after which the pruner is called, plus the
pruning itself) and the mean step after pruning. With the prefix cache, latency also holds the prefill.

Two bounds: the FLOP model's speed-up (what pruning can gain if time follows FLOPs) and the roofline's
(``engine.flops.Roofline``: FLOPs / peak + bytes / bandwidth of the forwards each run recorded, with the machine's
numbers from the config), which also counts the memory-bound work — weights, keys/values and the vocabulary-sized
work after the LM head — that pruning does not shorten.

With a :class:`Projection` (``project=<size>``) each run's recorded forwards are also counted at another bench
size's dimensions (``engine.flops.at_depth``): the FLOPs and roofline time a run at that size would take with the
same sequence and the same sampler decisions, which do not depend on the width.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

import torch

from redvtp_eval.bench.runs import alternate
from redvtp_eval.bench.workload import Workload
from redvtp_eval.engine.flops import (
    Roofline,
    at_depth,
    denoising_step_flops,
    forward_flops,
    generation_flops,
    recorded_flops,
    recorded_seconds,
)
from redvtp_eval.engine.sampler import GenerationRecord, generate
from redvtp_eval.harness.measurement import generation_fields, measure
from redvtp_eval.harness.summary import distribution, side
from redvtp_eval.models.llada_v import LladaVConfig
from redvtp_eval.pruners import Pruner, make_pruner

STEP_TIMINGS = ("prefill_s", "scoring_step_s", "after_prune_step_s")
PROJECTED_WEIGHT_BYTES = 2
"""The projection's roofline counts half-precision weights: the checkpoints' dtype, the one its peak is stated for."""


@dataclass(frozen=True)
class Projection:
    """The FLOP model and the roofline at the dimensions of bench size ``size``, on a run's recorded forwards."""

    size: str
    config: LladaVConfig

    @property
    def depth(self) -> int:
        return self.config.text.num_hidden_layers

    def check(self, pruner: Pruner, run_depth: int) -> None:
        """Refuse a pruner that acts inside the LM: its layers differ in shape, and which layers depends on depth."""
        layers = pruner.lm_layers(self.depth) or pruner.lm_layers(run_depth)
        if layers:
            raise ValueError(
                f"project={self.size}: pruner {pruner.name!r} acts inside the language model (after layers {layers}), "
                f"so a forward's layers differ in shape and a {run_depth}-layer run does not show them at "
                f"{self.depth} layers; drop project= or choose a pruner that acts before the LM or between steps"
            )

    def of(self, record: GenerationRecord, roofline: Roofline | None) -> dict:
        carried = at_depth(record, self.depth)
        seconds = recorded_seconds(self.config, carried, roofline, PROJECTED_WEIGHT_BYTES) if roofline else None
        return {"flops_total": recorded_flops(self.config, carried)["total"], "roofline_s": seconds}


def one_run(
    workload: Workload,
    pruner: Pruner,
    seed: int,
    roofline: Roofline | None = None,
    projection: Projection | None = None,
    step_limit: int | None = None,
) -> dict:
    """One generation, timed like an evaluation sample; ``step_limit``: end after that many steps (a replay)."""
    model = workload.model
    settings = replace(workload.settings, step_limit=step_limit)
    generator = torch.Generator(model.device).manual_seed(seed)
    tower_layer = pruner.tower_attention_layer()
    run = measure(model.device, lambda: generate(model, workload.prompt(tower_layer), settings, pruner, generator))
    fields = generation_fields(run, settings, model.config)
    del fields["prediction"]
    steps = run.value.record.step_seconds
    scoring = pruner.prune_after_step
    after = [f for f in run.value.record.forwards if f.kind == "step"][scoring:]
    return {
        **fields,
        "sequence_length_before": fields["prompt_tokens"] + workload.settings.gen_length,
        "sequence_length_after": fields["prompt_tokens"]
        + workload.settings.gen_length
        - fields["visual_tokens_before"]
        + fields["visual_tokens_after"],
        "step_s": steps,
        "step_forward": [list(forward) for forward in run.value.record.step_forward],
        "head_positions": statistics.fmean(f.logits for f in run.value.record.forwards if f.kind == "step"),
        "roofline_s": (
            recorded_seconds(model.config, run.value.record, roofline, model.dtype.itemsize) if roofline else None
        ),
        "projected": projection.of(run.value.record, roofline) if projection else None,
        "after_prune_step_flops": (
            statistics.fmean(forward_flops(model.config.text, f.layers, f.logits, f.probed) for f in after)
            if after
            else None
        ),
        "scoring_step_s": steps[scoring - 1] + fields["prune_s"] if len(steps) >= scoring else None,
        "after_prune_step_s": statistics.fmean(steps[scoring:]) if len(steps) > scoring else None,
    }


def _side(runs: list[dict]) -> dict:
    timings = {name: distribution([run[name] for run in runs if run[name] is not None]) for name in STEP_TIMINGS}
    counts = (
        "prompt_tokens",
        "visual_tokens_before",
        "visual_tokens_after",
        "sequence_length_before",
        "sequence_length_after",
        "head_positions",
        "roofline_s",
        "after_prune_step_flops",
    )
    lengths = {key: runs[0][key] for key in counts} | {
        "flops_total": statistics.fmean(run["flops"]["total"] for run in runs)
    }
    summary = {key: value for key, value in side(runs, None).items() if key != "score"}
    projected = [run["projected"] for run in runs if run["projected"]]
    lengths["projected"] = (
        {key: _mean([p[key] for p in projected]) for key in ("flops_total", "roofline_s")} if projected else None
    )
    return {**summary, **timings, **lengths, "runs": runs}


def _mean(values: list[float | None]) -> float | None:
    return statistics.fmean(values) if None not in values else None


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator is not None and denominator else None


def projected(projection: Projection | None, baseline: dict, pruned: dict) -> dict | None:
    """The two sides' mean FLOPs and roofline seconds at the projected size, and their ratios."""
    if projection is None:
        return None
    base, with_pruning = baseline["projected"], pruned["projected"]
    return {
        "size": projection.size,
        "generation_flops_baseline": base["flops_total"],
        "generation_flops_pruned": with_pruning["flops_total"],
        "speedup": base["flops_total"] / with_pruning["flops_total"],
        "roofline_s_baseline": base["roofline_s"],
        "roofline_s_pruned": with_pruning["roofline_s"],
        "roofline_speedup": _ratio(base["roofline_s"], with_pruning["roofline_s"]),
    }


def ideal(workload: Workload, pruner: Pruner, pruned: dict, baseline: dict, replayed: bool = False) -> dict:
    """The FLOP model's speed-ups for this ratio: whole generation (what latency can gain) and one later step.
    The probe's rows are the non-visual positions, or with the prefix cache the response alone. With Fast-dLLM's
    cache or parallel decoding, or a replay of a job's step counts, the forwards are the ones the runs recorded
    (windows, fewer steps; the mean over the runs)."""
    config, settings = workload.model.config, workload.settings
    if settings.fast_dllm != "none" or settings.threshold is not None or replayed:
        unpruned, with_pruning = baseline["flops_total"], pruned["flops_total"]
        return {
            "generation_flops_baseline": unpruned,
            "generation_flops_pruned": with_pruning,
            "speedup": unpruned / with_pruning,
            "step_speedup": _ratio(baseline["after_prune_step_flops"], pruned["after_prune_step_flops"]),
        }
    before, after = pruned["sequence_length_before"], pruned["sequence_length_after"]
    rows = settings.gen_length if settings.prefix_cache else before - pruned["visual_tokens_before"]
    common = {
        "crops": workload.crops,
        "steps": settings.steps,
        "logit_positions": settings.gen_length,
        "prefix_cache": settings.prefix_cache,
        "head_positions": pruned["head_positions"],
    }
    unpruned = generation_flops(config, length=before, length_after=before, **common)
    with_pruning = generation_flops(
        config,
        length=before,
        length_after=after,
        prune_after_step=pruner.prune_after_step,
        probe_rows=rows if pruner.needs_attention else 0,
        **common,
    )
    step = partial(
        denoising_step_flops,
        config.text,
        gen_length=settings.gen_length,
        prefix_cache=settings.prefix_cache,
        head_positions=pruned["head_positions"],
    )
    return {
        "generation_flops_baseline": unpruned,
        "generation_flops_pruned": with_pruning,
        "speedup": unpruned / with_pruning,
        "step_speedup": step(before)["total"] / step(after)["total"],
    }


def compare(
    workload: Workload,
    pruner: Pruner,
    ratio: float,
    runs: dict[str, list[dict]],
    order: list[str],
    replayed: bool = False,
    projection: Projection | None = None,
) -> dict:
    baseline, pruned = _side(runs["baseline"]), _side(runs["pruned"])
    bound = ideal(workload, pruner, pruned, baseline, replayed)
    speedup = _ratio(baseline["latency_s"]["p50"], pruned["latency_s"]["p50"])
    step_speedup = _ratio(baseline["after_prune_step_s"]["p50"], pruned["after_prune_step_s"]["p50"])
    scoring = _ratio(pruned["scoring_step_s"]["p50"], baseline["scoring_step_s"]["p50"])
    return {
        "ratio": ratio,
        "visual_tokens": [pruned["visual_tokens_before"], pruned["visual_tokens_after"]],
        "sequence_length": [pruned["sequence_length_before"], pruned["sequence_length_after"]],
        "speedup_p50": speedup,
        "throughput_gain": _ratio(pruned["tokens_per_s_gen_length"], baseline["tokens_per_s_gen_length"]),
        "latency_reduction_p50": 1 - 1 / speedup if speedup else None,
        "step_speedup_p50": step_speedup,
        "scoring_overhead_p50": scoring - 1 if scoring is not None else None,
        "ideal": bound,
        "achieved_over_ideal": _ratio(speedup, bound["speedup"]),
        "roofline_speedup": _ratio(baseline["roofline_s"], pruned["roofline_s"]),
        "achieved_over_roofline": _ratio(speedup, _ratio(baseline["roofline_s"], pruned["roofline_s"])),
        "step_achieved_over_ideal": _ratio(step_speedup, bound["step_speedup"]),
        "projected": projected(projection, baseline, pruned),
        "order": order,
        "baseline": baseline,
        "pruned": pruned,
    }


def speed(
    workload: Workload,
    pruner_name: str,
    options: dict,
    ratios: list[float],
    warmup: int,
    runs: int,
    seed: int,
    roofline: Roofline,
    replay: dict[str, list[int]] | None = None,
    projection: Projection | None = None,
) -> list[dict]:
    """Per ratio: ``warmup`` + ``runs`` rounds of (baseline, pruned), alternating which goes first. ``replay``: per
    side, step counts that its runs take in turn (:func:`~redvtp_eval.bench.workload.replayed_steps`); None: every
    run does every step. ``projection``: also count each run's forwards at that size (checked before any run)."""
    pruners = [make_pruner(pruner_name, ratio=ratio, **options) for ratio in ratios]
    if projection is not None:
        for pruner in pruners:
            projection.check(pruner, workload.model.num_layers)
    results = []
    for ratio, pruner in zip(ratios, pruners):
        unpruned = Pruner(prune_after_step=pruner.prune_after_step)
        variants = {
            "baseline": partial(one_run, workload, unpruned, seed, roofline, projection),
            "pruned": partial(one_run, workload, pruner, seed, roofline, projection),
        }
        if replay is not None:
            variants = {name: cycling(run, replay[name]) for name, run in variants.items()}
        measured, order = alternate(variants, warmup, runs)
        results.append(compare(workload, pruner, ratio, measured, order, replay is not None, projection))
    return results


def cycling(run: Callable[..., dict], counts: list[int]) -> Callable[[], dict]:
    """``run`` with each step limit of ``counts`` in turn, one per call, starting over after the last."""
    calls = itertools.count()
    return lambda: run(step_limit=counts[next(calls) % len(counts)])
