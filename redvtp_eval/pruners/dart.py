"""DART: keep the visual tokens that duplicate a few pivot tokens least, after layer K.

Where it sits: the inside-the-LM stage of :mod:`redvtp_eval.pruners.base`, in the forward of step 1.

Paper: Wen et al., "Stop Looking for Important Tokens in Multimodal Language Models: Duplication Matters
More" (2025; ZichenWen1/DART). After layer K (K = 2) a few pivots are chosen — the P_v visual and P_t text
tokens after the image with the largest L1 norm — and, pivot by pivot, the visual tokens least similar to
it (lowest cosine similarity of layer-K hidden states h) among those not yet kept join the kept set; the
visual pivots stay too. No attention is read, so it runs on fused attention.

Adaptation to a bidirectional masked-diffusion model: decided in step 1's forward; the dropped tokens
leave the sequence for every later step (``in_lm_persist="sequence"``, as LLaDA-FastV and RedVTP).
"Tokens after the image" are the non-visual positions after the image's span: the question text and the
masked response rows. Pivot norms are taken on the layer-K hidden states (the official default reads
the key states' norm). Count: the official per-pivot quota ``int(N·r / (P_v + P_t))`` is made exact, so
that the kept count is ``max(1, int(N·r))`` as for every other pruner here: the ``kept − P_v`` non-pivot
tokens are split over the pivots in order (the first ``(kept − P_v) mod (P_v + P_t)`` get one more).
Pivots are visited visual first, then text, each by decreasing norm. Several images: each its own visual
pivots, text pivots from after its span. Prefix cache: refused (the step's forward has no visual rows).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from redvtp_eval.pruners.base import LayerContext, Pruner, check_ratio, kept_count


def dart_keep(
    visual: Tensor, text: Tensor, kept: int, visual_pivots: int, text_pivots: int
) -> tuple[Tensor, list[int]]:
    """Sorted kept indices among ``visual`` (N, d) hidden states, and the visual pivots chosen."""
    n = len(visual)
    if kept >= n:
        return torch.arange(n, device=visual.device), []
    pivots_v = visual.abs().sum(dim=-1).topk(min(visual_pivots, kept)).indices.tolist()
    pivot_vectors = [visual[i] for i in pivots_v]
    if len(text) and text_pivots:
        pivot_vectors += list(text[text.abs().sum(dim=-1).topk(min(text_pivots, len(text))).indices])
    chosen = torch.zeros(n, dtype=torch.bool, device=visual.device)
    chosen[pivots_v] = True
    rest = kept - len(pivots_v)
    base, extra = divmod(rest, len(pivot_vectors))
    for index, pivot in enumerate(pivot_vectors):
        quota = base + (1 if index < extra else 0)
        similarity = F.cosine_similarity(pivot[None].float(), visual.float(), dim=-1)
        similarity[chosen] = float("inf")
        chosen[similarity.topk(quota, largest=False).indices] = True
    return chosen.nonzero().squeeze(1), pivots_v


class Dart(Pruner):
    name = "dart"
    in_lm_persist = "sequence"
    in_lm_needs_hidden = True

    def __init__(
        self,
        ratio: float = 0.5,
        layer: int = 2,
        visual_pivots: int = 4,
        text_pivots: int = 4,
        keep_positions: bool = True,
        **options,
    ) -> None:
        super().__init__(keep_positions=keep_positions, **options)
        self.ratio = check_ratio(ratio)
        self.layer = int(layer)
        self.in_lm_layers = (self.layer,)
        if visual_pivots + text_pivots < 1:
            raise ValueError("DART needs at least one pivot (visual_pivots + text_pivots >= 1)")
        self.visual_pivots, self.text_pivots = int(visual_pivots), int(text_pivots)

    def in_lm(self, context: LayerContext) -> list[Tensor]:
        hidden = context.hidden
        if hidden is None:
            raise ValueError("DART reads visual hidden states, which a prefix-cached step does not compute")
        kept = []
        visual_rows = torch.zeros(len(hidden), dtype=torch.bool, device=hidden.device)
        for start, end in context.visual_spans:
            visual_rows[start:end] = True
        for start, end in context.visual_spans:
            after = (~visual_rows).nonzero().squeeze(1)
            text = hidden[after[after >= end]]
            count = kept_count(end - start, self.ratio)
            kept.append(dart_keep(hidden[start:end], text, count, self.visual_pivots, self.text_pivots)[0])
        return kept
