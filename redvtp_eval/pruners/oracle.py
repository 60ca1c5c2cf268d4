"""Oracle and anti-oracle: keep the tokens that show the answer first (or last) — does the task depend on selection?

Where it sits: the before-the-LM stage of :mod:`redvtp_eval.pruners.base`. Not a method: a check. If
``oracle`` and ``anti_oracle`` score alike at the same ratio, the task does not depend on which visual
tokens are kept, and no pruner can be told apart on it.

Rule: each image's tokens are ranked answer region first (``oracle``) or last (``anti_oracle``), ties —
inside and outside the region — broken by the generation's random stream (seeded per sample, as
``random``); the first ``max(1, int(N·r))`` stay, in their original order. The region is a boolean mask
per image over its tokens, which the sampler receives from the task (the toy tasks' ``answer_box``
through the model's token boxes); on a task without one both refuse (before the model loads, in the job).
"""

from __future__ import annotations

import torch
from torch import Tensor

from redvtp_eval.pruners.base import Pruner, VisualInput, check_ratio, kept_count

NEEDS_REGION = "needs the answer region of each sample, which only the toy tasks provide (task=redvtp_toy_docvqa)"


class Oracle(Pruner):
    name = "oracle"
    needs_region = True
    region_first = True

    def __init__(self, ratio: float = 0.5, seed: int = 0, **options) -> None:
        super().__init__(**options)
        self.ratio = check_ratio(ratio)
        self.seed = seed

    def before_lm(self, visual: VisualInput) -> list[Tensor]:
        if visual.region is None or any(region is None for region in visual.region):
            raise ValueError(f"pruner {self.name!r} {NEEDS_REGION}")
        kept = []
        for features, region in zip(visual.features, visual.region):
            generator = visual.generator or torch.Generator(features.device).manual_seed(self.seed)
            order = torch.randperm(len(features), generator=generator, device=generator.device).to(features.device)
            inside = region.to(features.device)[order]
            ranked = order[torch.argsort((~inside if self.region_first else inside).int(), stable=True)]
            kept.append(ranked[: kept_count(len(features), self.ratio)].sort().values)
        return kept


class AntiOracle(Oracle):
    name = "anti_oracle"
    region_first = False
