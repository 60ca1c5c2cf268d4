"""VFlowOpt: tower-attention importance, the least important tokens recycled per spatial cell into one token each,
then progressive drops at a few LM layers by the same importance.

Where it sits: the before-the-LM stage of :mod:`redvtp_eval.pruners.base` (it reads the vision tower's
attention, ``needs_tower_attention``) and the inside-the-LM stage, in the forward of step 1. Its hyperparameter
search (the visual information flow) runs models, so it lives outside the pruners:
:mod:`redvtp_eval.analysis.vflowopt_search`.

Paper: Yang et al., "VFlowOpt: A Token Pruning Framework for LMMs with Visual Information Flow-Guided
Optimization" (ICCV 2025; sihany077/VFlowOpt, read at commit 129eeef: the SigLIP encoder and
``llava_qwen_training_free.py`` of its LLaVA-OneVision copy, ``modeling_qwen2.py``'s ``forward_illava``, and the
search in ``lmms_eval/models/llava_ov_opt_all.py``). Importance at tower layer 25 of 27: the patches whose received
attention exceeds t·mean are *global* tokens, and a patch's context relevance is the attention they pay it; plus
α_v·softmax(patch entropy) of each 14×14 pixel patch's grey-level histogram (α_v = 0 in all three published
settings). The encoder stage drops the lowest round(N·(1 − r_v)) + ⌊N/m²⌋ tokens (``image_newline`` scores 1,
above every patch, so it stays) and recycles them: grouped by m×m cells of their grid (base view, tile map),
each group becomes its importance-weighted mean, written into its most important member, which stays. In the
LM, after 9 and 18 of Qwen2-7B's 28 layers, the visual tokens are ranked by the same importance (carried with the
kept tokens, no LM attention) and a fraction r_s of those present stays, keeping their positions. Published
10 % setting: r_v = 0.1166, m = 17.39, r_s = (1.0, 0.6011), t = 39.3, α_v = 0.

Adaptation (SigLIP scores as the harness records them, a masked-diffusion LM):

* Importance: the attention each patch *receives* at ``tower_layer`` averaged over heads and *all* query patches
  (the model records one received-attention vector per tower layer, not the attention rows of the global tokens;
  this is the t → 0 limit of the official rule). The entropy term is not available: a pruner sees no pixels
  (every published setting has α_v = 0). ``image_newline`` tokens rank above every patch, as the official 1.
* Counts, per image of N tokens: the last LM stage keeps ``max(1, int(N·r))``; stage s of the LM keeps
  ``max(1, int(N·r·Π_{s'>s} r_s'))`` and the encoder stage ``max(1, int(N·min(1, r/Π r_s)))``, so ``ratio`` is the
  fraction at the end and ``stage_ratios`` (default the published (1.0, 0.6011)) how the drops are spread.
* Recycling, exact: the encoder stage keeps its budget K exactly by recycling g tokens, g the smallest count for
  which the tokens outside the top K − g fall into exactly g cells (the official takes the ⌊N/m²⌋ least important
  and lets the count float with the number of cells they fall into); if the cells outnumber K, nothing is
  recycled. Cells are ⌊row/m⌋, ⌊column/m⌋ of each grid (``cell`` = m, in tokens of the grid); tokens outside every
  grid share one cell, whose mean is plain (they carry no importance).
* LM stages (``layers``, default 9/28 and 18/28 of the depth): decided in step 1's forward and replayed after the
  same layers by every later forward (``in_lm_persist="layers"``: the AR KV cache after a VFlowOpt prefill); they
  read neither attention nor hidden states, so they work with LaViDa's prefix cache. Positions are renumbered
  before the LM (the official encoder stage shortens the prompt) and kept inside the forward, as the official.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from redvtp_eval.pruners.base import (
    LayerContext,
    Pruner,
    Reduction,
    VisualInput,
    check_ratio,
    grid_coordinates,
    kept_count,
)

OFFICIAL_LAYERS = (9, 18)
"""Layer counts K of the published LM stages, in Qwen2-7B's 28 layers."""
OFFICIAL_STAGE_RATIOS = (1.0, 0.6011)
OFFICIAL_CELL = 17.387
"""m of the published 10 % setting (11.76 at 50 %, 15.58 at 25 %)."""


def cell_ids(coordinates: Tensor, cell: float) -> Tensor:
    """Each token's recycling cell: (grid, ⌊row/m⌋, ⌊column/m⌋) as one id; −1 for tokens outside every grid."""
    grid, row, col = coordinates.unbind(dim=1)
    rows, cols = (row.double() / cell).floor().long(), (col.double() / cell).floor().long()
    span = int(max(rows.max(), cols.max())) + 1
    return torch.where(grid >= 0, (grid * span + rows) * span + cols, torch.full_like(grid, -1))


