"""SparseVLM: text raters score the visual tokens at a few LM layers; progressive drops, some recycled as merged tokens.

Where it sits: the inside-the-LM stage of :mod:`redvtp_eval.pruners.base`, at several layers of step 1's
forward (its before-the-LM stage only reads the input embeddings to pick the raters; it keeps every token).

Paper: Zhang et al., "SparseVLM: Visual Token Sparsification for Efficient Vision-Language Model Inference"
(ICML 2025; Gumpest/SparseVLMs, v1 rule). Raters: with the input embeddings H_v (visual) and H_t (the text
after the image), R = mean over visual rows of softmax_t(H_v H_tᵀ); the text tokens with R_t > mean(R) rate.
At each sparsification layer (official 0-based 2, 6, 15 of 32: after K = 3, 7, 16 layers) the visual
tokens are scored by that layer's head-averaged attention from the raters, mean over raters, and the top
ones stay (official counts 576 → 300 → 200 → 110 for its "192" setting). Recycling: of the tokens dropped
there, the top 30 % (+1) by score are clustered (density-peak clustering with k-nearest-neighbour density,
k = the cluster count ⌊pool/10⌋ + 1) and each cluster's mean hidden state is put back as one token.

Adaptation to a bidirectional masked-diffusion model:

* Raters (``raters``): ``prompt`` (default) — the prompt's text tokens after the image's span (the question,
  end of turn and assistant header), chosen by the rule above on the spliced input embeddings (read in the
  before-the-LM stage); ``masked`` — the response rows masked when step 1 began (all of them; they are all
  the same [MASK] embedding, so the relevance rule cannot tell them apart and is not applied); ``prompt+masked``
  both. Several images: each its own raters, from the text after its span. No rater above the mean: all
  candidates rate.
* Layers: ``layers`` (counts K after which to act; default 3/32, 7/32 and 16/32 of the depth, at least 1,
  duplicates merged). Counts: per image of N tokens, stage s keeps ``max(1, int(N·f_s))`` (never more than
  it has), with f_S = r at the last stage (so the tokens left are ``max(1, int(N·r))`` as for every pruner
  here) and f_s = r^{s/S} before it (the official 192 row, 300/200/110 of 576, is close to r^{1/3}, r^{2/3},
  r = 0.19), or the given ``ratios`` for stages 1..S−1. The official ratio is an average over layers.
* Recycling (``recycle``, default on): the c = ⌊(⌊0.3·D⌋ + 1)/10⌋ + 1 merged tokens (D: tokens the stage
  drops without recycling; c ≤ budget − 1) count inside the stage's budget: the top budget − c tokens by
  score stay; of the rest, the top ⌊0.3·|rest|⌋ + 1 form the pool, clustered into c groups; each group's
  mean hidden state is written into the slot of its cluster centre (a pooled token, which stays with its own
  position). Ties in density are broken by index, not by the official 1e-6 random noise.
* Persistence: ``in_lm_persist="layers"``: step 1 decides; every later step recomputes the prompt, runs the
  first K layers on what the earlier stages left and drops the same tokens after layer K, redoing the same
  cluster averages on that step's hidden states (``Reduction.sources``) — the AR KV cache's shape after a
  SparseVLM prefill. Positions stay the original ones (v1's code renumbers; its v2 keeps them).
* Prefix cache (LaViDa ``prefix_lm``): only with ``raters=masked`` and ``recycle=false`` (the cached step
  forward has no prompt rows to rate with and computes no visual hidden state to merge); the drops then leave
  the cache of the later layers.
"""

from __future__ import annotations

import torch
from torch import Tensor

from redvtp_eval.pruners.base import (
    LayerContext,
    Pruner,
    Reduction,
    StageSchedule,
    VisualInput,
    kept_count,
)

RATERS = ("prompt", "masked", "prompt+masked")
OFFICIAL_LAYERS = (3, 7, 16)
"""Layer counts K of the official sparsification layers (0-based 2, 6, 15) in LLaVA's 32-layer LM."""
RECYCLE_SHARE = 0.3
CLUSTER_SIZE = 10


def text_raters(visual: Tensor, text: Tensor) -> Tensor:
    """Indices of the rows of (T, d) ``text`` whose mean softmax relevance to (N, d) ``visual`` exceeds the mean."""
    relevance = torch.softmax(visual.float() @ text.float().T, dim=1).mean(dim=0)
    chosen = (relevance > relevance.mean()).nonzero().squeeze(1)
    return chosen if len(chosen) else torch.arange(len(text), device=text.device)


def density_peak_clusters(x: Tensor, clusters: int) -> tuple[Tensor, Tensor]:
    """DPC-KNN on (P, d) ``x``: (the ``clusters`` centres' indices, each row's cluster in 0..clusters−1)."""
    distance = torch.cdist(x.float(), x.float()) / x.shape[1] ** 0.5
    nearest = distance.topk(clusters, dim=-1, largest=False).values
    density = (-(nearest**2).mean(dim=-1)).exp()
    higher = density[None, :] > density[:, None]
    delta = torch.where(higher, distance, distance.max()).min(dim=-1).values
    centres = (delta * density).topk(clusters).indices
    assign = distance[centres].argmin(dim=0)
    assign[centres] = torch.arange(clusters, device=x.device)
    return centres, assign


