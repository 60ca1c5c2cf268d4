"""LaViDa's prefix-KV cache: the prompt's keys and values, computed once, that every response step attends to.

Where it sits: ``model.prefill(prompt)`` fills it with one forward over the prompt alone; every later
forward runs the response positions only, and each attention layer calls :meth:`PrefixCache.update`,
which puts the cached prompt keys/values in front of the response's own without storing them. The
prompt therefore never attends to the response (LaViDa's Prefix-DLM), and only the response is
recomputed per step.

Keys are stored after RoPE, as transformers' layers produce them (Dream's official cache does the
same; LaViDa-LLaDA's caches them before RoPE and rotates the concatenation by sequence index, which is
the same numbers while nothing is removed). After visual-token pruning, :meth:`keep` drops the pruned
tokens' entries: the kept keys keep the rotation of their original positions.
"""

from __future__ import annotations

import torch
from torch import Tensor


class PrefixCache:
    """Per layer, (1, H_kv, P, D) keys and values of the P prompt positions."""

    def __init__(self) -> None:
        self.keys: list[Tensor] = []
        self.values: list[Tensor] = []
        self.filling = True

    def update(self, key: Tensor, value: Tensor, layer_idx: int, *args, **kwargs) -> tuple[Tensor, Tensor]:
        """Called by each attention layer: stores the prompt during the prefill, prepends it afterwards."""
        if self.filling:
            self.keys.append(key)
            self.values.append(value)
            return key, value
        return torch.cat([self.keys[layer_idx], key], dim=2), torch.cat([self.values[layer_idx], value], dim=2)

    def close(self) -> None:
        """End of the prefill: from now on the cache only serves the stored prompt."""
        self.filling = False

    @property
    def length(self) -> int:
        return self.keys[0].shape[2] if self.keys else 0

    def layer_length(self, layer: int) -> int:
        """Prompt entries of one layer: after pruning inside the LM, layers from K on may hold fewer."""
        return self.keys[layer].shape[2]

    def keep(self, mask: Tensor, layers: range | None = None) -> None:
        """Keep the prompt entries where the (P,) boolean ``mask`` is true, in every layer (or in ``layers``)."""
        for layer in layers if layers is not None else range(len(self.keys)):
            self.keys[layer] = self.keys[layer][:, :, mask]
            self.values[layer] = self.values[layer][:, :, mask]
