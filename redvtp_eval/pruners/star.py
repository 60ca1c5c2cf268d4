"""STAR: drop redundant visual tokens by visual self-attention before the LM, then task-irrelevant ones by
cross-modal attention at a middle LM layer.

Where it sits: two stages of :mod:`redvtp_eval.pruners.base`: before the LM (with the vision tower's attention,
``needs_tower_attention``) and inside it, in the forward of step 1.

Paper: Guo et al., "STAR: Stage-Wise Attention-Guided Token Reduction for Efficient Large Vision-Language Models
Inference" (arXiv 2505.12359; no public code — rule from the paper's method section). Stage 1, after the vision
encoder: A = softmax(H_v H_vᵀ/√d) over the visual tokens, each token scored by the attention it receives (the
mean of its column), the top (1 − R₁)·N stay. Stage 2, at decoder layer K: each remaining token scored by the
layer-K attention it receives from the question and response positions, averaged over them; the top stay.

Adaptation to a bidirectional masked-diffusion model (and to this harness):

* Stage-1 score (``self_attention``): ``tower`` (default) — the attention each token receives inside the vision
  tower at ``tower_layer`` (the model's rule, as VisionZip's: mean over heads and query patches, pooled and packed
  like the features, ``image_newline`` 0); ``features`` — the paper's parameter-free softmax(H Hᵀ/√d) on the
  projected visual features the pruner holds, column mean.
* Counts, per image of N tokens: stage 1 keeps ``max(1, int(N·f₁))`` (``first_ratio``, default √r: the reduction
  split evenly, in log, over the two stages), stage 2 keeps ``max(1, int(N·r))`` of the original N, as every
  pruner here.
* Stage 2 acts after layer K (``layer``, default half the depth) of step 1's forward and is replayed after layer
  K of every later forward (``in_lm_persist="layers"``: the AR KV cache's shape after a STAR prefill). The
  question and response rows are ``queries``: ``after_image+response`` (default: the prompt text after the image
  and every response row, all masked at step 1), or any query set of ``LAYER_QUERIES``. Positions stay the
  original ones. Prefix cache: with response-only queries (``queries=masked`` or ``response``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from redvtp_eval.pruners.base import (
    LayerContext,
    Pruner,
    VisualInput,
    check_queries,
    check_ratio,
    kept_count,
    layer_query_rows,
    received_attention,
    top_count,
    top_of_original,
)

SELF_ATTENTION = ("tower", "features")


def feature_self_attention(features: Tensor) -> Tensor:
    """(N,) attention each of the (N, d) ``features`` receives in softmax(H Hᵀ/√d), mean over the query rows."""
    x = features.float()
    return torch.softmax(x @ x.T / x.shape[1] ** 0.5, dim=1).mean(dim=0)


class Star(Pruner):
    name = "star"
    in_lm_persist = "layers"

    def __init__(
        self,
        ratio: float = 0.5,
        first_ratio: float | None = None,
        layer: int | None = None,
        queries: str = "after_image+response",
        self_attention: str = "tower",
        tower_layer: int = -1,
        keep_positions: bool = True,
        **options,
    ) -> None:
        super().__init__(keep_positions=keep_positions, **options)
        self.ratio = check_ratio(ratio)
        self.first_ratio = check_ratio(first_ratio) if first_ratio is not None else self.ratio**0.5
        if self.first_ratio < self.ratio:
            raise ValueError(f"first_ratio {self.first_ratio} keeps fewer tokens than the final ratio {self.ratio}")
        if self_attention not in SELF_ATTENTION:
            raise ValueError(f"self_attention {self_attention!r} is not one of {', '.join(SELF_ATTENTION)}")
        self.self_attention = self_attention
        self.needs_tower_attention = self_attention == "tower"
        self.tower_layer = int(tower_layer)
        self.layer = layer
        self.queries = check_queries(queries)
        self._sizes: list[int] = []

    def first_scores(self, visual: VisualInput) -> list[Tensor]:
        """Per image, the stage-1 self-attention score of each visual token."""
        if self.self_attention == "features":
            return [feature_self_attention(features) for features in visual.features]
        if visual.tower_attention is None:
            raise ValueError("star needs the vision tower's attention (VisualInput.tower_attention)")
        return [scores.to(features.device) for features, scores in zip(visual.features, visual.tower_attention)]

    def before_lm(self, visual: VisualInput) -> list[Tensor]:
        self._sizes = [len(features) for features in visual.features]
        scores = self.first_scores(visual)
        return [top_count(s, kept_count(len(s), self.first_ratio)) for s in scores]

    def lm_layers(self, depth: int) -> tuple[int, ...]:
        return (self.layer if self.layer is not None else max(1, depth // 2),)

    def layer_queries(self, context: LayerContext) -> Tensor | None:
        return layer_query_rows(context, self.queries)

    def in_lm(self, context: LayerContext) -> list[Tensor] | None:
        scores = received_attention(context, self.queries)
        if scores is None:
            return None
        return top_of_original(scores, self._sizes, self.ratio)
