"""VScan: global and local scans of the vision tower's attention keep a few tokens and merge the rest into them;
then a drop at a middle LM layer by the instruction's attention.

Where it sits: the before-the-LM stage of :mod:`redvtp_eval.pruners.base` (it reads the vision tower's
attention, ``needs_tower_attention``) and the inside-the-LM stage, in the forward of step 1.

Paper: Zhang et al., "VScan: Rethinking Visual Token Reduction for Efficient Large Vision-Language Models"
(TMLR 2026; Tencent/SelfEvolvingAgent, folder ``VScan``, read at commit a82450e: ``llava/model/llava_arch.py``
``encode_images``/``window_cls_selection``/``token_merging`` and ``llava/model/modeling_llama_x.py``
``layer_prune``). Per crop of 24×24 patches, T tokens are kept (LLaVA default T = 96): the *local scan* takes,
in each of the 16 non-overlapping 6×6 windows, the ⌊⌊T/2⌋/16⌋ patches with the largest [CLS] attention at a
shallow tower layer (0-based 5); the *global scan* takes the T − ⌊T/2⌋ patches with the largest [CLS] attention
at the feature layer (−2) among the rest. Every other patch is merged into its most cosine-similar kept token
(projected features): the kept token becomes the plain mean of itself and the patches merged into it. In the
LM, after 16 of 32 layers, the visual tokens are ranked by the head-averaged attention of the last instruction
token (computed with the next layer's projections) and 32 stay (``--image_token_list [32]``; Qwen2.5-VL: ratio
0.333 at layer 14 of 28), so one third of the encoder's tokens survives the middle layer.

Adaptation (SigLIP without [CLS], AnyRes tile maps, a masked-diffusion LM):

* Score: one tower layer (``tower_layer``, default −1: the feature layer) for both scans, the attention each
  patch *receives* there averaged over heads and query patches (VisionZip's adaptation; the model records one
  tower layer, so the shallow layer of the local scan is not available).
* Counts, per image of N tokens: the final ``max(1, int(N·r))`` is kept after the LM layer; the encoder stage
  keeps ``max(1, int(N·min(1, r/lm_ratio)))`` (``lm_ratio`` default 1/3, the official 96 → 32); with
  r ≥ ``lm_ratio`` it keeps everything and only the LM stage prunes; ``lm_ratio=1`` leaves the LM stage out.
* Crops: each of the image's grids (LLaDA-V/LaViDa: the base view and the un-padded tile map) is one crop; the
  encoder budget is split over them in proportion to their tokens (the official keeps T per crop). The windows
  are ⌈s/``windows``⌉ tokens a side (s: the base view's side, ``windows`` default 4 as 24/6), tiled from each
  grid's top-left; a window's quota is ⌊⌊k/2⌋/windows in the grid⌋, and the global scan fills the grid's
  budget k exactly (the official can fall short of T when ⌊T/2⌋ is not a multiple of 16).
* Merge: within each grid, on the projected features, into the kept token of the grid most similar to it
  (plain means, the official ``scaling=1``). ``image_newline`` tokens are neither kept nor merged: they leave
  (the official keeps every newline on top of T; here the kept count is exact).
* LM stage (``lm_layer``, default half the depth, as 16 of 32): the layer's own attention (the harness probes
  layer K's rows), from ``queries`` — ``last_prompt`` (default: the prompt's last text token, the literal
  "last instruction token"), ``masked``, ``response`` or ``prompt`` (``LAYER_QUERIES``). The drop is taken in
  step 1's forward and replayed by every later forward after the same layer (``in_lm_persist="layers"``, the
  AR KV cache's shape after a VScan prefill). Positions are renumbered before the LM (a shorter prompt), as
  the official; inside a forward the dropped rows leave and the kept ones keep their positions.
* Prefix cache: supported with response-row queries (``masked``/``response``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from redvtp_eval.pruners.base import (
    LayerContext,
    Pruner,
    Reduction,
    VisualInput,
    check_queries,
    check_ratio,
    grid_coordinates,
    kept_count,
    layer_query_rows,
    proportional_counts,
    received_attention,
    top_of_original,
)

LM_RATIO = 1 / 3
"""Official share of the encoder's tokens the middle LM layer keeps (96 → 32; Qwen2.5-VL 0.333)."""


