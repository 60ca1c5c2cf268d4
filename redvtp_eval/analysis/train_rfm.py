"""Distil LRS-VQA's region focus module (RFM) from a frozen model's text→vision attention.

    python -m redvtp_eval.analysis.train_rfm --model checkpoints/toy-llada-v \
        --out checkpoints/rfm-toy-llada-v/rfm.pt --samples 96 --epochs 20

Where it sits: outside the pruners (it runs the model); it loads any model family the harness loads
(``engine.families``), draws toy training pages (:mod:`redvtp_eval.analysis.training_data`, never the held-out
splits) and writes the file that ``pruner=rfm_dip pruner.modules=<file>`` loads (:mod:`redvtp_eval.pruners.rfm_dip`),
with a CARD.md beside it.

Teacher, per example: the LM's attention at step 1 (every response position masked, the unpruned prompt), averaged
over heads and layers (``AttentionProbe``), from the masked response rows to the image's visual tokens, renormalised
over them. Student: the RFM's relevance from the projected features and the prompt's text embeddings. Loss:
KL(teacher ‖ student), AdamW over the RFM only; the teachers are computed once (the model is frozen).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import Tensor

from redvtp_eval.analysis.trainer_cli import command_line, load_frozen, provenance, trainer_parser
from redvtp_eval.analysis.training_data import example
from redvtp_eval.models.attention import AttentionProbe
from redvtp_eval.pruners.rfm_dip import RegionFocusModule


@torch.no_grad()
def teacher(model, prompt, gen_length: int) -> list[Tensor]:
    """Per image, (N,) the LM's head- and layer-averaged attention from the masked response rows, summing to one."""
    masks = torch.full((gen_length,), model.mask_token_id, device=model.device)
    embeds = torch.cat([prompt.embeds, model.embed(masks)])
    positions = torch.arange(len(embeds), device=model.device)
    rows = torch.arange(len(prompt.embeds), len(embeds), device=model.device)
    cols = torch.cat([torch.arange(s, e, device=model.device) for s, e in prompt.visual_spans])
    probe = AttentionProbe(rows, cols)
    model.logits(embeds, positions, rows[:1], probe=probe)
    received = probe.mean().mean(dim=0).split([e - s for s, e in prompt.visual_spans])
    return [r / r.sum() for r in received]


def distillation_set(model, family: str, samples: int, seed: int) -> list[tuple[Tensor, Tensor, Tensor]]:
    """(features, text embeddings, teacher) per image of ``samples`` training examples."""
    data = []
    for index in range(samples):
        drawn = example(model, family, seed, index)
        prompt = drawn.prompt
        inside = torch.zeros(len(prompt.embeds), dtype=torch.bool, device=model.device)
        for start, end in prompt.visual_spans:
            inside[start:end] = True
        text = prompt.embeds[~inside]
        for (start, end), target in zip(prompt.visual_spans, teacher(model, prompt, drawn.settings.gen_length)):
            data.append((prompt.embeds[start:end].detach(), text.detach(), target))
    return data


def kl(target: Tensor, student: Tensor) -> Tensor:
    return (target * (target.clamp_min(1e-12).log() - student.clamp_min(1e-12).log())).sum()


def train(
    model, family: str, samples: int, epochs: int, inner: int = 64, heads: int = 4, lr: float = 3e-3, seed: int = 0
) -> tuple[RegionFocusModule, list[dict]]:
    torch.manual_seed(seed)
    started = time.perf_counter()
    data = distillation_set(model, family, samples, seed)
    hidden = model.network.model.embed_tokens.embedding_dim
    rfm = RegionFocusModule(hidden, inner, heads).to(model.device)
    optimizer = torch.optim.AdamW(rfm.parameters(), lr=lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(seed)
    entries = []
    for epoch in range(epochs):
        total = 0.0
        for index in torch.randperm(len(data), generator=generator).tolist():
            features, text, target = data[index]
            loss = kl(target, rfm(features, text))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item()
        entries.append(
            {"epoch": epoch + 1, "kl": total / len(data), "seconds": round(time.perf_counter() - started, 2)}
        )
        print(f"epoch {epoch + 1:>3}/{epochs}  KL {entries[-1]['kl']:.4f}", flush=True)
    rfm.meta = {"samples": samples, "epochs": epochs, "seed": seed}
    return rfm.eval(), entries


def main(argv: list[str] | None = None) -> Path:
    parser = trainer_parser(__doc__.split("\n\n")[0], lr=3e-3)
    parser.add_argument("--samples", type=int, default=96, help="training pages (teachers computed once)")
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args(argv)
    model = load_frozen(args)
    rfm, entries = train(model, args.family, args.samples, args.epochs, args.inner, args.heads, args.lr, args.seed)
    command = command_line("redvtp_eval.analysis.train_rfm", argv)
    rfm.save(args.out, {"model": str(args.model), "family": args.family, "command": command})
    lines = [
        "# LRS-VQA region focus module (RFM)",
        "",
        f"Distilled from the frozen `{args.model}` ({args.family}); loaded by",
        f"`pruner=rfm_dip pruner.modules={args.out}`.",
        "",
        f"- command: `{command}`",
        f"- seed: {args.seed}; pages: {args.samples}; epochs: {args.epochs}; lr: {args.lr}",
        f"- time (teachers + training): {provenance(entries[-1]['seconds'], args.device)}",
        f"- KL(teacher ‖ RFM): first epoch {entries[0]['kl']:.4f}, last {entries[-1]['kl']:.4f}",
    ]
    (args.out.parent / "CARD.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main()
