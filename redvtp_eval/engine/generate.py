"""Ask one question about one image, unpruned and with RedVTP, and show what each run did.

    python -m redvtp_eval.engine.generate --model checkpoints/tiny-llada-v --ratio 0.5
    python -m redvtp_eval.engine.generate --model GSAI-ML/LLaDA-V --image page.png --question "What is the total?" \\
        --device cuda --gen-length 32 --steps 16 --block-length 32

Where it sits: a direct user of the engine (model + pruner + sampler), for trying a checkpoint by hand.
Benchmarks and evaluations go through the harness instead. Without ``--image`` it draws a sample page.
"""

from __future__ import annotations

import argparse

import torch
from PIL import Image, ImageDraw

from redvtp_eval.engine.sampler import Generation, GenerationSettings, generate
from redvtp_eval.models.checkpoint import CheckpointError
from redvtp_eval.models.llada_v import load_llada_v
from redvtp_eval.pruners import make_pruner


def sample_page() -> Image.Image:
    """An 800×600 invoice-like page with the answer in one box."""
    image = Image.new("RGB", (800, 600), "white")
    draw = ImageDraw.Draw(image)
    draw.text((40, 30), "INVOICE 2026-11", fill="black")
    for row, (item, price) in enumerate([("paper", "12.50"), ("ink", "30.00"), ("staples", "4.25")]):
        draw.text((60, 120 + 40 * row), f"{item:<10} {price:>8}", fill="black")
    draw.rectangle((420, 420, 760, 520), outline="blue", width=4)
    draw.text((440, 460), "TOTAL 46.75", fill="blue")
    return image


def summary(label: str, result: Generation) -> str:
    record = result.record
    seconds = record.seconds
    total = seconds["vision"] + seconds["preprocess"] + seconds["denoise"] + seconds["prune"]
    return (
        f"{label:<14} visual {record.visual_tokens_before:>5} -> {record.visual_tokens_after:<5} "
        f"steps {record.steps:>3}  first step {seconds['first_step']:.3f}s  denoise {seconds['denoise']:.3f}s  "
        f"prune {seconds['prune']:.4f}s  total {total:.3f}s  answer {result.text!r}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="GSAI-ML/LLaDA-V", help="checkpoint directory or hub id in the HF cache")
    parser.add_argument("--image", help="image file (default: a drawn sample page)")
    parser.add_argument("--question", default="What is the total amount?")
    parser.add_argument("--ratio", type=float, default=0.5, help="fraction of visual tokens RedVTP keeps")
    parser.add_argument("--gen-length", type=int, default=32)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--block-length", type=int, default=32)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    try:
        settings = GenerationSettings(args.gen_length, args.steps, args.block_length)
        pruner = make_pruner("redvtp", ratio=args.ratio)
        model = load_llada_v(args.model, dtype=args.dtype, device=args.device)
    except (CheckpointError, ValueError) as error:
        parser.exit(2, f"error: {error}\n")
    image = Image.open(args.image) if args.image else sample_page()
    prompt = model.prepare(args.question, [image], think_mode="no_think")
    unpruned = generate(model, prompt, settings)
    pruned = generate(model, prompt, settings, pruner)
    print(summary("unpruned", unpruned))
    print(summary(f"redvtp r={args.ratio:g}", pruned))
    speedup = unpruned.record.seconds["denoise"] / max(
        pruned.record.seconds["denoise"] + pruned.record.seconds["prune"], 1e-9
    )
    print(f"denoising loop speed-up (incl. pruning): {speedup:.2f}x")


if __name__ == "__main__":
    main()
