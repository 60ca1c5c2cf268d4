"""The pruner interface: what the sampler hands a pruner after a denoising step, and what it gets back.

Where it sits: the sampler calls a pruner once, after step ``prune_after_step`` has committed its
tokens, with a :class:`PruneContext`; the pruner returns, per image, the indices of the visual tokens to
keep, and the sampler deletes the others from the sequence for every later step. A pruner never sees
the model, the tokenizer or the evaluation harness.

Adding a pruner: one file with a :class:`Pruner` subclass, and one line in ``pruners/__init__.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor


class VisualAttention(Protocol):
    """Attention that query positions pay to the visual tokens, averaged over heads and layers, from one forward.

    Called with query positions (of the current sequence), it returns one row per query and one column per
    visual token; columns follow the visual spans in order (image 1's tokens, then image 2's…). The sampler
    builds it from the step's forward (``engine.sampler.ProbedAttention``); a pruner only calls it, so it
    never sees the model or how the attention was recorded.
    """

    def __call__(self, queries: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class PruneContext:
    """The sequence as it stands after the step just run. Positions index the current sequence."""

    step: int
    visual_spans: list[tuple[int, int]]
    masked: Tensor
    """Response positions still masked after this step's commit (the paper's still-masked set)."""
    decoded: Tensor
    """Response positions committed by this step."""
    response: Tensor
    prompt_text: Tensor
    """Prompt positions outside the visual spans (system prompt, question, chat markup)."""
    attention: VisualAttention | None
    generator: torch.Generator | None = None
    """The generation's random stream (seeded per sample by the harness), for pruners that draw."""

    def split_by_image(self, values: Tensor) -> list[Tensor]:
        return list(values.split([end - start for start, end in self.visual_spans], dim=-1))


def check_ratio(ratio: float) -> float:
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio is the fraction of visual tokens kept and must lie in (0, 1], got {ratio}")
    return float(ratio)


def kept_count(tokens: int, ratio: float) -> int:
    """How many of an image's visual tokens a ratio keeps: ``max(1, int(N·r))``, as the official code."""
    return max(1, int(tokens * ratio))


class Pruner:
    """Keeps every visual token; subclasses choose. The base class is the unpruned baseline.

    ``needs_attention`` asks the sampler to record :class:`VisualAttention` on the steps where the
    pruner is called; ``record_scores`` asks for :meth:`scores` after every step (score-consistency
    studies). ``keep_positions`` keeps the kept tokens' original RoPE positions instead of renumbering
    the shortened sequence.
    """

    name = "none"
    needs_attention = False

    def __init__(self, prune_after_step: int = 1, keep_positions: bool = False, record_scores: bool = False) -> None:
        if prune_after_step < 1:
            raise ValueError(f"prune_after_step counts denoising steps from 1, got {prune_after_step}")
        self.prune_after_step = prune_after_step
        self.keep_positions = keep_positions
        self.record_scores = record_scores

    def scores(self, context: PruneContext) -> list[Tensor] | None:
        """Per image, one importance score per visual token; None when the pruner does not score."""
        return None

    def select(self, context: PruneContext) -> list[Tensor] | None:
        """Per image, the sorted indices (within the image's span) of the tokens to keep; None keeps all."""
        return None
