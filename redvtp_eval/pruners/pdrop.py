"""PDrop (PyramidDrop): progressive drops at the ends of several LM stages by the last instruction token's attention.

Where it sits: the inside-the-LM stage of :mod:`redvtp_eval.pruners.base`, in the forward of step 1.

Paper: Xing et al., "PyramidDrop: Accelerating Your Large Vision-Language Models via Pyramid Visual
Redundancy Reduction" (CVPR 2025; Cooperx521/PyramidDrop). The LM is split into S stages; at the end of
stage s (layer K_s) the visual tokens are ranked by the attention from the last instruction token at
that layer and a fraction λ of those still present stays, so stage s runs on N·λ^s tokens (paper: S = 4,
K = 8, 16, 24 of 32, λ = 0.5).

Adaptation to a bidirectional masked-diffusion model: the drops are taken in the first denoising step's
forward; every later step replays them at the same layers (``in_lm_persist="layers"``: the AR KV cache's
shape after a PDrop prefill). ``ratio`` is λ; the stage ends default to the quarter points of the depth
(``layers`` overrides them). "The last instruction token" is ``queries``: ``last_prompt`` (default, the
prompt's last text token), ``masked`` (the response rows still masked — RedVTP's choice), ``response`` or
``prompt``. Positions stay the original ones. Prefix cache: supported with response-row queries.
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


class PDrop(Pruner):
    name = "pdrop"
    in_lm_persist = "layers"

    def __init__(
        self,
        ratio: float = 0.5,
        layers: list[int] | tuple[int, ...] | None = None,
        queries: str = "last_prompt",
        keep_positions: bool = True,
        **options,
    ) -> None:
        super().__init__(keep_positions=keep_positions, **options)
        self.ratio = check_ratio(ratio)
        self.layers = tuple(int(layer) for layer in layers) if layers else None
        self.queries = check_queries(queries)

    def lm_layers(self, depth: int) -> tuple[int, ...]:
        if self.layers is not None:
            return self.layers
        return tuple(sorted({max(1, depth * stage // 4) for stage in (1, 2, 3)}))

    def layer_queries(self, context: LayerContext) -> Tensor | None:
        return layer_query_rows(context, self.queries)

    def in_lm(self, context: LayerContext) -> list[Tensor] | None:
        scores = received_attention(context, self.queries)
        return top_k_kept(scores, self.ratio) if scores is not None else None
