"""Train LVPruning's decision modules on a frozen model, with the model's own masked-diffusion loss.

    python -m redvtp_eval.analysis.train_lvpruning --model checkpoints/toy-llada-v \
        --out checkpoints/lvpruning-toy-llada-v/lvpruning.pt --steps 300 --ratio 0.25

Where it sits: outside the pruners (it runs the model); it loads any model family the harness loads
(``engine.families``), draws toy training pages (:mod:`redvtp_eval.analysis.training_data`, never the held-out
splits) and writes the file that ``pruner=lvpruning pruner.modules=<file>`` loads
(:mod:`redvtp_eval.pruners.lvpruning`),
with a CARD.md beside it.

Objective (the pruner's docstring says what is the paper's and what is this project's): per example draw t ~ U(0, 1],
mask each response token with probability t, and take LLaDA's cross-entropy on the masked positions weighted by 1/t
and divided by the response length — through a forward of the frozen network (its own layers, run here) in which,
after each decision layer K, every visual token's keep decision d = hard + s − sg(s), s = σ((logit + g)/τ) with
logistic noise g (a straight-through Gumbel-sigmoid), multiplies the token's cumulative weight w as a key in every
later layer's attention: p_ij ∝ w_j·exp(q_i·k_j/√d_h) (w = 1 for every other token; a hard 0 drops the key as the
pruned inference does, and the gradient reaches the logits through the relaxed s). Plus λ·Σ_s (mean w after stage s
− r^{s/S})², the sparsity term toward the target ratio. Only the modules learn (AdamW); the model is frozen.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import Tensor
from torch.nn import functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from redvtp_eval.analysis.trainer_cli import command_line, load_frozen, provenance, trainer_parser
from redvtp_eval.analysis.training_data import Example, example
from redvtp_eval.pruners.base import geometric_fractions, layer_query_rows, scaled_layers
from redvtp_eval.pruners.lvpruning import DecisionModules

DEFAULT_LAYERS = (8, 16)
"""Decision layers of a 32-layer LM (depth/4 and depth/2), scaled to the model's depth (``scaled_layers``)."""


def weighted_layer(layer, hidden: Tensor, rope: tuple[Tensor, Tensor], weights: Tensor) -> Tensor:
    """One decoder layer (Llama or Qwen2 as the network holds it, bidirectional) with each key j's softmax term
    scaled by ``weights[:, j]`` (B, L): p_ij = w_j·exp(s_ij) / Σ_j' w_j'·exp(s_ij'). Weights of one give the
    layer's own output."""
    attention = layer.self_attn
    x = layer.input_layernorm(hidden)
    shape = (*x.shape[:-1], -1, attention.head_dim)
    q = attention.q_proj(x).view(shape).transpose(1, 2)
    k = attention.k_proj(x).view(shape).transpose(1, 2)
    v = attention.v_proj(x).view(shape).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, *rope)
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = (q @ k.transpose(-1, -2)).float() * attention.scaling
    terms = torch.exp(scores - scores.amax(dim=-1, keepdim=True)) * weights[:, None, None, :].float()
    probs = (terms / terms.sum(dim=-1, keepdim=True).clamp_min(1e-30)).to(v.dtype)
    out = (probs @ v).transpose(1, 2).reshape(*x.shape[:-1], -1)
    hidden = hidden + attention.o_proj(out)
    return hidden + layer.mlp(layer.post_attention_layernorm(hidden))


class _Rows:
    """The few fields of a LayerContext that ``layer_query_rows`` reads, for the uncut training sequence."""

    def __init__(self, spans: list[tuple[int, int]], prompt_length: int, length: int, device) -> None:
        inside = torch.zeros(prompt_length, dtype=torch.bool, device=device)
        for start, end in spans:
            inside[start:end] = True
        self.visual_spans = spans
        self.prompt_text = (~inside).nonzero().squeeze(1)
        self.response = torch.arange(prompt_length, length, device=device)
        self.masked = self.response


def decided_forward(
    model, modules: DecisionModules, example_: Example, noisy: Tensor, language: str, tau: float, generator
) -> tuple[Tensor, list[Tensor]]:
    """(G, vocab) logits of the response rows and, per decision layer, the mean kept weight of the visual tokens."""
    network = model.network
    prompt = example_.prompt
    sequence = torch.cat([prompt.embeds, model.embed(noisy)])[None]
    length, prompt_length = sequence.shape[1], len(prompt.embeds)
    positions = torch.arange(length, device=sequence.device)[None]
    rope = network.model.rotary_emb(sequence, positions)
    rows = _Rows(prompt.visual_spans, prompt_length, length, sequence.device)
    text = layer_query_rows(rows, language)
    visual = torch.cat([torch.arange(s, e, device=sequence.device) for s, e in prompt.visual_spans])
    weights = torch.ones(1, length, device=sequence.device)
    kept = torch.ones(len(visual), device=sequence.device)
    fractions, hidden = [], sequence
    for index, layer in enumerate(network.model.layers):
        hidden = weighted_layer(layer, hidden, rope, weights)
        if index + 1 in modules.layers:
            module = modules.stages[modules.layers.index(index + 1)]
            logits = module(hidden[0, visual], hidden[0, text])
            u = torch.rand(logits.shape, generator=generator, device=logits.device).clamp(1e-6, 1 - 1e-6)
            soft = torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / tau)
            kept = kept * ((soft > 0.5).float() + soft - soft.detach())
            weights = torch.ones(1, length, device=sequence.device).index_put((torch.zeros_like(visual), visual), kept)
            fractions.append(kept.mean())
    hidden = network.model.norm(hidden)
    rows_out = torch.arange(prompt_length, length, device=sequence.device)
    if model.shifted_logits:
        rows_out = rows_out - 1
    return network.lm_head(hidden[0, rows_out]).float(), fractions


