"""VisionZip: keep the visual tokens the vision tower attends to most, merge the rest into a few contextual tokens.

Where it sits: the before-the-LM stage of :mod:`redvtp_eval.pruners.base`; it reads the vision tower's
attention (``needs_tower_attention``), which the model records while it encodes the image.

Paper: Yang et al., "VisionZip: Longer is Better but Not Necessary in Vision Language Models" (CVPR 2025;
dvlab-research/VisionZip). At a late tower layer (the one whose output is the visual feature; CLIP's
``attentions[-2]``) the D tokens with the largest attention a_{[CLS]→j} summed over heads are the
*dominant* tokens; of the remaining ones, C *targets* are sampled uniformly (every ⌊M/C⌋-th of the M left,
the first C) and every other remaining token joins the target whose head-averaged key is most similar
(cosine); each target becomes one *contextual* token from its group. D + C tokens reach the LM (official
splits 54 + 10, 108 + 20, 162 + 30).

Adaptation (SigLIP, which has no [CLS]; AnyRes; a masked-diffusion LM after it):

* Score: the attention each patch *receives* at tower layer ``tower_layer`` (default −1, the last layer the
  model holds — SigLIP so400m with its last layer removed, whose output is the visual feature, as CLIP's
  ``attentions[-2]`` is there), averaged over heads and over every query patch of its crop. The model maps
  it onto the visual tokens as they are spliced: each crop's scores go through the same bilinear pooling
  (LaViDa 27×27 → 14×14), AnyRes un-padding and ``anyres_max`` shrinking as its features, so a pooled
  token's score is the same weighted mean of its patches' scores as its feature is of theirs.
  ``image_newline`` tokens score 0, below every patch (softmax attention is positive): they are dominant
  only when every patch is, and otherwise enter the contextual pool like any remaining token (VisionZip's
  LLaVA-NeXT code keeps no newline at all).
* Counts, per image of N tokens: ``max(1, int(N·r))`` reach the LM, as for every pruner here, of which
  C = ``int(kept · contextual_share)`` are contextual (default share 10/64 gives the official 54 + 10,
  108 + 20, 162 + 30) and D = kept − C dominant.
* Similarity is cosine on the projected visual features (what the pruner holds), not on the tower's keys.
* Merge (``merge``): ``mean`` (default) writes the mean of the target and the tokens assigned to it;
  ``visionzip`` writes the official target + mean of its assigned tokens (the target alone if none).
  The contextual token takes the target's place and position; dominant tokens keep theirs; kept tokens
  stay in their original order and positions are renumbered (a shorter prompt). Works with LaViDa's
  prefix cache (it acts before the prefill); each image of a prompt is reduced on its own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from redvtp_eval.pruners.base import Pruner, Reduction, VisualInput, check_ratio, kept_count

MERGES = ("mean", "visionzip")


def contextual_targets(remaining: int, count: int) -> Tensor:
    """Positions among ``remaining`` tokens of the ``count`` uniformly sampled targets: every max(1, ⌊M/C⌋)-th."""
    return torch.arange(0, remaining, max(1, remaining // count))[:count]


def visionzip_reduce(
    features: Tensor, scores: Tensor, kept: int, contextual: int, merge: str = "mean"
) -> tuple[Tensor, Tensor, Tensor]:
    """(sorted kept indices, their values, the contextual tokens' group of each token: its target's index in the
    image, −1 for dominant tokens) for one image's (N, d) ``features`` and (N,) tower ``scores``."""
    n = len(features)
    device = features.device
    dominant = torch.topk(scores.float(), kept - contextual).indices
    is_dominant = torch.zeros(n, dtype=torch.bool, device=device)
    is_dominant[dominant] = True
    group = torch.full((n,), -1, dtype=torch.long, device=device)
    values = features.float().clone()
    if contextual:
        remaining = (~is_dominant).nonzero().squeeze(1)
        targets = remaining[contextual_targets(len(remaining), contextual).to(device)]
        others = remaining[~torch.isin(remaining, targets)]
        normed = F.normalize(features.float(), dim=-1)
        nearest = (normed[others] @ normed[targets].T).argmax(dim=1)
        group[targets] = targets
        group[others] = targets[nearest]
        for target in targets.tolist():
            assigned = others[targets[nearest] == target]
            if merge == "mean":
                values[target] = features[group == target].float().mean(dim=0)
            elif len(assigned):
                values[target] = features[target].float() + features[assigned].float().mean(dim=0)
        is_dominant[targets] = True
    order = is_dominant.nonzero().squeeze(1)
    return order, values[order], group


class VisionZip(Pruner):
    name = "visionzip"
    needs_tower_attention = True

    def __init__(
        self,
        ratio: float = 0.5,
        contextual_share: float = 10 / 64,
        merge: str = "mean",
        tower_layer: int = -1,
        **options,
    ) -> None:
        super().__init__(**options)
        self.ratio = check_ratio(ratio)
        if not 0 <= contextual_share < 1:
            raise ValueError(
                f"contextual_share is the contextual part of the kept tokens, in [0, 1); got {contextual_share}"
            )
        if merge not in MERGES:
            raise ValueError(f"merge {merge!r} is not one of {', '.join(MERGES)}")
        self.contextual_share = float(contextual_share)
        self.merge = merge
        self.tower_layer = int(tower_layer)

    def counts(self, tokens: int) -> tuple[int, int]:
        """(dominant, contextual) tokens kept of an image's ``tokens``."""
        kept = kept_count(tokens, self.ratio)
        contextual = int(kept * self.contextual_share)
        return kept - contextual, contextual

    def before_lm(self, visual: VisualInput) -> Reduction | None:
        if visual.tower_attention is None:
            raise ValueError("visionzip needs the vision tower's attention (VisualInput.tower_attention)")
        kept_all, values_all = [], []
        for features, scores in zip(visual.features, visual.tower_attention):
            dominant, contextual = self.counts(len(features))
            if dominant + contextual >= len(features):
                kept_all.append(torch.arange(len(features), device=features.device))
                values_all.append(None)
                continue
            kept, values, _ = visionzip_reduce(
                features, scores.to(features.device), dominant + contextual, contextual, self.merge
            )
            kept_all.append(kept)
            values_all.append(values)
        if all(values is None for values in values_all):
            return None
        return Reduction(kept_all, values_all)
