"""Speed and accuracy side by side: the official-style loop, RedVTP, Fast-dLLM's caches and parallel decoding,
and Fast-dLLM with RedVTP, on the same held-out toy samples.

    python -m redvtp_eval.bench.variants                      # toy model, CPU, 16 held-out DocVQA-like samples
    python -m redvtp_eval.bench.variants --samples 64 --device cuda

Where it sits: on top of the harness's offline toy task and the engine. Every variant answers the same
samples with the task's own settings (32 tokens in 16 steps, ``<|eot_id|>`` ends an answer, so answers stop
early as in an evaluation); each sample runs all variants in a rotated order so that drift hits all alike.
Per variant: latency p50 and its speed-up over the official-style loop, the FLOP model's speed-up from the
forwards each variant actually ran (``flop_bound``, ``engine.flops.recorded_flops``: what the variant could gain
if time followed FLOPs), the mean steps, and the score (ANLS, lmms-eval's formula): a variant that is fast and wrong
shows as wrong. Written to ``results/bench/<device>/variants_<task>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import replace
from pathlib import Path

import torch
from lmms_eval.api.metrics import anls

from redvtp_eval.bench.report import device_directory
from redvtp_eval.engine.families import family
from redvtp_eval.engine.flops import recorded_flops
from redvtp_eval.engine.sampler import GenerationSettings, generate
from redvtp_eval.harness.environment import environment
from redvtp_eval.harness.measurement import measure
from redvtp_eval.harness.offline_tasks import ROOT, TASKS, held_out, task_generation, task_prompt
from redvtp_eval.models.llada_v import load_llada_v
from redvtp_eval.pruners import Pruner, make_pruner

RATIOS = (0.75, 0.5, 0.25)
THRESHOLD = 0.9
"""Fast-dLLM's default confidence threshold."""
VARIANTS = {
    "official": ({}, False),
    "redvtp": ({}, True),
    "fast_prefix": ({"fast_dllm": "prefix"}, False),
    "fast_dual": ({"fast_dllm": "dual"}, False),
    "fast_prefix_parallel": ({"fast_dllm": "prefix", "threshold": THRESHOLD}, False),
    "fast_dual_parallel": ({"fast_dllm": "dual", "threshold": THRESHOLD}, False),
    "fast_prefix+redvtp": ({"fast_dllm": "prefix"}, True),
    "fast_dual+redvtp": ({"fast_dllm": "dual"}, True),
    "fast_dual_parallel+redvtp": ({"fast_dllm": "dual", "threshold": THRESHOLD}, True),
}
"""Name → (sampler settings over the task's, whether RedVTP prunes); pruned variants run at every ratio."""


def runs_of(base: GenerationSettings) -> list[tuple[str, float | None, GenerationSettings]]:
    """(variant, ratio or None, settings) of every run a sample gets."""
    runs = []
    for name, (changes, pruned) in VARIANTS.items():
        settings = replace(base, **changes)
        runs += [(name, ratio, settings) for ratio in RATIOS] if pruned else [(name, None, settings)]
    return runs


def run_variants(model, task: str, samples: int, seed: int = 0, fixed_steps: bool = False) -> dict:
    """``fixed_steps``: no stop string, every planned step runs (the speed benchmark's shape) instead of answers
    ending as in an evaluation."""
    base, think_mode = family("llada_v").settings(task_generation(task))
    if fixed_steps:
        base = replace(base, stop_strings=())
    runs = runs_of(base)
    measured: dict[tuple[str, float | None], list[dict]] = {(name, ratio): [] for name, ratio, _ in runs}
    for index in range(samples):
        sample = held_out(task, index)
        doc = TASKS[task](sample, index)
        question = task_prompt(task, doc)
        order = runs[index % len(runs) :] + runs[: index % len(runs)]
        for name, ratio, settings in order:
            pruner = make_pruner("redvtp", ratio=ratio) if ratio is not None else Pruner()
            generator = torch.Generator(model.device).manual_seed(seed + index)
            run = measure(
                model.device,
                lambda: generate(
                    model, model.prepare(question, [sample.image], think_mode), settings, pruner, generator
                ),
            )
            record = run.value.record
            measured[(name, ratio)].append(
                {
                    "doc_id": index,
                    "prediction": run.value.text,
                    "score": anls(references=doc["answers"], predictions=[run.value.text])["anls"],
                    "latency_s": run.seconds,
                    "flops": recorded_flops(model.config, record)["total"],
                    "steps": record.steps,
                    "visual_tokens_after": record.visual_tokens_after,
                }
            )
    official = measured[("official", None)]
    official_p50 = statistics.median(r["latency_s"] for r in official)
    official_flops = statistics.fmean(r["flops"] for r in official)
    rows = []
    for (name, ratio), results in measured.items():
        p50 = statistics.median(r["latency_s"] for r in results)
        flops = statistics.fmean(r["flops"] for r in results)
        rows.append(
            {
                "variant": name,
                "ratio": ratio,
                "speedup_p50": official_p50 / p50,
                "flop_bound": official_flops / flops,
                "latency_p50_s": p50,
                "flops": flops,
                "steps": statistics.fmean(r["steps"] for r in results),
                "score": statistics.fmean(r["score"] for r in results),
                "samples": results,
            }
        )
    return {"task": task, "samples": samples, "threshold": THRESHOLD, "fixed_steps": fixed_steps, "rows": rows}


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [
        f"# Variants on {report['task']}: {report['samples']} held-out samples, {env['device']}",
        "",
        f"Model `{report['model']}`, commit {env.get('commit', '?')}. Speed-up: official-style p50 latency over the"
        " variant's; FLOP bound: the FLOP model's speed-up on the forwards each variant ran; score: ANLS.",
        "",
        "| variant | r | speed-up p50 | FLOP bound | latency p50 s | steps | score |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        ratio = "—" if row["ratio"] is None else f"{row['ratio']:g}"
        lines.append(
            f"| {row['variant']} | {ratio} | {row['speedup_p50']:.2f}× | {row['flop_bound']:.2f}× "
            f"| {row['latency_p50_s']:.3f} | {row['steps']:.1f} | {row['score']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "checkpoints" / "toy-llada-v"))
    parser.add_argument("--task", default="redvtp_toy_docvqa", choices=["redvtp_toy_docvqa"])
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--fixed-steps", action="store_true", help="no stop string: every planned step runs")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--out", default=str(ROOT / "results" / "bench"))
    args = parser.parse_args()
    model = load_llada_v(args.model, dtype=args.dtype, device=args.device)
    report = {"model": Path(args.model).name, "environment": environment(args.device)}
    report |= run_variants(model, args.task, args.samples, fixed_steps=args.fixed_steps)
    out = device_directory(args.out, report["environment"]["device"])
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"variants_{args.task}{'_fixed_steps' if args.fixed_steps else ''}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
