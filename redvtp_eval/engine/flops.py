"""Analytic FLOP model of LLaDA-V / LaViDa inference: a denoising step by sequence length, and the vision encoder.

Where it sits: the speed benchmark divides its measured speed-up by the speed-up these counts allow
(achieved / ideal), per retention ratio.

Counts are 2 × multiply-adds of the matrix products only; norms, softmax, RoPE, activations and the
sampler's own work are left out. Language model, one step over L positions with logits at G positions
(the sampler runs the LM head on the positions the step may commit: the block's masked ones), per layer,
with d the width, d_kv = kv heads × head dim and m the MLP width:

    q, k, v, o projections   2·L·d·(2·d + 2·d_kv)
    attention QKᵀ and AV     4·L·K·d             bidirectional: every row attends to all K keys (K = L uncached)
    SwiGLU MLP               6·L·d·m
    LM head (once)           2·G·d·V

On the scoring step RedVTP's probe adds 2·R·K·d per layer (R probed rows, all K keys). Vision encoder, per
crop of P = (image / patch)² patches, width c, MLP width m_v: patch embedding 2·P·3·p²·c; per layer
8·P·c² + 4·P²·c + 4·P·c·m_v; then the projector 2·P·(c·d + d²).

Pruning shortens L for the steps after the scoring step only: the vision encoder and the first full
step are paid in full, which bounds the speed-up well below N / kept.

Bytes, for a roofline bound (time ≥ FLOPs / peak FLOP/s + bytes / bandwidth, :class:`Roofline`): what a forward
must move through memory besides its matrix products' arithmetic, with w bytes per weight (2 in half precision):
every layer's weights once, w·(d·(2·d + 2·d_kv) + 3·d·m), and the LM head's, w·d·V, when it runs; the keys and
values each layer reads, 2·w·K·d_kv; and the vocabulary-sized work at the G logit positions, which is
memory-bound and which pruning does not shorten — per position and vocabulary entry, the LM head writes its
output (w), ``.float()`` copies it (w + 4; nothing when w = 4), the argmax reads it (4), the float64 copy (4 + 8)
and the float64 softmax (8 + 8) of the confidence rule; 2·w + 36 bytes (40 in half precision, 36 in float32).
Activations are left out: with many rows the FLOPs dominate, with few the weights do. The vision encoder reads its
weights once per call.

With LaViDa's prefix-KV cache a generation is one prefill over the P prompt positions (attention P²,
logits at its last position), then per step the G response rows only, attending to K = P + G keys
(the attention term becomes 4·G·K·d); pruning then shortens K alone, so the attention term is all it
can save, and the bound is far lower.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial

from transformers import PretrainedConfig

from redvtp_eval.models.llada_v import LladaVConfig


def head_dimension(text: PretrainedConfig) -> int:
    """As the attention layers read it: Llama's config states it, Qwen2's (Dream) leaves it to width / heads."""
    return getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads


def step_flops(text: PretrainedConfig, length: int, logit_positions: int, keys: int | None = None) -> dict[str, int]:
    """FLOPs of one forward of the language model over ``length`` query rows attending to ``keys`` positions
    (default: the same ``length``), by part, and their ``total``."""
    d, layers, head_dim = text.hidden_size, text.num_hidden_layers, head_dimension(text)
    d_kv = text.num_key_value_heads * head_dim
    d_attention = text.num_attention_heads * head_dim
    parts = {
        "projections": layers * 2 * length * d * (2 * d_attention + 2 * d_kv),
        "attention": layers * 4 * length * (length if keys is None else keys) * d_attention,
        "mlp": layers * 6 * length * d * text.intermediate_size,
        "lm_head": 2 * logit_positions * d * text.vocab_size,
    }
    return {**parts, "total": sum(parts.values())}


def denoising_step_flops(
    text: PretrainedConfig, length: int, gen_length: int, prefix_cache: bool, head_positions: float | None = None
) -> dict[str, int]:
    """One denoising step on a sequence of ``length`` positions (prompt + ``gen_length``): the whole sequence, or
    with the prefix cache the response rows against all ``length`` keys; the LM head on ``head_positions``
    (default: the response; the sampler runs it on the positions the step may commit)."""
    head = gen_length if head_positions is None else head_positions
    if prefix_cache:
        return step_flops(text, gen_length, head, keys=length)
    return step_flops(text, length, head)


def prefill_flops(text: PretrainedConfig, prompt_length: int) -> int:
    """The prefix cache's one pass over the prompt, with logits at its last position."""
    return step_flops(text, prompt_length, 1)["total"]


