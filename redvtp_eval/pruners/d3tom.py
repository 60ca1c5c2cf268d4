"""D³ToM: the tokens decoded by the last step decide which visual tokens stay; the rest merge into them, every step.

Where it sits: the between-steps stage of :mod:`redvtp_eval.pruners.base`, after every step of a window.

Paper: Chang et al., "D³ToM: Decider-Guided Dynamic Token Merging for Accelerating Diffusion MLLMs" (AAAI 2026,
arXiv 2511.12280; bcmi/D3ToM-Diffusion-MLLM, on LaViDa-LLaDA). At denoising step t the *decider* tokens D_t —
the positions committed at step t−1 — score each visual token j by the attention they pay it, s_t[j] = Σ_{i∈D_t}
Ā[i, j] (head-averaged, at one layer); the top (1 − m_t)·N stay, and every other visual token is merged into the
kept token it is most cosine-similar to. The merge ratio m_t varies with the step.

What the official code does (read at commit 46f6a56): the merge happens inside layer index 3 of *every* step's
forward and starts again from all N tokens at the next step (nothing persists); step 1 has no deciders and runs
in full; m_t = 0.6 + 0.2·(1 − t/T) by default (t the step within the block, T its steps), so a forward keeps
20% of the tokens at the block's start rising to 40% at its end; the merged tokens' hidden states are *summed*
into their kept token; similarity is taken on that layer's normalised input; with the prefix cache the cached
keys/values after layer 3 are merged the same way and rescaled to the kept ones' mean norm.

Adaptation to this harness's between-steps stage (``d3tom``):

- **Deciders**: after step t, ``PruneContext.decoded`` (the positions step t committed) are the deciders of every
  later step; their attention is read from step t's own forward (the sampler probes every non-visual row of the
  step the pruner acts after), averaged over heads *and layers* as RedVTP averages, and over the decider rows
  (the official sum over rows ranks alike). The official code reads it one forward later, at one layer.
- **Persistent merging, monotone schedule**: merged tokens leave the sequence for every later step, so the count
  can only fall (the official per-forward count rises through a block, which a deletion cannot follow). The
  window is steps a..b, a = ``prune_after_step`` (default 1: step 2 is the first to run merged, as in the
  official code) and b = a + ``merge_steps`` − 1, at most the plan's last step but one (default: that one; a merge
  after the last step would shorten nothing). After the k-th of its S = b − a + 1 steps an image of N tokens keeps
  n_k = max(max(1, int(N·r)), int(N·r^(k/S))) — a constant per-step keep ratio r^(1/S) — so it holds exactly
  ``max(1, int(N·r))`` after step b. A generation that ends early (stop string, empty block) merges less.
- **No decider**: a step that committed nothing merges nothing; the next step that did merges down to its own
  n_k at once. Without attention or visual tokens nothing is merged either.
- **Merging** (``Reduction`` values, input embeddings from ``PruneContext.embeds``): each non-kept token of an
  image joins the kept token of the same image whose current input embedding is most cosine-similar (first on
  ties); the group's plain mean (the kept token and those joining it this step, each counted once whatever it
  absorbed before) is written into the kept token, which keeps its place and its position (renumbered with the
  rest, as the official sequence shortening, unless ``keep_positions``).
- **Caches** (LaViDa's prefix cache, Fast-dLLM's prefix and dual caches): the cached keys/values of every layer
  were computed from the unmerged prompt, so each group's cached entries are merged the same way, into their
  plain mean (``Reduction.sources`` names the groups; ``PrefixCache.merge``), and the rest dropped. The official
  code also merges the cached keys/values (by sum, grouped by the similarity of head-averaged keys, then scaled to
  the kept entries' mean norm); here the groups are the embeddings' and the rule their mean, so a token that
  absorbed nothing keeps its entries. Fast-dLLM recomputes them from the merged embeddings at its next full
  forward; LaViDa's prefix cache never does. In a Fast-dLLM window step the deciders' attention is read from the
  window forward (the deciders are in the block, so in the window).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from redvtp_eval.pruners.base import PruneContext, Pruner, Reduction, check_ratio, kept_count


def scheduled_count(tokens: int, ratio: float, k: int, steps: int) -> int:
    """n_k: visual tokens an image of ``tokens`` keeps after the k-th of ``steps`` merging steps."""
    return max(kept_count(tokens, ratio), int(tokens * ratio ** (k / steps)))


def merge_into_kept(embeds: Tensor, kept: Tensor) -> tuple[Tensor, Tensor]:
    """Each kept token's mean with the non-kept tokens most cosine-similar to it: the (len(kept), d) float32 means,
    and for every token the index in ``kept`` of the token it went into (a kept one: its own)."""
    embeds = embeds.float()
    rest = torch.ones(len(embeds), dtype=torch.bool, device=embeds.device)
    rest[kept] = False
    similarity = F.normalize(embeds[rest], dim=-1) @ F.normalize(embeds[kept], dim=-1).T
    target = similarity.argmax(dim=-1)
    sums = embeds[kept].index_add(0, target, embeds[rest])
    counts = 1 + torch.bincount(target, minlength=len(kept))
    sources = torch.empty(len(embeds), dtype=torch.long, device=embeds.device)
    sources[kept] = torch.arange(len(kept), device=embeds.device)
    sources[rest] = target
    return sums / counts[:, None], sources


class D3ToM(Pruner):
    name = "d3tom"
    needs_attention = True

    def __init__(self, ratio: float = 0.25, merge_steps: int | None = None, **options) -> None:
        super().__init__(**options)
        self.ratio = check_ratio(ratio)
        if merge_steps is not None and merge_steps < 1:
            raise ValueError(f"merge_steps counts the merging steps and must be >= 1 (or null), got {merge_steps}")
        self.merge_steps = merge_steps

    def window(self, total_steps: int | None) -> tuple[int, int]:
        """(a, b): the first and last step after which the pruner merges (b < a: none)."""
        if total_steps is None:
            raise ValueError("d3tom needs the generation's planned step count (PruneContext.total_steps)")
        last = total_steps - 1
        if self.merge_steps is not None:
            last = min(last, self.prune_after_step + self.merge_steps - 1)
        return self.prune_after_step, last

    def acts_after(self, step: int, total_steps: int | None = None) -> bool:
        first, last = self.window(total_steps)
        return first <= step <= last

    def scores(self, context: PruneContext) -> list[Tensor] | None:
        if context.attention is None or len(context.decoded) == 0 or not context.visual_spans:
            return None
        return context.split_by_image(context.attention(context.decoded).mean(dim=0))

    def select(self, context: PruneContext) -> Reduction | None:
        scores = self.scores(context)
        if scores is None:
            return None
        if context.original_sizes is None or context.embeds is None:
            raise ValueError("d3tom needs PruneContext.original_sizes and embeds (the sampler passes them)")
        first, last = self.window(context.total_steps)
        k, steps = context.step - first + 1, last - first + 1
        kept_all, values_all, sources_all = [], [], []
        for (start, end), score, size in zip(context.visual_spans, scores, context.original_sizes):
            count = scheduled_count(size, self.ratio, k, steps)
            if count >= len(score):
                kept_all.append(torch.arange(len(score), device=score.device))
                values_all.append(None)
                sources_all.append(None)
                continue
            kept = torch.topk(score, count).indices.sort().values
            values, sources = merge_into_kept(context.embeds[start:end], kept)
            kept_all.append(kept)
            values_all.append(values)
            sources_all.append(sources)
        if all(values is None for values in values_all):
            return None
        return Reduction(kept_all, values_all, sources_all)
