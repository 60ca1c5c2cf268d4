"""The pruner interface: the three places where a pruner may act, what it sees there, and what it returns.

Where it sits: the sampler (and, through the layer hook it passes, the model) calls a pruner at the
stages it declares; a pruner never sees the model classes, the tokenizer or the evaluation harness, and
imports neither ``models`` nor the harness. Stages, in the order data flows:

1. **before the language model** (:meth:`Pruner.before_lm`): once per generation, before step 1 (and
   before the prefix cache is filled), on the projected visual features of each image as they were
   spliced into the prompt, with the prompt's text embeddings and, if the pruner asks
   (``needs_tower_attention``), the attention each visual token received in the vision tower (:class:`VisualInput`).
2. **inside the language model** (:meth:`Pruner.in_lm`): in the forward of denoising step
   ``in_lm_step``, after the first K layers for each K in ``in_lm_layers``, with those layers' output
   hidden states and, if :meth:`Pruner.layer_queries` names query rows, the K-th layer's attention from
   them to the visual tokens (probed row-wise, :class:`LayerContext`). The tokens it drops are gone for
   the remaining layers of that forward; afterwards ``in_lm_persist`` says where: ``"sequence"`` — gone
   from the sequence for every later step (all layers), or ``"layers"`` — every later forward runs the
   first K layers on every visual token and drops the same tokens after layer K (an AR model's KV cache
   after a FastV prefill, replayed by a model that recomputes the prompt every step).
3. **between denoising steps** (:meth:`Pruner.select`): after every step for which
   :meth:`Pruner.acts_after` is true (default: step ``prune_after_step`` only), with a
   :class:`PruneContext`; the tokens not kept are deleted for every later step.

Every stage returns, per image, the sorted indices of the image's current visual tokens to keep — or a
:class:`Reduction`, which may also give the kept tokens new values (**merging**: a merged token takes
the place, position and RoPE angle of the kept token it is written into; which token that is, is the
method's rule, stated in its docstring). ``None`` keeps everything.

Adding a pruner: one file with a :class:`Pruner` subclass, and one line in ``pruners/__init__.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor


class VisualAttention(Protocol):
    """Attention that query positions pay to the visual tokens, averaged over heads and layers, from one forward.

    Called with query positions (of the current sequence), it returns one row per query and one column per
    visual token; columns follow the visual spans in order (image 1's tokens, then image 2's…). The sampler
    builds it from the step's forward (``engine.sampler.ProbedAttention``); a pruner only calls it, so it
    never sees the model or how the attention was recorded.
    """

    def __call__(self, queries: Tensor) -> Tensor: ...


class KeyAttention(Protocol):
    """Attention (head-averaged, one layer) that query positions pay to chosen non-visual key positions.

    Called with query positions and key positions (both of the forward's current sequence, outside the visual
    spans), it returns one row per query and one column per key, normalised over *every* key of the forward.
    """

    def __call__(self, queries: Tensor, keys: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class PruneContext:
    """The sequence as it stands after the step just run. Positions index the current sequence."""

    step: int
    visual_spans: list[tuple[int, int]]
    masked: Tensor
    """Response positions still masked after this step's commit (the paper's still-masked set)."""
    decoded: Tensor
    """Response positions committed by this step."""
    response: Tensor
    prompt_text: Tensor
    """Prompt positions outside the visual spans (system prompt, question, chat markup)."""
    attention: VisualAttention | None
    generator: torch.Generator | None = None
    """The generation's random stream (seeded per sample by the harness), for pruners that draw."""
    embeds: Tensor | None = None
    """(prompt length, d) the prompt's current input embeddings (what a merging pruner merges)."""
    region: list[Tensor | None] | None = None
    """Per image, a boolean mask over its *original* tokens of those that show the answer (toy tasks only)."""
    original_index: list[Tensor] | None = None
    """Per image, the original index of each current visual token."""
    original_sizes: list[int] | None = None
    """Per image, its visual token count N as the prompt was built (before any stage pruned)."""
    total_steps: int | None = None
    """Denoising steps the generation plans (``GenerationSettings.steps``); fewer run when it ends early."""

    def split_by_image(self, values: Tensor) -> list[Tensor]:
        return list(values.split([end - start for start, end in self.visual_spans], dim=-1))