def recycled_count(order: Tensor, cells: Tensor, budget: int) -> int:
    """The smallest g ≥ 1 for which the tokens after the first ``budget`` − g of ``order`` (most important first)
    fall into exactly g cells; 0 when there is none (the cells outnumber the budget)."""
    seen = set(cells[order[budget - 1 :]].tolist())
    for g in range(1, budget + 1):
        if len(seen) <= g:
            return g
        if g < budget:
            seen.add(int(cells[order[budget - 1 - g]]))
    return 0


def recycle(features: Tensor, scores: Tensor, cells: Tensor, budget: int) -> tuple[Tensor, Tensor]:
    """One image: (sorted kept indices, their values) keeping ``budget`` tokens, the least important recycled."""
    device = features.device
    rank = torch.where(cells >= 0, scores.float(), torch.full_like(scores.float(), math.inf))
    order = rank.argsort(descending=True, stable=True)
    g = recycled_count(order, cells, budget)
    kept = order[: budget - g]
    values = {int(i): features[i].float() for i in kept}
    pool = order[budget - g :] if g else order[:0]
    for cell in cells[pool].unique().tolist():
        members = pool[cells[pool] == cell].sort().values
        weights = scores[members].float()
        weights = weights / weights.sum() if weights.sum() > 0 else torch.full_like(weights, 1 / len(members))
        into = int(members[weights.argmax()])
        values[into] = (weights[:, None] * features[members].float()).sum(dim=0)
    indices = sorted(values)
    return torch.tensor(indices, device=device), torch.stack([values[i] for i in indices])


class VFlowOpt(Pruner):
    name = "vflowopt"
    needs_tower_attention = True
    in_lm_persist = "layers"

    def __init__(
        self,
        ratio: float = 0.5,
        stage_ratios: list[float] | tuple[float, ...] = OFFICIAL_STAGE_RATIOS,
        layers: list[int] | tuple[int, ...] | None = None,
        cell: float = OFFICIAL_CELL,
        tower_layer: int = -1,
        **options,
    ) -> None:
        super().__init__(**options)
        self.ratio = check_ratio(ratio)
        self.stage_ratios = tuple(check_ratio(value) for value in stage_ratios or ())
        self.layers = tuple(int(layer) for layer in layers) if layers is not None else None
        if self.layers is not None and len(self.layers) != len(self.stage_ratios):
            raise ValueError(f"layers {list(self.layers)} need one stage ratio each; got {list(self.stage_ratios)}")
        if cell < 1:
            raise ValueError(f"cell is the side m of a recycling cell in tokens, >= 1; got {cell}")
        self.cell = float(cell)
        self.tower_layer = int(tower_layer)
        self._sizes: list[int] = []
        self._rank: list[Tensor] = []
        """Per image, the importance of its current visual tokens (newlines +inf), carried through the drops."""
        self._stages: tuple[int, ...] = ()

    def lm_layers(self, depth: int) -> tuple[int, ...]:
        if self.layers is not None:
            chosen = self.layers
        else:
            chosen = tuple(min(depth - 1, max(1, depth * k // 28)) for k in OFFICIAL_LAYERS[: len(self.stage_ratios)])
            if len(set(chosen)) != len(chosen):
                raise ValueError(f"a {depth}-layer LM has no room for {len(chosen)} stages: give layers explicitly")
        self._stages = chosen
        return chosen

    def fraction_after(self, stage: int) -> float:
        """Fraction of each image's original tokens left after LM stage ``stage`` (−1: after the encoder stage)."""
        return min(1.0, self.ratio / math.prod(self.stage_ratios[stage + 1 :]))

    def before_lm(self, visual: VisualInput) -> Reduction | None:
        if visual.tower_attention is None:
            raise ValueError("vflowopt needs the vision tower's attention (VisualInput.tower_attention)")
        self._sizes = [len(features) for features in visual.features]
        self._rank = []
        kept_all, values_all = [], []
        for image, (features, scores) in enumerate(zip(visual.features, visual.tower_attention)):
            scores = scores.to(features.device).float()
            grids = visual.grids[image] if image < len(visual.grids) else []
            cells = cell_ids(grid_coordinates(grids, len(features), features.device), self.cell)
            rank = torch.where(cells >= 0, scores, torch.full_like(scores, math.inf))
            budget = kept_count(len(features), self.fraction_after(-1))
            if budget >= len(features):
                kept_all.append(torch.arange(len(features), device=features.device))
                values_all.append(None)
                self._rank.append(rank)
                continue
            kept, values = recycle(features, scores, cells, budget)
            kept_all.append(kept)
            values_all.append(values)
            self._rank.append(rank[kept])  # a recycled token keeps its own importance, its group's largest
        if all(values is None for values in values_all):
            return None
        return Reduction(kept_all, values_all)

    def in_lm(self, context: LayerContext) -> list[Tensor]:
        stage = self._stages.index(context.layer)
        fraction = self.fraction_after(stage)
        kept_all = []
        for image, (start, end) in enumerate(context.visual_spans):
            count = min(end - start, kept_count(self._sizes[image], fraction))
            kept = self._rank[image].topk(count).indices.sort().values
            self._rank[image] = self._rank[image][kept]
            kept_all.append(kept)
        return kept_all