def probe_flops(text: PretrainedConfig, rows: int, length: int) -> int:
    """What the attention probe adds to the scoring step: ``rows`` query rows against all ``length`` keys."""
    return text.num_hidden_layers * 2 * rows * length * text.num_attention_heads * head_dimension(text)


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
    prefix_cache: bool = False,
    head_positions: float | None = None,
) -> int:
    """A whole generation: vision encoder, (``prefix_cache``: the prefill over the prompt,) ``prune_after_step``
    steps at ``length`` (the last with the probe's ``probe_rows``), the remaining steps at ``length_after``.
    Lengths count prompt + response; the unpruned baseline has ``length_after == length``. ``head_positions``:
    the LM head's positions per step on average (default: the whole response, ``logit_positions``)."""
    full = min(prune_after_step, steps)
    step = partial(
        denoising_step_flops,
        config.text,
        gen_length=logit_positions,
        prefix_cache=prefix_cache,
        head_positions=head_positions,
    )
    return (
        vision_flops(config, crops)
        + (prefill_flops(config.text, length - logit_positions) if prefix_cache else 0)
        + full * step(length)["total"]
        + (steps - full) * step(length_after)["total"]
        + (probe_flops(config.text, probe_rows, length) if probe_rows else 0)
    )


def forward_flops(text: PretrainedConfig, layers: list[tuple[int, int, int]], logits: int, probed: list[int]) -> int:
    """One forward as the sampler records it (:class:`~redvtp_eval.engine.sampler.ForwardShape`): per layer, its query
    rows attending to its keys (pruning inside the LM changes them from layer K on), the probe's rows against
    the same keys, then the LM head at ``logits`` positions. With every layer alike this is :func:`step_flops`."""
    one_layer = PretrainedConfig(**{**text.to_dict(), "num_hidden_layers": 1})
    one_layer.head_dim = head_dimension(text)
    total = 2 * logits * text.hidden_size * text.vocab_size
    for (rows, keys, _), probe_rows in zip(layers, probed):
        parts = step_flops(one_layer, rows, 0, keys=keys)
        total += parts["total"] + (probe_flops(one_layer, probe_rows, keys) if probe_rows else 0)
    return total


def recorded_flops(config: LladaVConfig, record) -> dict[str, float]:
    """A generation's FLOPs from its :class:`~redvtp_eval.engine.sampler.GenerationRecord`: vision encoder (its crops)
    and every forward of the language model, and its effective visual tokens."""
    forwards = sum(forward_flops(config.text, f.layers, f.logits, f.probed) for f in record.forwards)
    vision = vision_flops(config, record.crops)
    return {
        "vision": vision,
        "language_model": forwards,
        "total": vision + forwards,
        "effective_visual_tokens": record.effective_visual_tokens,
    }


def at_depth(record, depth: int):
    """A copy of the :class:`~redvtp_eval.engine.sampler.GenerationRecord` with every forward carried to ``depth``
    layers, each as the recorded ones: the same forwards at another size (the shapes depend on the sequence and the
    sampler's decisions, not on the width). Valid only where a forward's layers all have one shape, which pruning
    inside the LM breaks."""
    forwards = []
    for f in record.forwards:
        if len(set(f.layers)) > 1 or len(set(f.probed)) > 1:
            raise ValueError(
                f"a recorded {f.kind} forward has layers of different shapes (pruning inside the LM): it cannot be "
                f"carried to {depth} layers"
            )
        forwards.append(replace(f, layers=f.layers[:1] * depth, probed=f.probed[:1] * depth))
    return replace(record, forwards=forwards)


