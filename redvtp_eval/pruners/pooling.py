"""Spatial average pooling of each image's token grids, before the LM: the simplest merging baseline.

Where it sits: the before-the-LM stage of :mod:`redvtp_eval.pruners.base`.

Rule: every 2-D token grid of an image (AnyRes: the base view, and the tile map) is average-pooled with
an s×s window and stride s, s = ``max(1, round(1/√r))`` (r = 0.25 → 2×2), windows at the right and bottom
edges covering what is left (ceil division); a grid of h×w tokens becomes ⌈h/s⌉·⌈w/s⌉. The merged token
is written into the window's top-left token, which keeps its place and position id (the merging rule of
the interface); the others of the window leave. AnyRes ``image_newline`` tokens stay at the end of the
rows that remain (the tile map keeps its row layout). So the kept count is not ``int(N·r)`` but the
pooled grid's: for matched cost compare by effective tokens / FLOPs, not by ratio.

Adaptation to a diffusion model: none (it acts before the LM); LLaVA-OneVision's own 2×2 bilinear pooling
of video frames is the nearest relative. Positions are renumbered (a shorter prompt). Works with the
prefix cache. Needs the model's token grids (every family here reports them).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from redvtp_eval.pruners.base import Pruner, Reduction, VisualInput, check_ratio


def pool_grid(
    tokens: Tensor, first: int, rows: int, cols: int, stride_row: int, s: int
) -> tuple[Tensor, Tensor, Tensor]:
    """(kept indices, their pooled values, row-end kept indices of the grid's rows that remain) for one grid."""
    kept, values = [], []
    for r in range(0, rows, s):
        for c in range(0, cols, s):
            window = [
                first + rr * stride_row + cc for rr in range(r, min(r + s, rows)) for cc in range(c, min(c + s, cols))
            ]
            kept.append(window[0])
            values.append(tokens[window].float().mean(dim=0))
    remaining_rows = [first + r * stride_row for r in range(0, rows, s)]
    device = tokens.device
    return torch.tensor(kept, device=device), torch.stack(values), torch.tensor(remaining_rows, device=device)


class Pooling(Pruner):
    name = "pooling"

    def __init__(self, ratio: float = 0.25, **options) -> None:
        super().__init__(**options)
        self.ratio = check_ratio(ratio)
        self.stride = max(1, round(1 / math.sqrt(self.ratio)))

    def before_lm(self, visual: VisualInput) -> Reduction | None:
        if self.stride == 1:
            return None
        if len(visual.grids) != len(visual.features):
            raise ValueError("pooling needs the model's token grids (Prompt.visual_grids), which this prompt lacks")
        kept_all, values_all = [], []
        for tokens, grids in zip(visual.features, visual.grids):
            in_grid = torch.zeros(len(tokens), dtype=torch.bool, device=tokens.device)
            merged = {}
            for first, rows, cols, stride_row in grids:
                kept, values, row_starts = pool_grid(tokens, first, rows, cols, stride_row, self.stride)
                for r in range(rows):
                    in_grid[first + r * stride_row : first + r * stride_row + cols] = True
                merged |= dict(zip(kept.tolist(), values))
                if stride_row > cols:
                    gone_rows = set(range(rows)) - set(range(0, rows, self.stride))
                    for r in gone_rows:
                        in_grid[first + r * stride_row + cols : first + (r + 1) * stride_row] = True
            outside = (~in_grid).nonzero().squeeze(1).tolist()
            order = sorted(set(merged) | set(outside))
            kept_all.append(torch.tensor(order, device=tokens.device))
            values_all.append(torch.stack([merged[i] if i in merged else tokens[i].float() for i in order]))
        return Reduction(kept_all, values_all)
