"""What RedVTP's scoring costs on the first denoising step, next to the official way of getting the scores.

    python -m redvtp_eval.bench.scoring --size cpu --repeats 5            # reduced size, runs on a laptop CPU
    python -m redvtp_eval.bench.scoring --size llada-v --device cuda --dtype bfloat16

Where it sits: a benchmark of the engine, outside the harness; results go to ``results/bench/``.

Three first steps on the same synthetic DocVQA-shaped sequence (47 system tokens, an 800×600 page's
3627 visual tokens, 30 question tokens, 32 masks), random weights (timing does not depend on them):
``plain`` — the unpruned step; ``probed`` — the same step on SDPA with the attention probe, plus the
RedVTP score and top-k; ``official`` — eager attention keeping each layer's head-averaged T×T map, then
averaging them, as the official code does. Each is timed ``repeats`` times after one warm-up, with the
device synchronised; medians and raw lists are written.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from redvtp_eval.environment import environment
from redvtp_eval.models.attention import AttentionProbe
from redvtp_eval.models.llada_v import LladaVConfig, build_network, parse_dtype
from redvtp_eval.models.make_tiny import TINY_CONFIG
from redvtp_eval.pruners import PruneContext, VisualAttention, make_pruner
from redvtp_eval.timing import Timer

LLADA_V_TEXT = {
    "hidden_size": 4096,
    "intermediate_size": 12288,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 126464,
}
SIZES = {
    "llada-v": LLADA_V_TEXT,
    "cpu": {
        **LLADA_V_TEXT,
        "hidden_size": 512,
        "intermediate_size": 1536,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 8,
    },
    "tiny": {},
}
SHAPE = {"system": 47, "visual": 3627, "question": 30, "gen_length": 32}


def run(size: str, device: str, dtype: str, repeats: int) -> dict:
    torch_device, torch_dtype = torch.device(device), parse_dtype(dtype)
    raw = {**TINY_CONFIG, **SIZES[size]}
    networks = {
        attention: build_network(LladaVConfig.from_dict(raw, attention), torch_dtype, torch_device)
        for attention in ("sdpa", "eager")
    }
    generator = torch.Generator(device=torch_device).manual_seed(0)
    for parameter in networks["sdpa"].parameters():
        parameter.data.normal_(0.0, 0.02, generator=generator)
    networks["eager"].load_state_dict(networks["sdpa"].state_dict())

    length = sum(SHAPE.values())
    embeds = torch.randn(1, length, raw["hidden_size"], device=torch_device, dtype=torch_dtype, generator=generator)
    positions = torch.arange(length, device=torch_device)[None]
    start, end = SHAPE["system"], SHAPE["system"] + SHAPE["visual"]
    visual = torch.arange(start, end, device=torch_device)
    response = torch.arange(length - SHAPE["gen_length"], length, device=torch_device)
    prompt_text = torch.cat([torch.arange(0, start), torch.arange(end, response[0])]).to(torch_device)
    pruner = make_pruner("redvtp", ratio=0.25)

    def plain() -> None:
        networks["sdpa"].hidden_states(embeds, positions, None)

    def probed() -> None:
        probe = AttentionProbe(torch.cat([prompt_text, response]), visual)
        networks["sdpa"].hidden_states(embeds, positions, probe)
        context = PruneContext(
            step=1,
            visual_spans=[(start, end)],
            masked=response[2:],
            decoded=response[:2],
            response=response,
            prompt_text=prompt_text,
            attention=VisualAttention(probe, length),
        )
        pruner.select(context)

    def official() -> None:
        maps = []
        hooks = [
            layer.self_attn.register_forward_hook(lambda module, args, output: maps.append(output[1][0].mean(dim=0)))
            for layer in networks["eager"].model.layers
        ]
        networks["eager"].hidden_states(embeds, positions, None)
        for hook in hooks:
            hook.remove()
        scores = torch.stack(maps).mean(dim=0)[response[2:]][:, start:end].mean(dim=0)
        torch.topk(scores, int(len(scores) * 0.25))

    timer = Timer(torch_device)
    results = {}
    with torch.no_grad():
        for name, step in {"plain": plain, "probed": probed, "official": official}.items():
            step()
            seconds, peaks = [], []
            for _ in range(repeats):
                if torch_device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(torch_device)
                with timer(name):
                    step()
                seconds.append(timer.seconds.pop(name))
                if torch_device.type == "cuda":
                    peaks.append(torch.cuda.max_memory_allocated(torch_device) / 2**30)
            results[name] = {
                "median_s": statistics.median(seconds),
                "seconds": seconds,
                "peak_gib": max(peaks, default=None),
            }
    plain_s = results["plain"]["median_s"]
    return {
        "size": size,
        "text_config": {key: raw[key] for key in LLADA_V_TEXT},
        "dtype": dtype,
        "shape": SHAPE,
        "sequence_length": length,
        "repeats": repeats,
        "environment": environment(torch_device),
        "steps": results,
        "probed_overhead": results["probed"]["median_s"] / plain_s - 1,
        "official_overhead": results["official"]["median_s"] / plain_s - 1,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=list(SIZES), default="cpu")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    args = parser.parse_args()
    report = run(args.size, args.device, args.dtype, args.repeats)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"scoring_overhead_{args.size}_{torch.device(args.device).type}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    for name, step in report["steps"].items():
        print(f"{name:<9} median {step['median_s']:.4f}s  peak {step['peak_gib']} GiB")
    overhead, official = report["probed_overhead"], report["official_overhead"]
    print(f"scoring overhead on the first step: {overhead:+.1%} (official approach {official:+.1%})")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
