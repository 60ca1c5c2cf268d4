"""Pyramid Token Pruning (PTP): salient sub-images get more of the budget; inside each, the tokens the vision tower
attends to and the instruction points at stay.

Where it sits: the before-the-LM stage of :mod:`redvtp_eval.pruners.base`, on AnyRes inputs (a base view and a
tile map, :attr:`VisualInput.grids`); it reads the vision tower's attention (``needs_tower_attention``).

Paper: Liang et al., "Pyramid Token Pruning for High-Resolution Large Vision-Language Models via Region, Token,
and Instruction-Guided Importance" (arXiv 2509.15704). No public code; the rule here is built from the abstract:
bottom-up visual saliency at the region (sub-image) and token levels is combined with top-down
instruction-guided relevance, and more tokens are kept from salient regions. Every formula below is this
project's reading of that sentence, not the paper's:

* Regions: the base view is one region; every later grid (the tile map) is cut into blocks of s×s tokens from its
  top-left, s the base view's side (a tile's side; the un-padded map's edge blocks are partial).
* Token saliency s_j: the attention token j receives at tower layer ``tower_layer`` (VisionZip's adaptation to
  SigLIP without [CLS]). Instruction relevance t_j: mean over the prompt's text rows u of
  softmax_j(x_j·e_u/√d) over the image's tokens — one attention head with identity projections, from the text
  embeddings to the projected visual features (the LM has not run yet).
* Region budget: of the ``max(1, int(N·r))`` tokens, the base view (the global context) gets its share of the
  grid tokens; the tile regions share the rest in proportion to W_g = (1−λ)·S_g + λ·T_g, with S_g the base view's
  saliency over the part of the image block g shows (each base token counted in the block under its centre) and
  T_g the instruction relevance of g's tokens, each normalised over the tile regions (a tile's own received
  attention cannot rank tiles: it sums to one per crop). Shares are capped at a region's size
  (:func:`~redvtp_eval.pruners.base.proportional_counts`). One grid (several images per prompt): one region.
* Token level: within a region, the top tokens by (1−λ)·s_j/Σ_g s + λ·t_j/Σ_g t; λ = ``instruction_weight``.
* ``image_newline`` tokens (outside every grid) are not kept. Kept tokens keep their order; positions are
  renumbered (a shorter prompt). Acts before step 1, so it fits every denoising schedule and the prefix cache.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from redvtp_eval.pruners.base import (
    Pruner,
    VisualInput,
    check_ratio,
    grid_coordinates,
    kept_count,
    proportional_counts,
)


def instruction_relevance(features: Tensor, text: Tensor) -> Tensor:
    """(N,): mean over the (T, d) ``text`` rows of a softmax over the (N, d) ``features`` of x·e/√d."""
    if not len(text):
        return torch.full((len(features),), 1 / len(features), device=features.device)
    logits = features.float() @ text.float().T / math.sqrt(features.shape[1])
    return torch.softmax(logits, dim=0).mean(dim=1)


def region_ids(coordinates: Tensor, grids: list[tuple[int, int, int, int]]) -> Tensor:
    """Each token's region: 0 for the base view (grid 0), then the s×s blocks of the later grids row-major, grid by
    grid; −1 outside every grid."""
    grid, row, col = coordinates.unbind(dim=1)
    side = grids[0][1]
    region = torch.where(grid == 0, torch.zeros_like(grid), torch.full_like(grid, -1))
    first = 1
    for index, (_, rows, cols, _) in enumerate(grids[1:], start=1):
        across = math.ceil(cols / side)
        inside = grid == index
        region[inside] = first + (row[inside] // side) * across + col[inside] // side
        first += math.ceil(rows / side) * across
    return region


def base_saliency_by_region(scores: Tensor, grids: list[tuple[int, int, int, int]], regions: int) -> Tensor:
    """(regions,): the base view's saliency over the image area of each tile-map block (each base token counted in
    the block under its centre, in every later grid); 0 for region 0 (the base view itself)."""
    first_token, side, base_cols, stride = grids[0]
    mass = torch.zeros(regions, dtype=torch.float64, device=scores.device)
    first = 1
    for _, rows, cols, _ in grids[1:]:
        across = math.ceil(cols / side)
        for r in range(side):
            for c in range(base_cols):
                y, x = int((r + 0.5) * rows / side), int((c + 0.5) * cols / base_cols)
                mass[first + (y // side) * across + x // side] += float(scores[first_token + r * stride + c])
        first += math.ceil(rows / side) * across
    return mass


def normalised(values: Tensor) -> Tensor:
    total = values.sum()
    return values / total if total > 0 else torch.zeros_like(values)


def ptp_keep(
    features: Tensor, scores: Tensor, text: Tensor, grids: list[tuple[int, int, int, int]], budget: int, weight: float
) -> Tensor:
    """One image: the sorted indices of the ``budget`` tokens PTP keeps."""
    device = features.device
    scores = scores.float().to(device)
    relevance = instruction_relevance(features, text)
    if grids:
        region = region_ids(grid_coordinates(grids, len(features), device), grids)
    else:
        region = torch.zeros(len(features), dtype=torch.long, device=device)
    count = int(region.max()) + 1
    sizes = torch.bincount(region[region >= 0], minlength=count)
    weights = torch.ones(1, dtype=torch.float64, device=device)
    if count > 1:
        tiles = region > 0
        bottom_up = normalised(base_saliency_by_region(scores, grids, count)[1:])
        top_down = normalised(
            torch.zeros(count, dtype=torch.float64, device=device).index_add_(
                0, region[tiles], relevance[tiles].double()
            )[1:]
        )
        base_share = float(sizes[0]) / float(sizes.sum())
        weights = torch.cat(
            [weights.new_tensor([base_share]), (1 - base_share) * ((1 - weight) * bottom_up + weight * top_down)]
        )
    budgets = proportional_counts(budget, weights, sizes)
    kept = []
    for index, quota in enumerate(budgets.tolist()):
        if not quota:
            continue
        members = (region == index).nonzero().squeeze(1)
        combined = (1 - weight) * normalised(scores[members]) + weight * normalised(relevance[members])
        kept.append(members[combined.topk(quota).indices])
    return torch.cat(kept).sort().values


class PTP(Pruner):
    name = "ptp"
    needs_tower_attention = True

    def __init__(self, ratio: float = 0.5, instruction_weight: float = 0.5, tower_layer: int = -1, **options) -> None:
        super().__init__(**options)
        self.ratio = check_ratio(ratio)
        if not 0 <= instruction_weight <= 1:
            raise ValueError(
                f"instruction_weight is λ, the top-down share of the score, in [0, 1]; got {instruction_weight}"
            )
        self.instruction_weight = float(instruction_weight)
        self.tower_layer = int(tower_layer)

    def before_lm(self, visual: VisualInput) -> list[Tensor] | None:
        if visual.tower_attention is None:
            raise ValueError("ptp needs the vision tower's attention (VisualInput.tower_attention)")
        kept, pruned = [], False
        for image, (features, scores) in enumerate(zip(visual.features, visual.tower_attention)):
            budget = kept_count(len(features), self.ratio)
            if budget >= len(features):
                kept.append(torch.arange(len(features), device=features.device))
                continue
            grids = visual.grids[image] if image < len(visual.grids) else []
            kept.append(ptp_keep(features, scores, visual.text, grids, budget, self.instruction_weight))
            pruned = True
        return kept if pruned else None