def diffusion_term(model, modules, example_: Example, language: str, tau: float, generator) -> tuple[Tensor, list]:
    """LLaDA's masked-diffusion loss of one example with the modules' decisions in the forward."""
    response = example_.response
    t = torch.rand((), generator=generator).clamp_min(1e-3)
    masked = torch.rand(response.shape, generator=generator) < t
    if not masked.any():
        masked[torch.randint(len(response), (1,), generator=generator)] = True
    masked = masked.to(response.device)
    noisy = torch.where(masked, model.mask_token_id, response)
    logits, fractions = decided_forward(model, modules, example_, noisy, language, tau, generator)
    cross_entropy = F.cross_entropy(logits, response, reduction="none")
    return (cross_entropy * masked).sum() / t / len(response), fractions


def train(
    model,
    family: str,
    steps: int,
    ratio: float,
    layers: tuple[int, ...] | None = None,
    inner: int = 64,
    heads: int = 4,
    lr: float = 2e-3,
    sparsity: float = 4.0,
    tau: float = 1.0,
    language: str = "prompt",
    seed: int = 0,
    log: Path | None = None,
) -> tuple[DecisionModules, list[dict]]:
    """Train fresh modules on the frozen ``model``; returns them and the per-step log."""
    torch.manual_seed(seed)
    for parameter in model.network.parameters():
        parameter.requires_grad_(False)
    depth = model.num_layers
    chosen = tuple(layers) if layers else scaled_layers(DEFAULT_LAYERS, depth)
    hidden = model.network.model.embed_tokens.embedding_dim
    modules = DecisionModules(list(chosen), hidden, inner, heads).to(model.device)
    targets = geometric_fractions(ratio, len(chosen))
    optimizer = torch.optim.AdamW(modules.parameters(), lr=lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(seed)
    entries, started = [], time.perf_counter()
    for step in range(steps):
        with torch.no_grad():
            drawn = example(model, family, seed, step)
        loss, fractions = diffusion_term(model, modules, drawn, language, tau, generator)
        penalty = sum((f - target) ** 2 for f, target in zip(fractions, targets))
        total = loss + sparsity * penalty
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(modules.parameters(), 1.0)
        optimizer.step()
        entry = {
            "step": step + 1,
            "loss": loss.item(),
            "kept": [round(f.item(), 4) for f in fractions],
            "seconds": round(time.perf_counter() - started, 2),
        }
        entries.append(entry)
        if log is not None:
            with log.open("a") as handle:
                handle.write(json.dumps(entry) + "\n")
        if (step + 1) % 25 == 0 or step == 0:
            print(f"step {step + 1:>4}/{steps}  loss {entry['loss']:.4f}  kept {entry['kept']}", flush=True)
    modules.meta = {"target_ratio": ratio, "language": language, "seed": seed, "steps": steps}
    return modules.eval(), entries


def write_card(out: Path, command: str, args: argparse.Namespace, entries: list[dict], modules) -> None:
    tail = entries[-25:]
    lines = [
        "# LVPruning decision modules",
        "",
        f"Trained on the frozen `{args.model}` ({args.family}) by the pruner's own trainer; loaded by",
        f"`pruner=lvpruning pruner.modules={out}`. Decision layers {modules.layers}, target ratio {args.ratio}.",
        "",
        f"- command: `{command}`",
        f"- seed: {args.seed}; steps: {args.steps}; lr: {args.lr}; sparsity weight: {args.sparsity}; τ: {args.tau}",
        f"- training time: {provenance(entries[-1]['seconds'], args.device)}",
        f"- diffusion loss: first {entries[0]['loss']:.3f}, mean of the last {len(tail)} steps "
        f"{sum(e['loss'] for e in tail) / len(tail):.4f}; kept fractions at the end {entries[-1]['kept']}",
    ]
    (out.parent / "CARD.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> Path:
    parser = trainer_parser(__doc__.split("\n\n")[0], lr=2e-3)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--ratio", type=float, default=0.25, help="target fraction of visual tokens kept at the end")
    parser.add_argument("--layers", type=int, nargs="*", default=None, help="decision layer counts K")
    parser.add_argument("--sparsity", type=float, default=4.0, help="weight of the kept-fraction penalty")
    parser.add_argument("--tau", type=float, default=1.0, help="Gumbel-sigmoid temperature")
    parser.add_argument("--language", default="prompt", help="the language rows (LAYER_QUERIES)")
    args = parser.parse_args(argv)
    model = load_frozen(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    log = args.out.with_suffix(".log.jsonl")
    log.write_text("")
    modules, entries = train(
        model, args.family, args.steps, args.ratio, args.layers, args.inner, args.heads, args.lr, args.sparsity,
        args.tau, args.language, args.seed, log,
    )  # fmt: skip
    command = command_line("redvtp_eval.analysis.train_lvpruning", argv)
    modules.save(args.out, {"model": str(args.model), "family": args.family, "command": command})
    write_card(args.out, command, args, entries, modules)
    print(f"wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main()