@dataclass(frozen=True)
class Reduction:
    """Per image, the sorted indices of the current visual tokens that stay, and optionally their new values."""

    kept: list[Tensor]
    values: list[Tensor | None] | None = None
    """Per image, (len(kept), d) values written into the kept tokens (embeddings before the LM and between
    steps, hidden states inside it); None, or None for an image, leaves them as they are."""
    sources: list[Tensor | None] | None = None
    """Per image, for each current visual token, the index in ``kept`` of the token whose value it was averaged
    into (−1: it leaves without a trace), when every value is the plain mean of the tokens pointing at it. Inside
    the LM, a drop that later forwards replay (``in_lm_persist="layers"``) then redoes the same averages on each
    later forward's hidden states (without it a replay only drops); between steps, a cache merges the entries it
    holds for the tokens the same way (without it, merging between steps under a cache is refused)."""


Kept = list[Tensor] | Reduction | None


def as_reduction(kept: Kept) -> Reduction | None:
    return kept if isinstance(kept, Reduction) or kept is None else Reduction(list(kept))


@dataclass(frozen=True)
class VisualInput:
    """What a pruner sees before the language model: one generation's visual tokens, per image."""

    features: list[Tensor]
    """Per image, (N, d) projected visual features, in the order they were spliced into the prompt."""
    text: Tensor
    """(T, d) embeddings of the prompt's text positions (system prompt, question, chat markup), in order."""
    grids: list[list[tuple[int, int, int, int]]]
    """Per image, its 2-D token grids as (first token, rows, columns, row stride), row-major; tokens outside every grid
    (AnyRes ``image_newline``) are in none. Empty when the model does not say."""
    region: list[Tensor | None] | None = None
    """Per image, a boolean mask of the tokens that show the answer (toy tasks only; None elsewhere)."""
    generator: torch.Generator | None = None
    tower_attention: list[Tensor] | None = None
    """Per image, (N,) float32 attention each visual token received inside the vision tower, aligned with
    ``features`` (the model's rule: received attention of the patches at layer :attr:`Pruner.tower_layer`,
    averaged over heads and query patches, carried through the same pooling and AnyRes packing as the features;
    ``image_newline`` tokens 0). Filled only for a pruner with ``needs_tower_attention``; None otherwise."""
    crops: list[Tensor] | None = None
    """Per image, (N,) long: the AnyRes crop each token mostly comes from (0: base view, 1…: tiles row-major, −1:
    ``image_newline``), as the model laid them out; None when the model does not say (one crop per image)."""


@dataclass(frozen=True)
class LayerContext:
    """Inside the forward of step ``step``, after its first ``layer`` layers. Positions index the forward's
    current keys: the prompt as it stands after earlier drops in this forward, then the response."""

    step: int
    layer: int
    visual_spans: list[tuple[int, int]]
    prompt_text: Tensor
    response: Tensor
    masked: Tensor
    """Response positions masked when this step began (none is committed before the forward ends)."""
    hidden: Tensor | None = None
    """(keys, d) output of layer ``layer``; None with the prefix cache (its step forward runs the response only)."""
    attention: VisualAttention | None = None
    """Attention of layer ``layer`` (head-averaged) from the rows :meth:`Pruner.layer_queries` asked for."""
    key_attention: KeyAttention | None = None
    """The same rows' attention to the non-visual keys; only for a pruner with ``in_lm_key_attention``."""

    def split_by_image(self, values: Tensor) -> list[Tensor]:
        return list(values.split([end - start for start, end in self.visual_spans], dim=-1))

    def visual_hidden(self) -> list[Tensor]:
        if self.hidden is None:
            raise ValueError("this pruner reads visual hidden states, which a prefix-cached step does not compute")
        return [self.hidden[start:end] for start, end in self.visual_spans]


