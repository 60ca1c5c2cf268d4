"""What the sampler needs from a diffusion VLM, independent of the architecture behind it.

Where it sits: between a model family (``llada_v``, ``lavida_llada``, ``lavida_dream``) and the sampler.
A model turns a question and images into a :class:`Prompt` of embeddings with the visual spans marked,
embeds response tokens, returns logits for chosen positions of a sequence of embeddings, and can run the
prompt once into a :class:`~redvtp_eval.models.prefix_cache.PrefixCache` that later forwards attend to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
from PIL import Image
from torch import Tensor

from redvtp_eval.models.attention import AttentionProbe
from redvtp_eval.models.prefix_cache import PrefixCache


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
    shifted_logits: bool
    """Position i is predicted by the output at i − 1 (AR-initialised backbones); ``logits`` already aligns them."""
    device: torch.device

    def prepare(self, question: str, images: list[Image.Image], think_mode: str | None = None) -> Prompt: ...

    def embed(self, token_ids: Tensor) -> Tensor: ...

    def logits(
        self,
        embeds: Tensor,
        position_ids: Tensor,
        at: Tensor,
        probe: AttentionProbe | None = None,
        cache: PrefixCache | None = None,
    ) -> Tensor:
        """float32 predictions (len(at), vocab) for the positions ``at`` (indices into ``embeds`` (L, d)); with
        ``cache``, ``embeds`` follow the cached prompt and attend to it too."""
        ...

    def prefill(self, embeds: Tensor, position_ids: Tensor) -> tuple[PrefixCache, Tensor]:
        """The prompt's cache and the logits (vocab,) of its last position."""
        ...

    def encode_text(self, text: str) -> list[int]: ...

    def decode(self, token_ids: list[int]) -> str: ...