VOCABULARY_PASSES_BYTES = 32
"""Bytes per logit position and vocabulary entry of the sampler's work after the LM head, besides the head's own
output and its ``.float()`` copy: argmax (4), float64 copy (4 + 8), float64 softmax (8 + 8)."""


def vocabulary_bytes(text: PretrainedConfig, logit_positions: float, weight_bytes: int) -> float:
    """The memory-bound vocabulary-sized work at ``logit_positions`` positions (module docstring)."""
    head_output = weight_bytes + (weight_bytes + 4 if weight_bytes != 4 else 0)
    return logit_positions * text.vocab_size * (head_output + VOCABULARY_PASSES_BYTES)


def step_bytes(
    text: PretrainedConfig, logit_positions: float, keys: int, weight_bytes: int, layers: int | None = None
) -> dict[str, float]:
    """Bytes of one forward whose layers each read ``keys`` keys/values, by part, and their ``total``; ``layers``:
    how many layers ran (default: all)."""
    d, head_dim = text.hidden_size, head_dimension(text)
    d_kv, d_attention = text.num_key_value_heads * head_dim, text.num_attention_heads * head_dim
    count = text.num_hidden_layers if layers is None else layers
    per_layer = d * (2 * d_attention + 2 * d_kv) + 3 * d * text.intermediate_size
    parts = {
        "weights": weight_bytes * (count * per_layer + (d * text.vocab_size if logit_positions else 0)),
        "keys_values": count * 2 * weight_bytes * keys * d_kv,
        "vocabulary": vocabulary_bytes(text, logit_positions, weight_bytes),
    }
    return {**parts, "total": sum(parts.values())}


def vision_bytes(config: LladaVConfig, weight_bytes: int) -> int:
    """The vision tower's and projector's weights, read once per call."""
    vision, d = config.vision, config.text.hidden_size
    c, m = vision.hidden_size, vision.intermediate_size
    embedding = vision.num_channels * vision.patch_size**2 * c
    return weight_bytes * (
        embedding + vision.num_hidden_layers * (4 * c * c + 2 * c * m) + config.mm_hidden_size * d + d * d
    )


def forward_bytes(text: PretrainedConfig, layers: list[tuple[int, int, int]], logits: int, weight_bytes: int) -> float:
    """One recorded forward (:class:`~redvtp_eval.engine.sampler.ForwardShape`): each layer's keys, the head."""
    per_layer = step_bytes(text, 0, 0, weight_bytes, layers=1)["weights"]
    kv = sum(step_bytes(text, 0, keys, weight_bytes, layers=1)["keys_values"] for _, keys, _ in layers)
    return len(layers) * per_layer + kv + step_bytes(text, logits, 0, weight_bytes, layers=0)["total"]


@dataclass(frozen=True)
class Roofline:
    """A machine's peak dense FLOP/s in the model's dtype and its memory bandwidth (bytes/s): a forward takes at
    least FLOPs / peak + bytes / bandwidth (the two are added, not overlapped: a bound on neither alone)."""

    flops_per_s: float
    bytes_per_s: float

    def seconds(self, flops: float, moved: float) -> float:
        return flops / self.flops_per_s + moved / self.bytes_per_s


def recorded_seconds(config: LladaVConfig, record, roofline: Roofline, weight_bytes: int) -> float:
    """A generation's roofline time from its record: vision encoder, then every forward of the language model."""
    crops = record.crops
    total = roofline.seconds(vision_flops(config, crops), vision_bytes(config, weight_bytes) if crops else 0)
    for f in record.forwards:
        flops = forward_flops(config.text, f.layers, f.logits, f.probed)
        total += roofline.seconds(flops, forward_bytes(config.text, f.layers, f.logits, weight_bytes))
    return total
