"""DivPrune: keep the most diverse visual tokens (max–min selection on their embeddings), before the LM.

Where it sits: the before-the-LM stage of :mod:`redvtp_eval.pruners.base`.

Paper: Alvar et al., "DivPrune: Diversity-based Visual Token Pruning for Large Multimodal Models" (CVPR
2025; vbdi/divprune). With the cosine distance d(i, j) = 1 − cos(x_i, x_j) between projected visual
features, the kept set S is grown greedily for the max–min diversity problem: the first token is the one
whose nearest other token is farthest (argmax_i min_{j≠i} d(i, j)); then each step adds
argmax_i min_{j∈S} d(i, j).

Adaptation: none is needed at this stage (the LM is not involved, so bidirectional attention and the
masked canvas do not matter); each image of a prompt is selected on its own. Count: ``max(1, int(N·r))``
(the official code rounds N·r) so that it matches the other pruners here. Tokens already kept are never
picked again (the official argmax could, on exact duplicates). Kept tokens go back in their original
order; positions are renumbered (the prompt is simply shorter). Works with LaViDa's prefix cache.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from redvtp_eval.pruners.base import Pruner, VisualInput, check_ratio, kept_count


def max_min_diverse(features: Tensor, count: int) -> Tensor:
    """Indices, in selection order, of ``count`` rows of (N, d) ``features``, greedy max–min cosine distance."""
    n = len(features)
    normed = F.normalize(features.float(), dim=-1)
    distance = 1.0 - normed @ normed.T
    if n == 1:
        return torch.zeros(1, dtype=torch.long, device=features.device)
    nearest_other = distance.masked_fill(torch.eye(n, dtype=torch.bool, device=features.device), float("inf"))
    chosen = [int(nearest_other.min(dim=0).values.argmax())]
    closest = distance[chosen[0]].clone()
    for _ in range(count - 1):
        closest[chosen] = float("-inf")
        chosen.append(int(closest.argmax()))
        closest = torch.minimum(closest, distance[chosen[-1]])
    return torch.tensor(chosen, device=features.device)


class DivPrune(Pruner):
    name = "divprune"

    def __init__(self, ratio: float = 0.5, **options) -> None:
        super().__init__(**options)
        self.ratio = check_ratio(ratio)

    def before_lm(self, visual: VisualInput) -> list[Tensor]:
        kept = []
        for features in visual.features:
            count = kept_count(len(features), self.ratio)
            if count >= len(features):
                kept.append(torch.arange(len(features), device=features.device))
            else:
                kept.append(max_min_diverse(features, count).sort().values)
        return kept
