"""LaViDa (``jacklishufan/lavida-llada-v1.0-instruct``, ``jacklishufan/lavida-dream-v1.0-instruct``) at inference.

Where it sits: ``load_lavida_llada`` / ``load_lavida_dream`` → :class:`Lavida`, which the sampler drives
through the same :class:`~redvtp_eval.models.base.DiffusionVLM` methods as LLaDA-V.

LaViDa is LLaDA-V's architecture with other settings, so it is the same network class
(:class:`~redvtp_eval.models.llada_v.LladaVNetwork`) configured differently:

* text stack: LaViDa-LLaDA is the LLaDA-8B of LLaDA-V, stored under the original OLMo-style names
  (``model.transformer.blocks.{i}.q_proj`` …); :data:`OLMO_KEY_MAP` renames them onto the same modules.
  LaViDa-Dream is Dream-7B, Qwen2-shaped (GQA, q/k/v biases), stored under HF names already.
* vision: the same SigLIP so400m tower (26 layers, no head), ``mlp2x_gelu`` and ``image_newline``; every
  AnyRes crop's 27×27 map is pooled bilinearly to 14×14; plain ``anyres`` over five pinpoints, un-padded,
  no shrinking (1700×2200 → 840 visual tokens).
* prompts: the ``llada`` / ``dream`` conversation templates (LLaDA-V's system prompt, no think suffix).
* outputs: no logit suppression and no stop string; the answer is decoded as the official wrapper does
  (special tokens skipped, leading ``!`` stripped, Dream also drops ``<|im_end|>\\n``, then stripped).
* Dream is AR-initialised: position i is predicted by the output at i − 1 (``shifted_logits``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import LlamaConfig, PretrainedConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2Tokenizer

from redvtp_eval.models.checkpoint import CheckpointError, KeyMap, load_weights, read_config, resolve_checkpoint
from redvtp_eval.models.llada_v import (
    TEXT_FIELDS,
    LladaV,
    LladaVConfig,
    build_network,
    check_attention,
    head_follows_resize,
    parse_dtype,
)
from redvtp_eval.models.prompt import CHATML_CHAT_TEMPLATE, LLADA_CHAT_TEMPLATE, render_chat

LLADA_HUB_ID = "jacklishufan/lavida-llada-v1.0-instruct"
DREAM_HUB_ID = "jacklishufan/lavida-dream-v1.0-instruct"

PINPOINTS = [(384, 768), (768, 384), (768, 768), (1152, 384), (384, 1152)]
"""LaViDa's stage-2 ``image_grid_pinpoints``, used when config.json does not list them."""
CROP_POOL_STRIDE = 2
"""``get_2dPool``'s default stride, applied to every crop (``ALWASY_DO_2DPOOL``)."""

OLMO_KEY_MAP = KeyMap(
    (
        ("model.transformer.wte.weight", "model.embed_tokens.weight"),
        ("model.transformer.ln_f.weight", "model.norm.weight"),
        ("model.transformer.ff_out.weight", "lm_head.weight"),
        ("model.transformer.blocks.{i}.q_proj.weight", "model.layers.{i}.self_attn.q_proj.weight"),
        ("model.transformer.blocks.{i}.k_proj.weight", "model.layers.{i}.self_attn.k_proj.weight"),
        ("model.transformer.blocks.{i}.v_proj.weight", "model.layers.{i}.self_attn.v_proj.weight"),
        ("model.transformer.blocks.{i}.attn_out.weight", "model.layers.{i}.self_attn.o_proj.weight"),
        ("model.transformer.blocks.{i}.ff_proj.weight", "model.layers.{i}.mlp.gate_proj.weight"),
        ("model.transformer.blocks.{i}.up_proj.weight", "model.layers.{i}.mlp.up_proj.weight"),
        ("model.transformer.blocks.{i}.ff_out.weight", "model.layers.{i}.mlp.down_proj.weight"),
        ("model.transformer.blocks.{i}.attn_norm.weight", "model.layers.{i}.input_layernorm.weight"),
        ("model.transformer.blocks.{i}.ff_norm.weight", "model.layers.{i}.post_attention_layernorm.weight"),
    )
)
"""The original LLaDA (OLMo) parameter names → LLaDA-V's HF-Llama names (LLaDA-V's ``rename_checkpoint.py``)."""

