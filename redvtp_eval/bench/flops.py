"""Analytic FLOP model of LLaDA-V inference: a denoising step as a function of sequence length, and the vision encoder.

Where it sits: the speed benchmark divides its measured speed-up by the speed-up these counts allow
(achieved / ideal), per retention ratio.

Counts are 2 × multiply-adds of the matrix products only; norms, softmax, RoPE, activations and the
sampler's own work are left out. Language model, one step over L positions with logits at G positions
(the sampler runs the LM head on the response only), per layer, with d the width, d_kv = kv heads ×
head dim and m the MLP width:

    q, k, v, o projections   2·L·d·(2·d + 2·d_kv)
    attention QKᵀ and AV     4·L²·d              bidirectional: every row attends to all L keys
    SwiGLU MLP               6·L·d·m
    LM head (once)           2·G·d·V

On the scoring step RedVTP's probe adds 2·R·L·d per layer (R probed rows, all keys). Vision encoder, per
crop of P = (image / patch)² patches, width c, MLP width m_v: patch embedding 2·P·3·p²·c; per layer
8·P·c² + 4·P²·c + 4·P·c·m_v; then the projector 2·P·(c·d + d²).

Pruning shortens L for the steps after the scoring step only: the vision encoder and the first full
step are paid in full, which bounds the speed-up well below N / kept.
"""

from __future__ import annotations

from transformers import LlamaConfig

from redvtp_eval.models.llada_v import LladaVConfig


def step_flops(text: LlamaConfig, length: int, logit_positions: int) -> dict[str, int]:
    """FLOPs of one forward of the language model over ``length`` positions, by part, and their ``total``."""
    d, layers, head_dim = text.hidden_size, text.num_hidden_layers, text.head_dim
    d_kv = text.num_key_value_heads * head_dim
    d_attention = text.num_attention_heads * head_dim
    parts = {
        "projections": layers * 2 * length * d * (2 * d_attention + 2 * d_kv),
        "attention": layers * 4 * length**2 * d_attention,
        "mlp": layers * 6 * length * d * text.intermediate_size,
        "lm_head": 2 * logit_positions * d * text.vocab_size,
    }
    return {**parts, "total": sum(parts.values())}


def probe_flops(text: LlamaConfig, rows: int, length: int) -> int:
    """What the attention probe adds to the scoring step: ``rows`` query rows against all keys, every layer."""
    return text.num_hidden_layers * 2 * rows * length * text.num_attention_heads * text.head_dim


def vision_flops(config: LladaVConfig, crops: int) -> int:
    """SigLIP tower and projector over ``crops`` crops."""
    vision, d = config.vision, config.text.hidden_size
    patches = (vision.image_size // vision.patch_size) ** 2
    c = vision.hidden_size
    embedding = 2 * patches * vision.num_channels * vision.patch_size**2 * c
    layer = 8 * patches * c**2 + 4 * patches**2 * c + 4 * patches * c * vision.intermediate_size
    projector = 2 * patches * (config.mm_hidden_size * d + d * d)
    return crops * (embedding + vision.num_hidden_layers * layer + projector)


def generation_flops(
    config: LladaVConfig,
    crops: int,
    steps: int,
    logit_positions: int,
    length: int,
    length_after: int,
    prune_after_step: int = 1,
    probe_rows: int = 0,
) -> int:
    """A whole generation: vision encoder, ``prune_after_step`` steps at ``length`` (the last with the probe's
    ``probe_rows``), the remaining steps at ``length_after``. The unpruned baseline has ``length_after == length``."""
    full = min(prune_after_step, steps)
    return (
        vision_flops(config, crops)
        + full * step_flops(config.text, length, logit_positions)["total"]
        + (steps - full) * step_flops(config.text, length_after, logit_positions)["total"]
        + (probe_flops(config.text, probe_rows, length) if probe_rows else 0)
    )
