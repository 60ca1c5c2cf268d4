"""AdaptInfer: the instruction's text-to-text attention weighs its text tokens; those weights weigh their
text-to-visual attention; progressive drops at layers found offline where that attention shifts.

Where it sits: the inside-the-LM stage of :mod:`redvtp_eval.pruners.base`, at a few layers of step 1's forward;
it reads its query rows' attention to the visual tokens and to the text keys (``in_lm_key_attention``). The
offline layer analysis is ``python -m redvtp_eval.analysis.adaptinfer_layers`` (it runs a model; a pruner may not).

Paper and code: Zhang et al., "AdaptInfer: Adaptive Token Pruning for Vision-Language Model Inference with
Dynamical Text Guidance" (arXiv 2508.06084; weiczh02/AdaptInfer-base — the first author's account, README and
title match the paper; read ``score.py`` at commit 9dac67c, ``modelling_sparse_llama.py`` and
``prepocess.py`` at 91b1784). At each pruning layer (0-based 1, 10, 20 of LLaVA-1.5's 32:
after K = 2, 11, 21 layers), with A that layer's attention and T the positions after the image (the
instruction): each text token j gets the prior w_j = Σ_i A[i, j] + Σ_i A[j, i] − A[j, j] over i ∈ T (the
attention it receives from and pays to the instruction, itself counted once); visual token v scores
Σ_j w_j A[j, v] per head, summed over heads; the top ones stay (hand-set counts, e.g. 133 → 27 → 3 of 576 for
its "64" setting). The layers come from an offline analysis: the per-layer text→visual score of the top visual
tokens, cumulated over layers, split at its one L2 change point (ruptures ``Binseg``); the layers where most
curves change are chosen.

Adaptation to a bidirectional masked-diffusion model (and to what a pruner sees here):

* Attention is the harness's head-averaged probe of layer K, so w and the product are taken on the head mean
  (the official weighs each head's text→visual attention by that head's priors). T is ``queries``:
  ``after_image`` (default, the official rows: the prompt text after the image — question, end of turn,
  assistant header), or any query set of ``LAYER_QUERIES`` (``after_image+masked`` adds the masked response rows).
* Layers (``layers``): default 2/32, 11/32, 21/32 of the depth (at least 1, duplicates merged), or those the
  analysis finds for the model. Counts: stage s of S keeps ``max(1, int(N·r^{s/S}))`` of the original N (the
  official 64-token row, 133/27/3 of 576, falls about this fast), so the tokens left are ``max(1, int(N·r))`` as
  for every pruner here; ``ratios`` sets stages 1..S−1. The official recycling branch is off there (``s_flag``
  0) and is not implemented.
* Persistence: step 1 decides; every later step replays the drops after the same layers
  (``in_lm_persist="layers"``, the AR KV cache's shape after the prefill). Positions stay the original ones.
  Prefix cache: refused (the text keys' attention is probed on uncached forwards only).
"""

from __future__ import annotations

from torch import Tensor

from redvtp_eval.pruners.base import (
    LayerContext,
    Pruner,
    StageSchedule,
    VisualInput,
    check_queries,
    layer_query_rows,
    top_of_original,
)

OFFICIAL_LAYERS = (2, 11, 21)
"""Layer counts K after which the official code drops (0-based ``pruning_loc`` 1, 10, 20) in a 32-layer LM."""


def text_priors(text_to_text: Tensor) -> Tensor:
    """(T,) prior of each text token from the (T, T) attention among them: received + paid − self."""
    return text_to_text.sum(dim=0) + text_to_text.sum(dim=1) - text_to_text.diagonal()


def weighted_visual_scores(text_to_text: Tensor, text_to_visual: Tensor) -> Tensor:
    """(V,) AdaptInfer's score: the (T, V) text→visual attention weighed by the text priors, summed over T."""
    return text_priors(text_to_text) @ text_to_visual


class AdaptInfer(Pruner):
    name = "adaptinfer"
    in_lm_persist = "layers"
    in_lm_key_attention = True

    def __init__(
        self,
        ratio: float = 0.5,
        layers: list[int] | tuple[int, ...] | None = None,
        ratios: list[float] | tuple[float, ...] | None = None,
        queries: str = "after_image",
        keep_positions: bool = True,
        **options,
    ) -> None:
        super().__init__(keep_positions=keep_positions, **options)
        self.schedule = StageSchedule(ratio, layers, ratios, OFFICIAL_LAYERS)
        self.queries = check_queries(queries)
        self._sizes: list[int] = []

    def lm_layers(self, depth: int) -> tuple[int, ...]:
        return self.schedule.resolve(depth)

    def before_lm(self, visual: VisualInput) -> None:
        """Keeps every token; holds each image's original token count N (the stage counts are fractions of it)."""
        self._sizes = [len(features) for features in visual.features]
        return None

    def layer_queries(self, context: LayerContext) -> Tensor | None:
        return layer_query_rows(context, self.queries)

    def layer_scores(self, context: LayerContext) -> list[Tensor] | None:
        """Per image, the prior-weighted text→visual attention of layer K (head-averaged)."""
        if context.attention is None or context.key_attention is None:
            return None
        rows = layer_query_rows(context, self.queries)
        scores = weighted_visual_scores(context.key_attention(rows, rows), context.attention(rows))
        return context.split_by_image(scores)

    def in_lm(self, context: LayerContext) -> list[Tensor] | None:
        scores = self.layer_scores(context)
        if scores is None:
            return None
        fraction = self.schedule.fraction_after(context.layer)
        return top_of_original(scores, self._sizes, fraction)
