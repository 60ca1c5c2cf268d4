"""One measured generation: the timings, counts and peak memory that every latency number in this project is made of.

Where it sits: the lmms-eval adapter writes these fields into ``samples.jsonl`` for each sample, and
the speed benchmark (:mod:`redvtp_eval.bench`) for each of its runs; :mod:`redvtp_eval.harness.summary` turns
them into distributions and throughputs. One timer and one set of fields, so that a harness number and
a benchmark number mean the same thing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch

from redvtp_eval.engine.flops import recorded_flops
from redvtp_eval.engine.sampler import Generation, GenerationSettings
from redvtp_eval.models.llada_v import LladaVConfig
from redvtp_eval.models.timing import Timer

T = TypeVar("T")


@dataclass(frozen=True)
class Measured(Generic[T]):
    value: T
    seconds: float
    peak_memory_gib: float | None
    """``torch.cuda.max_memory_allocated`` during the call (None on the CPU)."""


def measure(device: torch.device | str, call: Callable[[], T]) -> Measured[T]:
    """Run ``call`` once, timed on the device, with the peak memory it allocated."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    timer = Timer(device)
    with timer("call"):
        value = call()
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
    return Measured(value, timer.seconds["call"], peak)


def generation_fields(run: Measured[Generation], settings: GenerationSettings, config: LladaVConfig) -> dict:
    """The fields of one end-to-end generation (prompt construction + vision encoder + denoising) in ``run``,
    with its cost by the analytic FLOP model of the model ``config``: the visual tokens every layer of every
    forward saw on average (``effective_visual_tokens``, what a matched-cost comparison matches) and FLOPs."""
    record = run.value.record
    flops = recorded_flops(config, record)
    return {
        "prediction": run.value.text,
        "latency_s": run.seconds,
        "preprocess_s": record.seconds.get("preprocess", 0.0),
        "vision_s": record.seconds.get("vision", 0.0),
        "prune_s": record.seconds["prune"],
        "denoise_s": record.seconds["denoise"],
        "first_step_s": record.seconds["first_step"],
        "prefill_s": record.seconds["prefill"],
        "steps": record.steps,
        "gen_length": settings.gen_length,
        "answer_tokens": record.answer_tokens,
        "prompt_tokens": record.prompt_tokens,
        "visual_tokens_before": record.visual_tokens_before,
        "visual_tokens_after": record.visual_tokens_after,
        "effective_visual_tokens": flops.pop("effective_visual_tokens"),
        "flops": flops,
        "peak_memory_gib": run.peak_memory_gib,
    }