LAYER_QUERIES = ("last_prompt", "masked", "response", "prompt", "after_image")
"""Query rows that stand in for an AR model's "last instruction token" (or its instruction) inside a
bidirectional forward: the prompt's last text token (the literal one), the response positions masked when the
step began (RedVTP's choice), every response position, every prompt text token, or the prompt text after the
last image (the instruction an AR method reads after the image). Parts join with ``+`` (``after_image+masked``)."""


def layer_query_rows(context: LayerContext, queries: str) -> Tensor:
    parts = []
    for part in queries.split("+"):
        if part == "last_prompt":
            parts.append(context.prompt_text[-1:])
        elif part == "masked":
            parts.append(context.masked)
        elif part == "response":
            parts.append(context.response)
        elif part == "after_image":
            end = context.visual_spans[-1][1] if context.visual_spans else 0
            after = context.prompt_text[context.prompt_text >= end]
            parts.append(after if len(after) else context.prompt_text)
        else:
            parts.append(context.prompt_text)
    return parts[0] if len(parts) == 1 else torch.cat(parts).unique()


def received_attention(context: LayerContext, queries: str) -> list[Tensor] | None:
    """Per image, the attention each visual token receives at this layer, averaged over heads and the query rows
    (FastV's and PDrop's score); None when nothing was probed or no query row is left."""
    rows = layer_query_rows(context, queries)
    if context.attention is None or len(rows) == 0:
        return None
    return context.split_by_image(context.attention(rows).mean(dim=0))


def check_queries(queries: str) -> str:
    if not all(part in LAYER_QUERIES for part in queries.split("+")):
        raise ValueError(f"queries {queries!r} is not one of {', '.join(LAYER_QUERIES)} (or parts joined by +)")
    return queries


def top_count(scores: Tensor, count: int) -> Tensor:
    """Sorted indices of the ``count`` highest ``scores`` (all of them if there are fewer)."""
    return torch.topk(scores, min(count, len(scores))).indices.sort().values


def top_k_kept(scores: list[Tensor], ratio: float) -> list[Tensor]:
    """Per image, the top ``max(1, int(N·r))`` tokens by score, in their original order."""
    return [top_count(s, kept_count(len(s), ratio)) for s in scores]


def top_of_original(scores: list[Tensor], sizes: list[int], fraction: float) -> list[Tensor]:
    """Per image, the top ``max(1, int(N·fraction))`` tokens by score, N the image's token count before any pruning:
    a later stage's fraction is of the original tokens, not of what the stages before it left."""
    return [top_count(s, kept_count(n, fraction)) for s, n in zip(scores, sizes)]


