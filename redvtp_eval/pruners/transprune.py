"""TransPrune: rank visual tokens by how much the LM layers transform them (TTV), plus the instruction's
attention (IGA); progressive drops at a few early-middle layers.

Where it sits: the inside-the-LM stage of :mod:`redvtp_eval.pruners.base`, at every layer from just before its
first drop to its last drop of step 1's forward (its before-the-LM stage keeps every token and only holds the
visual input embeddings, the first layer's input).

Paper and code: Li et al., "TransPrune: Token Transition Pruning for Efficient Large Vision-Language Model"
(CVPR 2026, arXiv 2507.20630; liaolea/TransPrune, read at commit c9e8284). The official LLaVA-1.5 rule (every
script): token transition variation is accumulated over layers 7..12 (1-based) and tokens are dropped after
layers K = 7, 9, 12 of 32, keeping 0.875, 0.625 and 0.125 of the N visual tokens. Per layer and token, for each
sub-block (attention, FFN) with input x (after its RMSNorm) and output y (before the residual), TTV adds
‖y‖/‖x‖ · softmax_tokens(1 − cos(x, y)) (softmax over the whole sequence). At a drop: TTV summed over the layers
so far, normalised to sum 1 over the image's tokens, plus IGA — the attention each token receives from the text
after the image (layer K+1's queries and keys on layer K's output, mean over heads and those rows), normalised
the same way; the top tokens by the sum stay. The kept tokens' TTV carries on; positions are renumbered.

Adaptation to a bidirectional masked-diffusion model (and to what a pruner sees here):

* TTV is taken per layer on the residual stream the pruner holds — x the layer's input h_{l−1}, y its update
  h_l − h_{l−1} (the two sub-blocks together, RMSNorm gains not applied) — with the softmax over the image's
  visual tokens (the official one spans the sequence, which rescales each layer by a constant); it is summed over
  layers K₁..K_S, as the official 7..12. Layer 1's input is the spliced embeddings held by the before-LM stage.
* IGA (``attention``, default on; off: TTV alone, no attention recorded) is layer K's own head-averaged attention
  (the probe of the layer just run), from ``queries``: ``after_image`` (default, the official rows: the prompt
  text after the image — the question, end of turn and assistant header), or any query set of ``LAYER_QUERIES``
  (``after_image+masked`` adds the masked response rows).
* Layers (``layers``): default 7/32, 9/32, 12/32 of the depth (at least 1, duplicates merged). Counts: stage s of
  S keeps ``max(1, int(N·f_s))`` of the original N with f_s = 1 − (1 − r)(2^s − 1)/(2^S − 1) — the official
  drops double from stage to stage (1/8, 2/8, 4/8: exactly 0.875, 0.625, 0.125 at r = 0.125) and f_S = r, so the
  tokens left are ``max(1, int(N·r))`` as for every pruner here — or the given ``ratios`` for stages 1..S−1.
* Persistence: step 1 decides; every later step replays the drops after the same layers
  (``in_lm_persist="layers"``, the AR KV cache's shape after a TransPrune prefill). Positions stay the original
  ones (the official code renumbers them). Prefix cache: refused (TTV needs the visual rows' hidden states,
  which a cached step does not compute).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from redvtp_eval.pruners.base import (
    LayerContext,
    Pruner,
    StageSchedule,
    VisualInput,
    check_queries,
    layer_query_rows,
    received_attention,
    top_of_original,
)

OFFICIAL_LAYERS = (7, 9, 12)
"""Layer counts K after which the official code drops (its ``pruning_layer_list``) in LLaVA's 32-layer LM."""


def transition_variation(before: Tensor, after: Tensor) -> Tensor:
    """(n,) TTV of one layer for n tokens: ‖Δ‖/‖h‖ · softmax over the tokens of (1 − cos(h, Δ)), Δ = after − before."""
    before, update = before.float(), after.float() - before.float()
    magnitude = update.norm(dim=-1) / before.norm(dim=-1)
    direction = torch.softmax(1 - F.cosine_similarity(before, update, dim=-1), dim=0)
    return magnitude * direction


def doubling_fractions(ratio: float, stages: int) -> list[float]:
    """Kept fraction after each of ``stages`` stages when each stage drops twice what the one before dropped."""
    return [1 - (1 - ratio) * (2 ** (s + 1) - 1) / (2**stages - 1) for s in range(stages)]


def unit_sum(values: Tensor) -> Tensor:
    return values / (values.sum() + 1e-8)


class TransPrune(Pruner):
    name = "transprune"
    in_lm_persist = "layers"
    in_lm_needs_hidden = True

    def __init__(
        self,
        ratio: float = 0.5,
        layers: list[int] | tuple[int, ...] | None = None,
        ratios: list[float] | tuple[float, ...] | None = None,
        attention: bool = True,
        queries: str = "after_image",
        keep_positions: bool = True,
        **options,
    ) -> None:
        super().__init__(keep_positions=keep_positions, **options)
        self.schedule = StageSchedule(ratio, layers, ratios, OFFICIAL_LAYERS, doubling_fractions)
        self.attention = bool(attention)
        self.queries = check_queries(queries)
        self._sizes: list[int] = []
        self._previous: list[Tensor] = []
        self._ttv: list[Tensor] = []

    def lm_layers(self, depth: int) -> tuple[int, ...]:
        """Every layer count from the one before the first drop (at least 1) to the last drop."""
        stages = self.schedule.resolve(depth)
        return tuple(range(max(1, stages[0] - 1), stages[-1] + 1))

    def before_lm(self, visual: VisualInput) -> None:
        """Keeps every token; holds the visual input embeddings (layer 1's input) and starts the TTV sums."""
        self._sizes = [len(features) for features in visual.features]
        self._previous = list(visual.features)
        self._ttv = [torch.zeros(len(features), device=features.device) for features in visual.features]
        return None

    def layer_queries(self, context: LayerContext) -> Tensor | None:
        if not self.attention or context.layer not in self.schedule.stages:
            return None
        return layer_query_rows(context, self.queries)

    def layer_scores(self, context: LayerContext) -> list[Tensor]:
        """Per image, TTV summed so far (unit sum) plus, with ``attention``, IGA (unit sum)."""
        scores = [unit_sum(ttv) for ttv in self._ttv]
        if self.attention:
            iga = received_attention(context, self.queries)
            if iga is None:
                raise ValueError("transprune's IGA needs its query rows' attention; none was recorded")
            scores = [score + unit_sum(attention) for score, attention in zip(scores, iga)]
        return scores

    def in_lm(self, context: LayerContext) -> list[Tensor] | None:
        hidden = context.visual_hidden()
        if context.layer >= self.schedule.stages[0]:
            self._ttv = [ttv + transition_variation(h0, h1) for ttv, h0, h1 in zip(self._ttv, self._previous, hidden)]
        self._previous = hidden
        if context.layer not in self.schedule.stages:
            return None
        fraction = self.schedule.fraction_after(context.layer)
        kept = top_of_original(self.layer_scores(context), self._sizes, fraction)
        self._ttv = [ttv[indices] for ttv, indices in zip(self._ttv, kept)]
        self._previous = [h[indices] for h, indices in zip(self._previous, kept)]
        return kept
