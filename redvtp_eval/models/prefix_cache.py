"""LaViDa's prefix-KV cache: the prompt's keys and values, computed once, that every response step attends to.

Where it sits: ``model.prefill(prompt)`` fills it with one forward over the prompt alone; every later
forward runs the response positions only, and each attention layer calls :meth:`PrefixCache.update`,
which puts the cached prompt keys/values in front of the response's own without storing them (and without
copying the cached ones: see :class:`PrefixCache`). The
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
    """Per layer, (1, H_kv, P, D) keys and values of the P cached positions.

    Serving, each layer writes the forward's new keys/values into room kept after the cached ones and attends
    to one view of both: no step copies the P cached entries (a concatenation would, in every layer of every
    step). The room is made once, when the first forward after :meth:`close` or :meth:`keep` asks for it.
    """

    def __init__(self) -> None:
        self.keys: list[Tensor] = []
        self.values: list[Tensor] = []
        self.filling = True
        self._room: list[tuple[Tensor, Tensor] | None] = []

    def update(self, key: Tensor, value: Tensor, layer_idx: int, *args, **kwargs) -> tuple[Tensor, Tensor]:
        """Called by each attention layer: stores the prompt during the prefill, puts it in front afterwards."""
        if self.filling:
            self.keys.append(key)
            self.values.append(value)
            self._room.append(None)
            return key, value
        cached, new = self.keys[layer_idx].shape[2], key.shape[2]
        room = self._room[layer_idx]
        if room is None or room[0].shape[2] < cached + new:
            room = tuple(self._make_room(stored, new) for stored in (self.keys[layer_idx], self.values[layer_idx]))
            self._room[layer_idx] = room
        room_keys, room_values = room
        room_keys[:, :, cached : cached + new] = key
        room_values[:, :, cached : cached + new] = value
        return room_keys[:, :, : cached + new], room_values[:, :, : cached + new]

    @staticmethod
    def _make_room(stored: Tensor, new: int) -> Tensor:
        shape = list(stored.shape)
        shape[2] += new
        room = stored.new_empty(shape)
        room[:, :, : stored.shape[2]] = stored
        return room

    def close(self) -> None:
        """End of the prefill: from now on the cache only serves the stored prompt."""
        self.filling = False

    @property
    def length(self) -> int:
        return self.keys[0].shape[2] if self.keys else 0

    def layer_length(self, layer: int) -> int:
        """Prompt entries of one layer: after pruning inside the LM, layers from K on may hold fewer."""
        return self.keys[layer].shape[2]

    def merge(self, rows: Tensor, into: Tensor) -> None:
        """Write into each entry that ``into`` names the plain mean of the entries ``rows`` that point at it (one
        pair per merged token, a kept token pointing at itself), in every layer: a between-steps merge of visual
        tokens (D³ToM) applied to the keys/values cached from the unmerged ones. Approximate, as the cache is: a
        merged token's recomputed keys would come from its merged embedding. :meth:`keep` then drops the rest."""
        counts = torch.bincount(into, minlength=self.length)
        targets = counts > 0
        for store in (self.keys, self.values):
            for layer, entries in enumerate(store):
                sums = torch.zeros_like(entries, dtype=torch.float32).index_add_(2, into, entries[:, :, rows].float())
                mean = (sums / counts.clamp(min=1)[:, None]).to(entries.dtype)
                store[layer] = torch.where(targets[:, None], mean, entries)
        self._room = [None] * len(self.keys)

    def keep(self, mask: Tensor, layers: range | None = None) -> None:
        """Keep the prompt entries where the (P,) boolean ``mask`` is true (or, without waiting for the device to
        count them, those a sorted index tensor names), in every layer (or in ``layers``)."""
        for layer in layers if layers is not None else range(len(self.keys)):
            self.keys[layer] = self.keys[layer][:, :, mask]
            self.values[layer] = self.values[layer][:, :, mask]
            self._room[layer] = None
