"""Random pruning: keep a uniformly random r fraction of each image's visual tokens — the first control.

Where it sits: a :class:`~redvtp_eval.pruners.base.Pruner` called at the same step as RedVTP, keeping
the same number of tokens, so that the two differ only in which tokens they keep. The draw uses the
generation's random stream, which the harness seeds per sample, so a sample keeps the same tokens on
every run and on resumption; without one, a generator seeded with ``seed``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from redvtp_eval.pruners.base import PruneContext, Pruner, check_ratio, kept_count


class RandomPruner(Pruner):
    name = "random"

    def __init__(self, ratio: float = 0.5, seed: int = 0, **options) -> None:
        super().__init__(**options)
        self.ratio = check_ratio(ratio)
        self.seed = seed

    def select(self, context: PruneContext) -> list[Tensor] | None:
        if not context.visual_spans:
            return None
        generator = context.generator or torch.Generator().manual_seed(self.seed)
        kept = []
        for start, end in context.visual_spans:
            order = torch.randperm(end - start, generator=generator, device=generator.device)
            kept.append(order[: kept_count(end - start, self.ratio)].sort().values)
        return kept
