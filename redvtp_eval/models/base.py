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
    visual_grids: list[list[tuple[int, int, int, int]]] = field(default_factory=list)
    """Per image, its 2-D token grids as (first token, rows, columns, row stride) within the image's span
    (AnyRes: the base view, then the tile map whose rows end in ``image_newline``); empty: not known."""
    crops: int = 0
    """Crops the vision encoder ran on (for the FLOP count)."""
    tower_attention: list[Tensor] | None = None
    """Per image, (N,) float32 attention each visual token received in the vision tower, aligned with its span;
    only when ``prepare`` was asked for it (``tower_layer``), None otherwise."""
    token_crops: list[Tensor] | None = None
    """Per image, (N,) long: the crop each visual token's value mostly comes from (0: the AnyRes base view, 1…: the
    tiles row-major; −1: ``image_newline``); None when the image is one crop (several images per prompt)."""

    @property
    def visual_tokens(self) -> int:
        return sum(end - start for start, end in self.visual_spans)


class LayerHook(Protocol):
    """What a forward asks of the sampler at every layer (pruning inside the language model)."""

    def probe(self, layer: int) -> AttentionProbe | None:
        """The probe to record layer ``layer``'s attention into (0-based), or None."""
        ...

    def after_layer(self, layer: int, hidden: Tensor) -> tuple[Tensor, Tensor] | None:
        """Given layer ``layer``'s output rows (L, d): None to go on, or (the rows kept (L', d), possibly with new
        values, and the (L,) boolean mask of the rows kept)."""
        ...


class DiffusionVLM(Protocol):
    mask_token_id: int
    suppressed_token_ids: tuple[int, ...]
    special_token_ids: frozenset[int]
    shifted_logits: bool
    """Position i is predicted by the output at i − 1 (AR-initialised backbones); ``logits`` already aligns them."""
    device: torch.device
    dtype: torch.dtype
    autocast_dtype: torch.dtype | None
    """The CUDA autocast the official generation loop runs under (LLaDA-V: float16), or None (LaViDa)."""
    num_layers: int
    """Decoder layers of the language model (where a pruner inside it may act)."""

    def prepare(
        self, question: str, images: list[Image.Image], think_mode: str | None = None, tower_layer: int | None = None
    ) -> Prompt: ...

    def embed(self, token_ids: Tensor) -> Tensor: ...

    def logits(
        self,
        embeds: Tensor,
        position_ids: Tensor,
        at: Tensor,
        probe: AttentionProbe | None = None,
        cache: PrefixCache | None = None,
        hook: LayerHook | None = None,
        rope: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """float32 predictions (len(at), vocab) for the positions ``at`` (indices into ``embeds`` (L, d)); with
        ``cache``, ``embeds`` follow the cached prompt and attend to it too; with ``hook``, the forward calls it
        at every layer, and rows it drops leave the later layers (``at`` must survive); ``rope``: the
        :meth:`rotary` tables of ``position_ids``, when the caller keeps them across forwards."""
        ...

    def rotary(self, position_ids: Tensor) -> tuple[Tensor, Tensor]:
        """The RoPE tables (cos, sin) of positions (L,), as :meth:`logits` takes them."""
        ...

    def prefill(self, embeds: Tensor, position_ids: Tensor) -> tuple[PrefixCache, Tensor]:
        """The prompt's cache and the logits (vocab,) of its last position."""
        ...

    def encode_text(self, text: str) -> list[int]: ...

    def decode(self, token_ids: list[int]) -> str: ...
