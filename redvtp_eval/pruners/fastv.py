"""FastV and LLaDA-FastV: rank visual tokens by the attention they receive at layer K, drop the rest after it.

Where it sits: the inside-the-LM stage of :mod:`redvtp_eval.pruners.base`, in the forward of step 1.

FastV (Chen et al., "An Image is Worth 1/2 Tokens After Layer 2", ECCV 2024; pkunlp-icler/FastV): after
layer K (K = 2), each visual token j is scored by the head-averaged attention that the last token pays it
at layer K, a_K[last, j]; the top ``max(1, int(N·r))`` stay and the rest are removed from layers K+1..L.
The official code keeps the kept tokens' position ids, and in generation with a KV cache the first K
layers keep every visual token's keys while the later ones hold the kept tokens only.

Adaptation to a bidirectional masked-diffusion model (``fastv``): the decision is taken once, in the
first denoising step's forward; every later step recomputes the prompt, so it runs the first K layers on
every visual token and drops the same tokens after layer K (``in_lm_persist="layers"`` — the AR KV cache's
shape, replayed). "The last token" has no single counterpart; ``queries`` chooses: ``last_prompt`` (the
prompt's last text token, the literal one; default for ``fastv``), ``masked`` (the response positions
masked when the step began — at step 1 all of them, RedVTP's choice), ``response`` or ``prompt``; scores
average over the chosen rows. Positions: kept tokens keep their original ones (as FastV).

LLaDA-FastV (arXiv 2601.20168; no public code — rule from the abstract) (``llada_fastv``): the same
ranking at a middle-to-late layer (default K = half the depth) of step 1, by the still-masked response
rows, and the pruning persists over every later step: the dropped tokens leave the sequence for all
layers of every later forward (``in_lm_persist="sequence"``), as RedVTP's deletion does.

Prefix cache (LaViDa ``prefix_lm``): supported with response-row queries (``masked``/``response``): the
step's forward has only response rows; the dropped tokens leave the cache of layers K+1..L at once and,
for ``llada_fastv``, of every layer after the forward. Prompt-row queries are refused there.
"""

from __future__ import annotations

from torch import Tensor

from redvtp_eval.pruners.base import (
    LayerContext,
    Pruner,
    check_queries,
    check_ratio,
    layer_query_rows,
    received_attention,
    top_k_kept,
)


class FastV(Pruner):
    name = "fastv"
    in_lm_persist = "layers"

    def __init__(
        self, ratio: float = 0.5, layer: int = 2, queries: str = "last_prompt", keep_positions: bool = True, **options
    ) -> None:
        super().__init__(keep_positions=keep_positions, **options)
        self.ratio = check_ratio(ratio)
        self.layer = int(layer)
        self.queries = check_queries(queries)
        self.in_lm_layers = (self.layer,)

    def layer_queries(self, context: LayerContext) -> Tensor | None:
        return layer_query_rows(context, self.queries)

    def layer_scores(self, context: LayerContext) -> list[Tensor] | None:
        """Per image, the attention each visual token receives at layer K, averaged over heads and query rows."""
        return received_attention(context, self.queries)

    def in_lm(self, context: LayerContext) -> list[Tensor] | None:
        scores = self.layer_scores(context)
        return top_k_kept(scores, self.ratio) if scores is not None else None


class LladaFastV(FastV):
    name = "llada_fastv"
    in_lm_persist = "sequence"

    def __init__(
        self,
        ratio: float = 0.5,
        layer: int | None = None,
        queries: str = "masked",
        keep_positions: bool = True,
        **options,
    ) -> None:
        super().__init__(ratio=ratio, layer=layer or 0, queries=queries, keep_positions=keep_positions, **options)
        self.layer = layer

    def lm_layers(self, depth: int) -> tuple[int, ...]:
        return (self.layer if self.layer is not None else max(1, depth // 2),)