OLMO_REQUIRED = {"block_type": "llama", "weight_tying": False, "include_bias": False, "rope": True}
"""OLMo config values under which the block is exactly a bias-free Llama layer with an untied head."""


def llada_text_config(raw: dict) -> LlamaConfig:
    """The OLMo-style LLaDA fields of a LaViDa-LLaDA config.json as the Llama config of the same network."""
    for field, value in OLMO_REQUIRED.items():
        if raw.get(field, value) != value:
            raise CheckpointError(f"config.json has {field}={raw[field]!r}; LaViDa-LLaDA needs {field}={value!r}")
    if raw.get("include_qkv_bias"):
        raise CheckpointError("config.json has include_qkv_bias=true; LaViDa-LLaDA has no attention biases")
    return LlamaConfig(
        vocab_size=raw.get("embedding_size") or raw["vocab_size"],
        hidden_size=raw["d_model"],
        intermediate_size=raw["mlp_hidden_size"],
        num_hidden_layers=raw["n_layers"],
        num_attention_heads=raw["n_heads"],
        num_key_value_heads=raw.get("n_kv_heads") or raw["n_heads"],
        max_position_embeddings=raw.get("max_sequence_length", 4096),
        rms_norm_eps=raw.get("rms_norm_eps", 1e-5),
        rope_theta=raw.get("rope_theta", 500000.0),
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=False,
    )


OLMO_TEXT_FIELDS = {
    "hidden_size": "d_model",
    "intermediate_size": "mlp_hidden_size",
    "num_hidden_layers": "n_layers",
    "num_attention_heads": "n_heads",
    "num_key_value_heads": "n_kv_heads",
    "vocab_size": "embedding_size",
}
"""Llama dimension → the OLMo field :func:`llada_text_config` reads it from (``embedding_size`` wins over
``vocab_size``); the tiny-checkpoint generator and the speed benchmark write dimensions through it."""


def dream_text_config(raw: dict) -> Qwen2Config:
    """Dream's config fields as the Qwen2 config of the same network (full attention, untied head)."""
    if raw.get("tie_word_embeddings"):
        raise CheckpointError("config.json has tie_word_embeddings=true; LaViDa-Dream's head is untied")
    return Qwen2Config(
        **{key: raw[key] for key in TEXT_FIELDS if key in raw}, tie_word_embeddings=False, use_sliding_window=False
    )


@dataclass(frozen=True)
class LavidaFamily:
    """What tells LaViDa-LLaDA and LaViDa-Dream apart at load and inference time."""

    name: str
    hub_id: str
    text_config: Callable[[dict], PretrainedConfig]
    key_map: KeyMap
    mask_token: str
    chat_template: str
    dropped_text: tuple[str, ...]
    shifted_logits: bool
    tokenizer_class: type
    """LLaDA's tokenizer ships as tokenizer.json; Dream's is Qwen2's BPE, which may ship as vocab.json + merges.txt."""
    untied_by_default: bool
    """What the official config class assumes when config.json has no ``tie_word_embeddings``: LLaDA's OLMo
    ``LLaDAConfig`` keeps PretrainedConfig's tied default (so the loader's resize leaves its 126464-row head),
    Dream's config class says untied."""


LLADA = LavidaFamily(
    name="LaViDa-LLaDA",
    hub_id=LLADA_HUB_ID,
    text_config=llada_text_config,
    key_map=OLMO_KEY_MAP,
    mask_token="<|mdm_mask|>",
    chat_template=LLADA_CHAT_TEMPLATE,
    dropped_text=(),
    shifted_logits=False,
    tokenizer_class=PreTrainedTokenizerFast,
    untied_by_default=False,
)
DREAM = LavidaFamily(
    name="LaViDa-Dream",
    hub_id=DREAM_HUB_ID,
    text_config=dream_text_config,
    key_map=KeyMap(()),
    mask_token="<|mask|>",
    chat_template=CHATML_CHAT_TEMPLATE,
    dropped_text=("<|im_end|>\n",),
    shifted_logits=True,
    tokenizer_class=Qwen2Tokenizer,
    untied_by_default=True,
)


