"""Attention that also reports softmax rows for a few query positions: what an attention scorer needs.

Where it sits: the language model's layers call it (through transformers' ``AttentionInterface``) on
every forward; only a forward that carries an :class:`AttentionProbe` does any extra work.

Why: RedVTP scores visual tokens by the attention they receive from a handful of query rows (the
still-masked response positions), averaged over heads and layers. The official code switches the step
to eager attention and keeps every layer's full T×T map (32 maps of 3778² for LLaDA-V). Here the model
keeps running on SDPA; a probe takes the post-RoPE queries of the rows it was asked for and all keys,
computes ``softmax(q·Kᵀ/√d)`` over the *full* row (so the normaliser is the true one), and keeps only the
head-averaged columns it needs, summed over layers. The cost is |rows|·T per head instead of T².
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.models.llama.modeling_llama import eager_attention_forward

PROBED = "probed_{}"
"""Name pattern under which the probe-capable variant of a base implementation is registered."""


class AttentionProbe:
    """Collects, for chosen query rows, head-averaged attention to chosen key columns, summed over layers.

    ``rows`` and ``cols`` are positions in the sequence (prompt, then response). Batch size 1. In a forward
    over the response only, against a prefix cache, the queries are the last ``len(query)`` positions of the
    keys, so a row's query index is its position minus the cached length. A forward whose cache also holds
    entries after its queries (Fast-dLLM's dual cache) names the position of its first query, ``first_query``;
    the cache must then begin with the prompt, so that ``cols`` in it are key indices.
    """

    def __init__(self, rows: Tensor, cols: Tensor, first_query: int | None = None) -> None:
        self.rows = rows
        self.cols = cols
        self.first_query = first_query
        self._sum: Tensor | None = None
        self.layers = 0

    def record(self, query: Tensor, key: Tensor, scaling: float) -> None:
        """query: (1, H, T_q, D) and key: (1, H_kv, T_k, D), both after RoPE; the queries are the last T_q keys
        unless ``first_query`` says where they start."""
        first = key.shape[2] - query.shape[2] if self.first_query is None else self.first_query
        q = query[0, :, self.rows - first].float()
        k = key[0].float().repeat_interleave(query.shape[1] // key.shape[1], dim=0)
        probs = torch.softmax(q @ k.transpose(-1, -2) * scaling, dim=-1)
        part = probs[:, :, self.cols].mean(dim=0)
        self._sum = part if self._sum is None else self._sum + part
        self.layers += 1

    def mean(self) -> Tensor:
        """(len(rows), len(cols)) attention averaged over heads and layers."""
        if self._sum is None:
            raise RuntimeError("the probe saw no attention layer: was it passed to the forward?")
        return self._sum / self.layers


def _with_probe(base: Callable) -> Callable:
    def attention(module, query, key, value, attention_mask, probe: AttentionProbe | None = None, **kwargs):
        if probe is not None:
            probe.record(query, key, kwargs["scaling"])
        return base(module, query, key, value, attention_mask, **kwargs)

    return attention


for _name, _base in {"sdpa": sdpa_attention_forward, "eager": eager_attention_forward}.items():
    AttentionInterface.register(PROBED.format(_name), _with_probe(_base))