def scaled_layers(official: tuple[int, ...], depth: int, official_depth: int = 32) -> tuple[int, ...]:
    """Layer counts K given for an ``official_depth``-layer LM, at the same fractions of ``depth`` (1 ≤ K < depth,
    duplicates merged)."""
    return tuple(sorted({min(depth - 1, max(1, depth * k // official_depth)) for k in official}))


def geometric_fractions(ratio: float, stages: int) -> list[float]:
    """Kept fraction of each image's original tokens after each of ``stages`` stages: r^{s/S}, the last r."""
    return [ratio ** ((s + 1) / stages) for s in range(stages)]


def check_fractions(fractions: tuple[float, ...], ratio: float) -> tuple[float, ...]:
    """Kept fractions of the stages before the last: each in (0, 1], none increasing, none below ``ratio``."""
    fractions = tuple(check_ratio(value) for value in fractions)
    if list(fractions) != sorted(fractions, reverse=True) or fractions[-1] < ratio:
        raise ValueError(f"ratios {list(fractions)} must not increase and must stay >= ratio {ratio}")
    return fractions


class StageSchedule:
    """Where a progressive in-LM pruner drops and how much each drop keeps: the layer counts K of its stages (given,
    or the official ones scaled to the model's depth) and the kept fraction of each image's original tokens after
    each stage (given for all stages but the last, which is ``ratio``, or the method's default rule)."""

    def __init__(
        self,
        ratio: float,
        layers: list[int] | tuple[int, ...] | None,
        ratios: list[float] | tuple[float, ...] | None,
        official: tuple[int, ...],
        default: Callable[[float, int], list[float]] = geometric_fractions,
    ) -> None:
        self.ratio = check_ratio(ratio)
        self.layers = tuple(int(layer) for layer in layers) if layers else None
        self.ratios = check_fractions(tuple(ratios), self.ratio) if ratios else None
        self.official, self.default = official, default
        self.stages: tuple[int, ...] = ()

    def resolve(self, depth: int) -> tuple[int, ...]:
        """The stages' layer counts for a model of ``depth`` layers (kept for :meth:`fraction_after`)."""
        stages = self.layers if self.layers is not None else scaled_layers(self.official, depth)
        if self.ratios is not None and len(self.ratios) != len(stages) - 1:
            raise ValueError(f"ratios gives {len(self.ratios)} stage fractions; layers {stages} need {len(stages) - 1}")
        self.stages = stages
        return stages

    def fractions(self) -> list[float]:
        """The kept fraction f_s of each image's original tokens after each stage (the last is ``ratio``)."""
        return [*self.ratios, self.ratio] if self.ratios is not None else self.default(self.ratio, len(self.stages))

    def fraction_after(self, layer: int) -> float:
        return self.fractions()[self.stages.index(layer)]


def check_ratio(ratio: float) -> float:
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio is the fraction of visual tokens kept and must lie in (0, 1], got {ratio}")
    return float(ratio)


def kept_count(tokens: int, ratio: float) -> int:
    """How many of an image's visual tokens a ratio keeps: ``max(1, int(N·r))``, as the official code."""
    return max(1, int(tokens * ratio))


def grid_coordinates(grids: list[tuple[int, int, int, int]], tokens: int, device: torch.device) -> Tensor:
    """(tokens, 3): each of an image's visual tokens as (grid, row, column) in its :attr:`VisualInput.grids`;
    (−1, −1, −1) for a token outside every grid (AnyRes ``image_newline``)."""
    coordinates = torch.full((tokens, 3), -1, dtype=torch.long, device=device)
    for grid, (first, rows, cols, stride) in enumerate(grids):
        row = torch.arange(rows, device=device).repeat_interleave(cols)
        col = torch.arange(cols, device=device).repeat(rows)
        coordinates[first + row * stride + col] = torch.stack([torch.full_like(row, grid), row, col], dim=1)
    return coordinates


def proportional_counts(total: int, weights: Tensor, caps: Tensor) -> Tensor:
    """Split ``total`` tokens over groups in proportion to their ``weights`` (≥ 0), none above its cap: a group
    whose share exceeds its cap gets the cap and the rest is shared again among the others; shares are floored and
    the tokens left go one each to the largest remainders (ties: the earlier group). All-zero weights share by cap."""
    caps = caps.long()
    total = min(int(total), int(caps.sum()))
    weights = weights.double().clamp(min=0)
    full = torch.zeros(len(caps), dtype=torch.bool, device=caps.device)
    while True:
        free = ~full & (caps > 0)
        left = total - int(caps[full].sum())
        share = weights.where(free, torch.zeros_like(weights))
        if share.sum() <= 0:
            share = caps.double().where(free, torch.zeros_like(weights))
        quota = left * share / share.sum() if share.sum() > 0 else share
        over = free & (quota > caps)
        if not over.any():
            break
        full |= over
    quota = torch.where(full, caps.double(), quota)
    counts = quota.floor().long()
    remainder = (quota - counts).where(counts < caps, torch.full_like(quota, -1.0))
    order = sorted(range(len(caps)), key=lambda group: (-float(remainder[group]), group))
    for group in order[: total - int(counts.sum())]:
        counts[group] += 1
    return counts


class Pruner:
    """Keeps every visual token; subclasses choose. The base class is the unpruned baseline.

    ``needs_attention`` asks the sampler to record :class:`VisualAttention` on the steps where the
    pruner is called; ``record_scores`` asks for :meth:`scores` after every step (score-consistency
    studies). ``keep_positions`` keeps the kept tokens' original RoPE positions instead of renumbering
    the shortened sequence.
    """

    name = "none"
    needs_attention = False
    needs_tower_attention = False
    """The pruner reads :attr:`VisualInput.tower_attention`: the prompt must be prepared with
    ``tower_layer=pruner.tower_attention_layer()`` (the model records that layer's attention while it encodes)."""
    tower_layer = -1
    """Which vision-tower layer (as the model holds it, 0-based; negative counts from the end, −1: the layer whose
    output is the visual feature) the received attention is taken from."""
    needs_region = False
    """The pruner needs each sample's answer region (oracles): the job refuses tasks without one."""

    def __init__(self, prune_after_step: int = 1, keep_positions: bool = False, record_scores: bool = False) -> None:
        if prune_after_step < 1:
            raise ValueError(f"prune_after_step counts denoising steps from 1, got {prune_after_step}")
        self.prune_after_step = prune_after_step
        self.keep_positions = keep_positions
        self.record_scores = record_scores

    def tower_attention_layer(self) -> int | None:
        """The tower layer whose attention ``model.prepare(..., tower_layer=...)`` must record; None: none."""
        return self.tower_layer if self.needs_tower_attention else None

    def scores(self, context: PruneContext) -> list[Tensor] | None:
        """Per image, one importance score per visual token; None when the pruner does not score."""
        return None

    def select(self, context: PruneContext) -> Kept:
        """Between steps: per image, the sorted indices (within its span) of the tokens to keep; None keeps all."""
        return None

    def acts_after(self, step: int, total_steps: int | None = None) -> bool:
        """Whether :meth:`select` is called after denoising step ``step`` of the ``total_steps`` the generation
        plans (progressive pruners override it)."""
        return step == self.prune_after_step

    # Stage 1: before the language model.
    def before_lm(self, visual: VisualInput) -> Kept:
        """Per image, the tokens to keep (or a :class:`Reduction`) before the language model runs; None keeps all."""
        return None

    # Stage 2: inside the language model.
    in_lm_layers: tuple[int, ...] = ()
    """Act after this many layers (K) of the forward of step ``in_lm_step``; empty: the stage is not used."""
    in_lm_step: int = 1
    in_lm_persist: str = "sequence"
    in_lm_needs_hidden: bool = False
    """The stage reads the visual tokens' hidden states, which a prefix-cached step forward does not compute."""
    in_lm_key_attention: bool = False
    """The stage also reads its query rows' attention to the non-visual keys (:attr:`LayerContext.key_attention`;
    uncached forwards only)."""

    def lm_layers(self, depth: int) -> tuple[int, ...]:
        """The layer counts K (1 ≤ K < ``depth``) after which :meth:`in_lm` acts, for a model of ``depth`` layers."""
        return self.in_lm_layers

    def layer_queries(self, context: LayerContext) -> Tensor | None:
        """Before layer K runs: the query rows (positions of ``context``) whose attention to the visual tokens
        :meth:`in_lm` wants at that layer; None asks for no attention."""
        return None

    def in_lm(self, context: LayerContext) -> Kept:
        """After layer K: per image, the tokens to keep for the remaining layers (or a :class:`Reduction`)."""
        return None