def recycled_count(dropped: int, budget: int) -> int:
    """Merged tokens a stage that would drop ``dropped`` tokens puts back, within a ``budget`` of kept tokens."""
    if dropped <= 0:
        return 0
    return max(0, min((int(RECYCLE_SHARE * dropped) + 1) // CLUSTER_SIZE + 1, budget - 1))


def sparsify(scores: Tensor, budget: int, hidden: Tensor | None) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """One image at one stage: (sorted kept indices, their values, ``Reduction.sources``) for its (n,) ``scores``,
    keeping ``budget`` tokens; with (n, d) ``hidden``, some dropped tokens are recycled into cluster centres."""
    n = len(scores)
    device = scores.device
    merged = recycled_count(n - budget, budget) if hidden is not None else 0
    top = scores.topk(budget - merged).indices
    if not merged:
        return top.sort().values, None, None
    rest = torch.ones(n, dtype=torch.bool, device=device)
    rest[top] = False
    rest = rest.nonzero().squeeze(1)
    pool = rest[scores[rest].topk(min(len(rest), int(RECYCLE_SHARE * len(rest)) + 1)).indices]
    centres, assign = density_peak_clusters(hidden[pool], merged)
    kept = torch.cat([top, pool[centres]]).sort().values
    slot_of = torch.full((n,), -1, dtype=torch.long, device=device)
    slot_of[kept] = torch.arange(len(kept), device=device)
    sources = torch.full((n,), -1, dtype=torch.long, device=device)
    sources[top] = slot_of[top]
    sources[pool] = slot_of[pool[centres[assign]]]
    values = hidden[kept].float().clone()
    for slot in slot_of[pool[centres]].tolist():
        values[slot] = hidden[sources == slot].float().mean(dim=0)
    return kept, values, sources


class SparseVLM(Pruner):
    name = "sparsevlm"
    in_lm_persist = "layers"

    def __init__(
        self,
        ratio: float = 0.5,
        layers: list[int] | tuple[int, ...] | None = None,
        ratios: list[float] | tuple[float, ...] | None = None,
        raters: str = "prompt",
        recycle: bool = True,
        keep_positions: bool = True,
        **options,
    ) -> None:
        super().__init__(keep_positions=keep_positions, **options)
        self.schedule = StageSchedule(ratio, layers, ratios, OFFICIAL_LAYERS)
        if raters not in RATERS:
            raise ValueError(f"raters {raters!r} is not one of {', '.join(RATERS)}")
        self.raters = raters
        self.recycle = bool(recycle)
        self.in_lm_needs_hidden = self.recycle
        self._inputs: tuple[list[Tensor], Tensor] | None = None
        self._text_raters: list[Tensor] | None = None
        self._sizes: list[int] = []

    def lm_layers(self, depth: int) -> tuple[int, ...]:
        return self.schedule.resolve(depth)

    def before_lm(self, visual: VisualInput) -> None:
        """Keeps every token; holds the input embeddings the raters are chosen on (in the first LM stage)."""
        self._inputs = (list(visual.features), visual.text)
        self._text_raters = None
        self._sizes = [len(features) for features in visual.features]
        return None

    def rater_rows(self, context: LayerContext) -> list[Tensor]:
        """Per image, the query positions (of ``context``) that rate its visual tokens."""
        rows = []
        if self.raters != "masked":
            if self._text_raters is None:
                if self._inputs is None:
                    raise ValueError("sparsevlm chooses its raters from the input embeddings of its before-LM stage")
                features, text = self._inputs
                self._text_raters = []
                for image, (_, end) in zip(features, context.visual_spans):
                    after = (context.prompt_text >= end).nonzero().squeeze(1)
                    if not len(after):
                        after = torch.arange(len(context.prompt_text), device=context.prompt_text.device)
                    self._text_raters.append(after[text_raters(image, text[after])])
            rows = [context.prompt_text[indices] for indices in self._text_raters]
        if self.raters == "masked":
            return [context.masked for _ in context.visual_spans]
        if self.raters == "prompt+masked":
            return [torch.cat([image_rows, context.masked]) for image_rows in rows]
        return rows

    def layer_queries(self, context: LayerContext) -> Tensor | None:
        rows = self.rater_rows(context)
        return torch.cat(rows).unique() if rows else None

    def layer_scores(self, context: LayerContext) -> list[Tensor] | None:
        """Per image, the layer's head-averaged attention from its raters to its visual tokens, mean over raters."""
        if context.attention is None:
            return None
        return [
            context.split_by_image(context.attention(rows).mean(dim=0))[image]
            for image, rows in enumerate(self.rater_rows(context))
        ]

    def in_lm(self, context: LayerContext) -> Reduction | None:
        scores = self.layer_scores(context)
        if scores is None:
            return None
        fraction = self.schedule.fraction_after(context.layer)
        kept_all, values_all, sources_all = [], [], []
        for (start, end), image_scores, size in zip(context.visual_spans, scores, self._sizes):
            budget = min(end - start, kept_count(size, fraction))
            if budget >= end - start:
                kept_all.append(torch.arange(end - start, device=image_scores.device))
                values_all.append(None)
                sources_all.append(None)
                continue
            hidden = context.hidden[start:end] if self.recycle and context.hidden is not None else None
            kept, values, sources = sparsify(image_scores, budget, hidden)
            kept_all.append(kept)
            values_all.append(values)
            sources_all.append(sources)
        if all(values is None for values in values_all):
            return Reduction(kept_all)
        return Reduction(kept_all, values_all, sources_all)
