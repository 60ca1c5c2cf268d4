"""LVPruning: small trained cross-attention modules (vision tokens ask, language tokens answer) decide at a few LM
layers up to the middle which visual tokens to drop; the model itself stays frozen.

Where it sits: the inside-the-LM stage of :mod:`redvtp_eval.pruners.base`, in the forward of step 1, on the visual
tokens' hidden states (``in_lm_needs_hidden``). The modules are trained outside the pruners, on the frozen model
(:mod:`redvtp_eval.analysis.train_lvpruning`), and loaded here from their own file (``modules``).

Paper: Sun et al., "LVPruning: An Effective yet Simple Language-Guided Vision Token Pruning Approach for Multi-modal
Large Language Models" (NAACL Findings 2025, arXiv 2501.13652; no public code — the rule here is built from the
abstract and the paper's framework figure): modules inserted at some LM layers take the vision tokens as queries and
the language tokens as keys and values and predict a keep/drop decision per vision token; during training the
decisions mask attention, at inference the dropped tokens are removed by indexing; up to 90 % of the vision tokens
are gone by the middle layer of LLaVA-1.5; the MLLM's parameters are not changed.

This project's reading, and the adaptation to a bidirectional masked-diffusion model:

* Module (one per decision layer K, :class:`DecisionModule`): RMS-normalised hidden states; multi-head attention
  with the image's visual tokens as queries and the ``language`` rows as keys and values; the keep logit is an
  MLP of [visual state, attended language]. Sizes are in the file.
* Language rows: an AR model's language tokens are the instruction before the answer; here the forward holds the
  prompt text and the still-masked response, so ``language`` is any query set of ``LAYER_QUERIES`` (default
  ``prompt``: every prompt text position — system prompt, question, chat markup — at layer K).
* Decision layers: those the file was trained for (the trainer's default: depth/4 and depth/2, two modules —
  the paper's layer choice is not in its abstract; "up to the middle layer" is). Counts, per image of N tokens:
  stage s of S keeps ``max(1, int(N·r^{s/S}))`` of the original N, the last ``max(1, int(N·r))`` (matched cost);
  within a stage the tokens with the highest keep logits stay (the trained decisions' threshold is replaced by a
  top-k, so one trained file serves every ratio; the trainer's target ratio is in the file).
* Persistence: decided in step 1's forward (every response row masked) and replayed after the same layers by every
  later forward (``in_lm_persist="layers"``: the AR KV cache after an LVPruning prefill; the visual tokens' hidden
  states before layer K are recomputed each step in a model without a cache). Positions stay the original ones.
  Needs hidden states, so not with LaViDa's prefix cache.
* Training (the trainer): the frozen model's own masked-diffusion loss (LLaDA's 1/t-weighted cross-entropy on the
  masked response positions) through a forward in which each visual token's keep decision, a straight-through
  Gumbel-sigmoid sample of its logit, multiplies its weight as a key in every later layer's softmax (a hard 0/1 in
  the forward, the relaxed sample's gradient in the backward), plus a squared penalty on the gap between the mean
  kept fraction after each decision layer and its target r^{s/S}.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from redvtp_eval.pruners.base import (
    LayerContext,
    Pruner,
    check_queries,
    check_ratio,
    geometric_fractions,
    layer_query_rows,
    top_of_original,
)
from redvtp_eval.pruners.trained import TrainedModules

DEFAULT_MODULES = "checkpoints/lvpruning-toy-llada-v/lvpruning.pt"
TRAIN_COMMAND = "python -m redvtp_eval.analysis.train_lvpruning --model <checkpoint> --out <file.pt>"


class DecisionModule(nn.Module):
    """Keep logits of the visual tokens at one LM layer: visual states ask (queries), language states answer."""

    def __init__(self, hidden: int, inner: int, heads: int) -> None:
        super().__init__()
        if inner % heads:
            raise ValueError(f"inner size {inner} is not a multiple of {heads} heads")
        self.heads = heads
        self.norm_visual = nn.RMSNorm(hidden, eps=1e-6)
        self.norm_text = nn.RMSNorm(hidden, eps=1e-6)
        self.query = nn.Linear(hidden, inner)
        self.key = nn.Linear(hidden, inner)
        self.value = nn.Linear(hidden, inner)
        self.score = nn.Sequential(nn.Linear(hidden + inner, inner), nn.GELU(), nn.Linear(inner, 1))

    def forward(self, visual: Tensor, text: Tensor) -> Tensor:
        """(..., N, hidden) visual and (..., T, hidden) language states → (..., N) keep logits."""
        v, t = self.norm_visual(visual.float()), self.norm_text(text.float())
        split = lambda x: x.unflatten(-1, (self.heads, -1)).transpose(-3, -2)  # noqa: E731
        q, k, val = split(self.query(v)), split(self.key(t)), split(self.value(t))
        attended = F.scaled_dot_product_attention(q, k, val).transpose(-3, -2).flatten(-2)
        return self.score(torch.cat([v, attended], dim=-1)).squeeze(-1)


class DecisionModules(TrainedModules):
    """One :class:`DecisionModule` per decision layer K, and what they were trained for."""

    method = "lvpruning"
    train_command = TRAIN_COMMAND

    def __init__(self, layers: list[int], hidden: int, inner: int = 64, heads: int = 4, meta: dict | None = None):
        super().__init__(meta)
        self.layers = [int(k) for k in layers]
        if self.layers != sorted(set(self.layers)) or not self.layers or self.layers[0] < 1:
            raise ValueError(f"decision layers must be increasing layer counts K >= 1, got {layers}")
        self.hidden, self.inner, self.heads = hidden, inner, heads
        self.stages = nn.ModuleList(DecisionModule(hidden, inner, heads) for _ in self.layers)

    def config(self) -> dict:
        return {"layers": self.layers, "hidden": self.hidden, "inner": self.inner, "heads": self.heads}


class LVPruning(Pruner):
    name = "lvpruning"
    in_lm_persist = "layers"
    in_lm_needs_hidden = True

    def __init__(
        self,
        ratio: float = 0.5,
        modules: str | None = None,
        language: str = "prompt",
        keep_positions: bool = True,
        **options,
    ) -> None:
        super().__init__(keep_positions=keep_positions, **options)
        self.ratio = check_ratio(ratio)
        self.language = check_queries(language)
        self.modules = DecisionModules.load(modules or DEFAULT_MODULES)
        self.fractions = geometric_fractions(self.ratio, len(self.modules.layers))
        self._sizes: list[int] = []

    def lm_layers(self, depth: int) -> tuple[int, ...]:
        if self.modules.layers[-1] >= depth:
            raise ValueError(
                f"lvpruning's modules act after layers {self.modules.layers}, but the model has {depth} layers: "
                f"train modules for this model ({TRAIN_COMMAND})"
            )
        return tuple(self.modules.layers)

    def logits(self, context: LayerContext) -> list[Tensor]:
        """Per image, the keep logit of each current visual token at this decision layer."""
        hidden = context.visual_hidden()
        if hidden and hidden[0].shape[-1] != self.modules.hidden:
            raise ValueError(
                f"lvpruning's modules were trained for hidden size {self.modules.hidden} "
                f"({self.modules.meta.get('model', 'another model')}); this model's is {hidden[0].shape[-1]}: "
                f"train modules for it ({TRAIN_COMMAND})"
            )
        module = self.modules.stages[self.modules.layers.index(context.layer)].to(hidden[0].device)
        text = context.hidden[layer_query_rows(context, self.language)]
        with torch.no_grad():
            return [module(states, text) for states in hidden]

    def in_lm(self, context: LayerContext) -> list[Tensor]:
        stage = self.modules.layers.index(context.layer)
        if stage == 0:
            self._sizes = [end - start for start, end in context.visual_spans]
        fraction = self.fractions[stage]
        return top_of_original(self.logits(context), self._sizes, fraction)