def scan(scores: Tensor, rows: Tensor, cols: Tensor, budget: int, window: int) -> Tensor:
    """One grid: (sorted) positions among its tokens of the ``budget`` kept, local scan first (the top tokens of
    each window of ``window``² tokens, an equal quota of half the budget), then the global scan (top of the rest)."""
    cell = (rows // window) * (int(cols.max()) // window + 1) + cols // window
    windows = cell.unique()
    quota = (budget // 2) // len(windows)
    chosen = torch.zeros(len(scores), dtype=torch.bool, device=scores.device)
    if quota:
        for index in windows.tolist():
            members = (cell == index).nonzero().squeeze(1)
            chosen[members[scores[members].topk(min(quota, len(members))).indices]] = True
    rest = (~chosen).nonzero().squeeze(1)
    chosen[rest[scores[rest].topk(budget - int(chosen.sum())).indices]] = True
    return chosen.nonzero().squeeze(1)


def merge_into_nearest(features: Tensor, kept: Tensor, others: Tensor) -> tuple[Tensor, Tensor]:
    """(values of the ``kept`` rows of ``features``: each the plain mean of itself and the ``others`` rows whose most
    cosine-similar kept row it is, and for each of ``others`` the position in ``kept`` it joined)."""
    values = features[kept].float().clone()
    if not len(others):
        return values, others
    normed = F.normalize(features.float(), dim=-1)
    nearest = (normed[others] @ normed[kept].T).argmax(dim=1)
    values.index_add_(0, nearest, features[others].float())
    counts = torch.bincount(nearest, minlength=len(kept)) + 1
    return values / counts[:, None], nearest


def vscan_reduce(
    features: Tensor, scores: Tensor, grids: list[tuple[int, int, int, int]], budget: int, windows: int
) -> tuple[Tensor, Tensor]:
    """One image: (sorted kept indices, their merged values) of the encoder stage, keeping ``budget`` tokens."""
    device = features.device
    coordinates = grid_coordinates(grids, len(features), device)
    members = [(coordinates[:, 0] == grid).nonzero().squeeze(1) for grid in range(len(grids))]
    sizes = torch.tensor([len(m) for m in members], device=device)
    budgets = proportional_counts(budget, sizes.double(), sizes)
    window = max(1, math.ceil(grids[0][1] / windows))
    kept_all, values_all = [], []
    for tokens, grid_budget in zip(members, budgets.tolist()):
        if not grid_budget:
            continue
        rows, cols = coordinates[tokens, 1], coordinates[tokens, 2]
        chosen = scan(scores[tokens].float(), rows, cols, grid_budget, window)
        others = tokens[~torch.isin(torch.arange(len(tokens), device=device), chosen)]
        values, _ = merge_into_nearest(features, tokens[chosen], others)
        kept_all.append(tokens[chosen])
        values_all.append(values)
    kept = torch.cat(kept_all)
    order = kept.argsort()
    return kept[order], torch.cat(values_all)[order]


class VScan(Pruner):
    name = "vscan"
    needs_tower_attention = True
    in_lm_persist = "layers"

    def __init__(
        self,
        ratio: float = 0.5,
        lm_ratio: float = LM_RATIO,
        windows: int = 4,
        lm_layer: int | None = None,
        queries: str = "last_prompt",
        tower_layer: int = -1,
        **options,
    ) -> None:
        super().__init__(**options)
        self.ratio = check_ratio(ratio)
        self.lm_ratio = check_ratio(lm_ratio)
        if windows < 1:
            raise ValueError(f"windows is the number of local-scan windows along a crop's side, >= 1; got {windows}")
        self.windows = int(windows)
        self.lm_layer = lm_layer
        self.queries = check_queries(queries)
        self.tower_layer = int(tower_layer)
        self._sizes: list[int] = []

    def encoder_ratio(self) -> float:
        """Fraction of each image's tokens the encoder stage keeps."""
        return min(1.0, self.ratio / self.lm_ratio)

    def lm_layers(self, depth: int) -> tuple[int, ...]:
        if self.lm_ratio == 1:
            return ()
        return (self.lm_layer if self.lm_layer is not None else max(1, depth // 2),)

    def before_lm(self, visual: VisualInput) -> Reduction | None:
        if visual.tower_attention is None:
            raise ValueError("vscan needs the vision tower's attention (VisualInput.tower_attention)")
        if len(visual.grids) != len(visual.features):
            raise ValueError("vscan scans the model's token grids (Prompt.visual_grids), which this prompt lacks")
        self._sizes = [len(features) for features in visual.features]
        kept_all, values_all = [], []
        for features, scores, grids in zip(visual.features, visual.tower_attention, visual.grids):
            budget = kept_count(len(features), self.encoder_ratio())
            if budget >= len(features):
                kept_all.append(torch.arange(len(features), device=features.device))
                values_all.append(None)
                continue
            kept, values = vscan_reduce(features, scores.to(features.device), grids, budget, self.windows)
            kept_all.append(kept)
            values_all.append(values)
        if all(values is None for values in values_all):
            return None
        return Reduction(kept_all, values_all)

    def layer_queries(self, context: LayerContext) -> Tensor | None:
        return layer_query_rows(context, self.queries)

    def in_lm(self, context: LayerContext) -> list[Tensor] | None:
        scores = received_attention(context, self.queries)
        if scores is None:
            return None
        return top_of_original(scores, self._sizes, self.ratio)