def lavida_config(
    family: LavidaFamily, raw: dict, attn_implementation: str, checkpoint: Path | None = None
) -> LladaVConfig:
    pool_mode = raw.get("mm_spatial_pool_mode", "bilinear")
    if pool_mode != "bilinear":
        raise CheckpointError(f"mm_spatial_pool_mode {pool_mode!r}: LaViDa's instruct checkpoints pool bilinearly")
    aspect = raw.get("image_aspect_ratio", "anyres")
    if aspect != "anyres":
        raise CheckpointError(
            f"image_aspect_ratio {aspect!r}: only LaViDa's plain 'anyres' tiling is implemented for one-image prompts"
        )
    text = family.text_config(raw)
    return LladaVConfig.around(
        text, raw, attn_implementation, "anyres", PINPOINTS, CROP_POOL_STRIDE, checkpoint=checkpoint
    )


class Lavida(LladaV):
    """LaViDa at inference: LLaDA-V's runtime with LaViDa's prompt, pooling, decoding and logit alignment."""

    suppressed_tokens = ()
    autocast_dtype = None
    """LaViDa's generate runs without autocast, in the weights' bfloat16."""

    def __init__(self, network, tokenizer, family: LavidaFamily) -> None:
        self.family = family
        self.mask_token = family.mask_token
        self.shifted_logits = family.shifted_logits
        super().__init__(network, tokenizer)

    def prompt_ids(self, question: str, num_images: int, think_mode: str | None = None) -> list[int]:
        if think_mode is not None:
            raise ValueError(f"{self.family.name} has no think mode; got think_mode={think_mode!r}")
        return super().prompt_ids(question, num_images)

    def render(self, user: str) -> str:
        return render_chat(self.tokenizer, user, chat_template=self.family.chat_template)

    def decode(self, token_ids: list[int]) -> str:
        """As the official LaViDa wrappers: special tokens skipped, leading '!' stripped, Dream's
        ``<|im_end|>\\n`` dropped, whitespace stripped."""
        text = self.tokenizer.decode(token_ids, skip_special_tokens=True).lstrip("!")
        for dropped in self.family.dropped_text:
            text = text.replace(dropped, "")
        return text.strip()


def load_lavida(
    family: LavidaFamily,
    path: str | Path,
    dtype: str = "bfloat16",
    device: str = "cpu",
    attn_implementation: str = "sdpa",
) -> Lavida:
    check_attention(attn_implementation)
    directory = resolve_checkpoint(path, family.hub_id)
    raw = read_config(directory)
    config = lavida_config(family, raw, attn_implementation, directory)
    torch_dtype, torch_device = parse_dtype(dtype), torch.device(device)
    network = build_network(config, torch_dtype, torch_device)
    load_weights(network, directory, torch_dtype, torch_device, family.key_map)
    tokenizer = family.tokenizer_class.from_pretrained(directory)
    network.truncate_vocab(len(tokenizer), head=head_follows_resize(raw, family.untied_by_default))
    return Lavida(network, tokenizer, family)


def load_lavida_llada(path: str | Path = LLADA_HUB_ID, **options) -> Lavida:
    """LaViDa-LLaDA from a hub id in the local cache or a directory (options: dtype, device, attn_implementation)."""
    return load_lavida(LLADA, path, **options)


def load_lavida_dream(path: str | Path = DREAM_HUB_ID, **options) -> Lavida:
    """LaViDa-Dream from a hub id in the local cache or a directory (options: dtype, device, attn_implementation)."""
    return load_lavida(DREAM, path, **options)
