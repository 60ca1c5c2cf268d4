"""LRS-VQA's coarse-to-fine text-guided pruning: a region focus module (RFM), distilled from the LM's text→vision
attention, picks the AnyRes tiles worth seeing at full resolution from the coarse base view, then prunes tokens.

Where it sits: the before-the-LM stage of :mod:`redvtp_eval.pruners.base`, on AnyRes inputs (a base view, then the
tile map; each token's crop is :attr:`VisualInput.crops`). The RFM is trained outside the pruners, on the frozen
model (:mod:`redvtp_eval.analysis.train_rfm`), and loaded from its own file (``modules``). The vision-tower time the
tile selection saves is measured by :mod:`redvtp_eval.analysis.rfm_dip_tower`.

Paper: Luo et al., "When Large Vision-Language Model Meets Large Remote Sensing Imagery: Coarse-to-Fine Text-Guided
Token Pruning" (ICCV 2025; VisionXLab/LRS-VQA, read at commit 1b3b6cd: ``llava/model/multimodal_projector/builder.py``,
``PyramidPruneModule``, ``get_next_level_fea``, ``select_attention_indices_via_ratio``). The RFM there is a few LM
decoder layers initialised from the LM, run on the whole prompt; the head-averaged softmax attention from the last
instruction token to the image tokens at its last layer is the relevance, trained to match the LM's own
text→vision attention. A dynamic image pyramid (DIP) is built from the large image; at the coarse level the
``pruning_ratio`` fraction of tokens with the highest relevance vote for the next level's tiles under them
(``get_next_level_fea``: the tiles ranked by votes, all voted tiles taken), only those tiles are encoded, and the
finest level's tile tokens are pruned to the same ratio by relevance (``image_newline`` kept), the global
(thumbnail) view kept whole.

Adaptation (LLaDA-V / LaViDa AnyRes, a bidirectional masked-diffusion LM, a pruner that holds no LM layers):

* Pyramid: two levels — the AnyRes base view (the coarse level) and the AnyRes tile grid (the fine level). What is
  missing: the official pyramid's further levels (the image at higher resolutions than the pinpoint grid) and its
  iteration over them; LLaDA-V's AnyRes has one tile level.
* RFM (:class:`RegionFocusModule`): not LM layers but one learned text→vision attention on what exists before the
  LM — the projected visual features and the prompt's text embeddings — plus a learned per-token content bias:
  relevance_j = mean over heads h and text rows u of softmax_j(q_uh·k_jh/√d_h + b_j). Distillation target (the
  trainer): the LM's attention, averaged over heads and layers, from the still-masked response rows at step 1 —
  the bidirectional stand-in for the last instruction token — renormalised over the image's tokens; loss KL.
* Tile selection (:func:`select_tiles`): the top ``max(1, int(N_base·r))`` base tokens by relevance (softmax over
  the base view) vote for the tile under each one's centre (the base view and the un-padded tile map cover the
  same image); tiles ranked by votes (ties: lower index), at most ``max_tiles`` (default: every voted tile, as the
  official).
* Tokens: of the ``max(1, int(N·r))`` budget (N: every token the full AnyRes layout has — matched cost), the base
  view is kept whole if it fits and the rest go to the selected tiles' tokens by relevance (a softmax over them);
  if the base view alone exceeds the budget, its top tokens by relevance are kept and no tile. ``image_newline``
  tokens are not kept (the official keeps one per row). Fewer than the budget stay when the selected tiles hold
  fewer tokens. Kept tokens keep their order; positions are renumbered (a shorter prompt).
* Where the tiles are cut: this stage acts on the features of every crop, so the job's tokens are those of
  encoding only the selected tiles whenever the tile map is not resized (``anyres_max`` shrinking mixes neighbouring
  tiles: there the kept tokens are the full encoding's), and the job's wall clock still includes the whole tower;
  the tower time and FLOPs saved by encoding only the base view and the selected tiles are measured separately
  (:mod:`redvtp_eval.analysis.rfm_dip_tower`). Without an AnyRes tile map (several images), the RFM prunes the
  tokens directly.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from redvtp_eval.pruners.base import Pruner, VisualInput, check_ratio, kept_count, top_count
from redvtp_eval.pruners.trained import TrainedModules

DEFAULT_MODULES = "checkpoints/rfm-toy-llada-v/rfm.pt"
TRAIN_COMMAND = "python -m redvtp_eval.analysis.train_rfm --model <checkpoint> --out <file.pt>"


class RegionFocusModule(TrainedModules):
    """Relevance of each visual token to the prompt text, from features and text embeddings (before the LM)."""

    method = "rfm_dip"
    train_command = TRAIN_COMMAND

    def __init__(self, hidden: int, inner: int = 64, heads: int = 4, meta: dict | None = None) -> None:
        super().__init__(meta)
        if inner % heads:
            raise ValueError(f"inner size {inner} is not a multiple of {heads} heads")
        self.hidden, self.inner, self.heads = hidden, inner, heads
        self.norm_visual = nn.RMSNorm(hidden, eps=1e-6)
        self.norm_text = nn.RMSNorm(hidden, eps=1e-6)
        self.query = nn.Linear(hidden, inner)
        self.key = nn.Linear(hidden, inner)
        self.bias = nn.Sequential(nn.Linear(hidden, inner), nn.GELU(), nn.Linear(inner, 1))

    def logits(self, features: Tensor, text: Tensor) -> Tensor:
        """(heads, T, N) attention logits from the (T, hidden) text rows to the (N, hidden) visual tokens."""
        v, t = self.norm_visual(features.float()), self.norm_text(text.float())
        q = self.query(t).unflatten(-1, (self.heads, -1)).transpose(0, 1)
        k = self.key(v).unflatten(-1, (self.heads, -1)).transpose(0, 1)
        return q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5 + self.bias(v).squeeze(-1)

    def forward(self, features: Tensor, text: Tensor) -> Tensor:
        """(N,) relevance, summing to one over the given tokens."""
        return torch.softmax(self.logits(features, text), dim=-1).mean(dim=(0, 1))

    def config(self) -> dict:
        return {"hidden": self.hidden, "inner": self.inner, "heads": self.heads}


def tile_under_base(crops: Tensor, grids: list[tuple[int, int, int, int]]) -> Tensor:
    """(N_base,) the crop (tile id, from 1) of the tile-map token under the centre of each base-view token."""
    (_, side, base_cols, _), (map_first, rows, cols, map_stride) = grids[0], grids[1]
    r = torch.arange(side, device=crops.device).repeat_interleave(base_cols)
    c = torch.arange(base_cols, device=crops.device).repeat(side)
    y, x = ((r + 0.5) * rows / side).long(), ((c + 0.5) * cols / base_cols).long()
    return crops[map_first + y * map_stride + x]


def select_tiles(relevance: Tensor, tiles: Tensor, ratio: float, max_tiles: int | None = None) -> Tensor:
    """The tiles to see at full resolution: the top ``max(1, int(N_base·r))`` base tokens by ``relevance`` vote for
    the tile under each (``tiles``, (N_base,)); tiles by votes (ties: lower id), at most ``max_tiles``; sorted ids."""
    voters = top_count(relevance, kept_count(len(relevance), ratio))
    ids, votes = tiles[voters].unique(return_counts=True)
    keep = ids >= 1
    ids, votes = ids[keep], votes[keep]
    order = sorted(range(len(ids)), key=lambda i: (-int(votes[i]), int(ids[i])))
    if max_tiles is not None:
        order = order[:max_tiles]
    return ids[order].sort().values


def rfm_dip_keep(
    rfm: RegionFocusModule,
    features: Tensor,
    text: Tensor,
    crops: Tensor,
    grids: list[tuple[int, int, int, int]],
    budget: int,
    ratio: float,
    max_tiles: int | None = None,
) -> tuple[Tensor, Tensor]:
    """One AnyRes image: the sorted indices of the tokens kept, and the tiles selected."""
    base = (crops == 0).nonzero().squeeze(1)
    relevance = rfm(features[base], text)
    if budget <= len(base):
        return base[top_count(relevance, budget)], crops.new_zeros(0)
    chosen = select_tiles(relevance, tile_under_base(crops, grids), ratio, max_tiles)
    candidates = torch.isin(crops, chosen).nonzero().squeeze(1)
    fine = candidates[top_count(rfm(features[candidates], text), budget - len(base))] if len(candidates) else candidates
    return torch.cat([base, fine]).sort().values, chosen


class RfmDip(Pruner):
    name = "rfm_dip"

    def __init__(self, ratio: float = 0.5, modules: str | None = None, max_tiles: int | None = None, **options):
        super().__init__(**options)
        self.ratio = check_ratio(ratio)
        if max_tiles is not None and int(max_tiles) < 1:
            raise ValueError(f"max_tiles caps the tiles selected and must be >= 1 (or null: no cap), got {max_tiles}")
        self.max_tiles = int(max_tiles) if max_tiles is not None else None
        self.rfm = RegionFocusModule.load(modules or DEFAULT_MODULES)
        self.selected: list[Tensor] = []
        """Per image of the last prompt, the tiles selected (what the tower would encode besides the base view)."""

    def check(self, features: Tensor) -> None:
        if features.shape[-1] != self.rfm.hidden:
            raise ValueError(
                f"rfm_dip's region focus module was trained for hidden size {self.rfm.hidden} "
                f"({self.rfm.meta.get('model', 'another model')}); this model's is {features.shape[-1]}: "
                f"train one for it ({TRAIN_COMMAND})"
            )

    def before_lm(self, visual: VisualInput) -> list[Tensor] | None:
        if self.ratio >= 1:
            return None
        kept, self.selected = [], []
        rfm = self.rfm.to(visual.text.device)
        for image, features in enumerate(visual.features):
            self.check(features)
            budget = kept_count(len(features), self.ratio)
            crops = visual.crops[image] if visual.crops is not None else None
            grids = visual.grids[image] if image < len(visual.grids) else []
            with torch.no_grad():
                if crops is None or len(grids) < 2 or not bool((crops > 0).any()):
                    kept.append(top_count(rfm(features, visual.text), budget))
                    self.selected.append(crops.new_zeros(0) if crops is not None else torch.zeros(0, dtype=torch.long))
                    continue
                keep, chosen = rfm_dip_keep(
                    rfm, features, visual.text, crops, grids, budget, self.ratio, self.max_tiles
                )
            kept.append(keep)
            self.selected.append(chosen)
        return kept
