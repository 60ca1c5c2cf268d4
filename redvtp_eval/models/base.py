"""What the sampler needs from a diffusion VLM, independent of the architecture behind it.

Where it sits: between a model family (``llada_v`` today) and the sampler. A model turns a question and
images into a :class:`Prompt` of embeddings with the visual spans marked, embeds response tokens, and
returns logits for chosen positions of a sequence of embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
from PIL import Image
from torch import Tensor

from redvtp_eval.models.attention import AttentionProbe


@dataclass
class Prompt:
    """A prompt in embedding space: ``embeds`` (L, d), with ``visual_spans`` [start, end) per image."""

    embeds: Tensor
    visual_spans: list[tuple[int, int]]
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def visual_tokens(self) -> int:
        return sum(end - start for start, end in self.visual_spans)


class DiffusionVLM(Protocol):
    mask_token_id: int
    suppressed_token_ids: tuple[int, ...]
    special_token_ids: frozenset[int]
    device: torch.device

    def prepare(self, question: str, images: list[Image.Image], think_mode: str | None = None) -> Prompt: ...

    def embed(self, token_ids: Tensor) -> Tensor: ...

    def logits(self, embeds: Tensor, position_ids: Tensor, at: Tensor, probe: AttentionProbe | None = None) -> Tensor:
        """float32 logits (len(at), vocab) at positions ``at`` of the sequence ``embeds`` (L, d)."""
        ...

    def encode_text(self, text: str) -> list[int]: ...

    def decode(self, token_ids: list[int]) -> str: ...
