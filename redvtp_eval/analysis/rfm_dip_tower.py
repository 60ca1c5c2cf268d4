"""The vision-tower time and FLOPs that RFM+DIP's tile selection saves: encode every AnyRes crop, or the base view
first and then only the tiles the region focus module selects.

    python -m redvtp_eval.analysis.rfm_dip_tower --model checkpoints/toy-llada-v --ratio 0.25 --samples 16 \
        --out results/bench/amd-epyc/rfm_dip_tower_toy.json

Where it sits: outside the pruners (it runs the model's tower); it measures what the job cannot show, since the
pruner acts on the features of every crop (:mod:`redvtp_eval.pruners.rfm_dip`). Per held-out page of an offline toy
task: the crops the full AnyRes layout encodes and those the selection needs (base view + selected tiles), the
tower FLOPs of each (``engine.flops.vision_flops``: tower + projector), and the median wall time of
``encode_crops`` over ``--repeats`` runs after one warm-up (device-synchronised) — for the selection, the base
view and the selected tiles as two calls, as the coarse-to-fine order needs. The selection's own cost (the RFM on
the base view) is timed inside it. The JSON records the command, commit, hardware and every sample.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from redvtp_eval.analysis.training_data import question_and_answer
from redvtp_eval.engine.families import FAMILIES
from redvtp_eval.engine.flops import vision_flops
from redvtp_eval.harness.environment import environment
from redvtp_eval.harness.offline_tasks import TASKS, held_out
from redvtp_eval.pruners import make_pruner
from redvtp_eval.pruners.base import kept_count
from redvtp_eval.pruners.rfm_dip import select_tiles, tile_under_base


def seconds(device: torch.device, run, repeats: int) -> float:
    """Median wall time of ``run`` over ``repeats`` runs after one warm-up, synchronised on the device."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    run()
    times = []
    for _ in range(repeats):
        sync()
        started = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


@torch.no_grad()
def measure(model, pruner, image, question: str, think_mode, repeats: int) -> dict:
    network = model.network
    pixels, layout = model.image_crops([image])
    prompt = model.prepare(question, [image], think_mode)
    ((start, end),) = prompt.visual_spans
    features, crops, grids = prompt.embeds[start:end], prompt.token_crops[0], prompt.visual_grids[0]
    inside = torch.zeros(len(prompt.embeds), dtype=torch.bool, device=model.device)
    inside[start:end] = True
    text = prompt.embeds[~inside]
    base = (crops == 0).nonzero().squeeze(1)

    def choose():
        relevance = pruner.rfm(features[base], text)
        if kept_count(len(features), pruner.ratio) <= len(base):
            return crops.new_zeros(0)
        return select_tiles(relevance, tile_under_base(crops, grids), pruner.ratio, pruner.max_tiles)

    chosen = choose()
    needed = torch.cat([chosen.new_zeros(1), chosen])
    full_s = seconds(model.device, lambda: network.encode_crops(pixels), repeats)
    selected_s = seconds(
        model.device,
        lambda: (
            (network.encode_crops(pixels[:1]), network.encode_crops(pixels[chosen]))
            if len(chosen)
            else network.encode_crops(pixels[:1])
        ),
        repeats,
    )
    select_s = seconds(model.device, choose, repeats)
    return {
        "crops_full": layout.crops,
        "crops_selected": len(needed),
        "tiles_selected": chosen.tolist(),
        "tower_flops_full": vision_flops(model.config, layout.crops),
        "tower_flops_selected": vision_flops(model.config, len(needed)),
        "tower_s_full": full_s,
        "tower_s_selected": selected_s,
        "selection_s": select_s,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--family", default="llada_v", choices=list(FAMILIES))
    parser.add_argument("--modules", default=None, help="the RFM file (default: the pruner's)")
    parser.add_argument("--task", default="redvtp_toy_docvqa", choices=list(TASKS))
    parser.add_argument("--ratio", type=float, default=0.25)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    model = FAMILIES[args.family].load(args.model, dtype=args.dtype, device=args.device)
    pruner = make_pruner("rfm_dip", ratio=args.ratio, modules=args.modules)
    think_mode = FAMILIES[args.family].settings({} if args.family != "llada_v" else {"think_mode": "no_think"})[1]
    rows = []
    for index in range(args.samples):
        sample = held_out(args.task, index)
        question, _ = question_and_answer(args.task, sample)
        rows.append({"index": index, **measure(model, pruner, sample.image, question, think_mode, args.repeats)})
    total = lambda key: sum(row[key] for row in rows)  # noqa: E731
    report = {
        "command": "python -m redvtp_eval.analysis.rfm_dip_tower "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "environment": environment(args.device),
        "ratio": args.ratio,
        "timer": "encode_crops (tower + projector) only; median of --repeats after one warm-up; selection timed apart",
        "summary": {
            "crops_full": total("crops_full"),
            "crops_selected": total("crops_selected"),
            "tower_flops_saved": 1 - total("tower_flops_selected") / total("tower_flops_full"),
            "tower_time_saved": 1 - total("tower_s_selected") / total("tower_s_full"),
            "selection_s_over_tower_s_full": total("selection_s") / total("tower_s_full"),
        },
        "samples": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(json.dumps(report["summary"], indent=2))
    return report


if __name__ == "__main__":
    main()
