"""Write a tiny checkpoint of a model family: same layout, tokens and image pipeline as the real one, random weights.

    python -m redvtp_eval.models.make_tiny checkpoints/tiny-llada-v [--seed 0]
    python -m redvtp_eval.models.make_tiny checkpoints/tiny-lavida-llada --family lavida_llada
    python -m redvtp_eval.models.make_tiny checkpoints/tiny-lavida-dream --family lavida_dream

Where it sits: it is the project's embedded model and the vehicle of every test. ``load_llada_v`` reads
it through the same code path as ``GSAI-ML/LLaDA-V``: config.json, safetensors with the official
parameter names, and tokenizer files with the LLaDA special tokens and chat template. Only the sizes
differ: a byte-level BPE tokenizer (256 bytes, a few merges, the special tokens), a 2-layer language model and a
2-layer SigLIP tower that keeps the real crop size and patch size, so visual token counts are real.
Nothing is downloaded.

The LaViDa families go through the same generator: LaViDa-LLaDA's config.json has the OLMo-style LLaDA
fields and its weights the OLMo names (written through the loader's own key map); LaViDa-Dream's has
Qwen2 fields (GQA, q/k/v biases) and Dream's special tokens. Their loaders read them exactly as the real ones.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from redvtp_eval.models import lavida
from redvtp_eval.models.checkpoint import IDENTITY, KeyMap
from redvtp_eval.models.llada_v import LladaV, LladaVConfig, LladaVNetwork
from redvtp_eval.models.prompt import CHATML_CHAT_TEMPLATE, LLADA_CHAT_TEMPLATE, SYSTEM_PROMPT

SPECIAL_TOKENS = (
    "<|startoftext|>",
    "<|endoftext|>",
    "<|mdm_mask|>",
    "<role>",
    "</role>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
)
"""LLaDA's special tokens, in the order of their ids in the real tokenizer (126080 … 126348)."""
DREAM_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|beginoftext|>", "<|mask|>")
"""Dream's special tokens used here (ids 151643 … 151666 in the real tokenizer)."""

CROP = 384
TINY_VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": CROP,
    "patch_size": 14,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
}
ATTENTION_GAIN = 4.0
"""Scale of the language model's query/key weights over PyTorch's default init. At gain 1 attention is
nearly uniform and every masked position predicts the same token; at 4 predictions depend on position
and on which visual tokens are present, which is what the tests need to mean something."""
TINY_CONFIG = {
    "architectures": ["LlavaLLaDAModelLM"],
    "model_type": "llava_llada",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 16384,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "hidden_act": "silu",
    "attention_bias": False,
    "tie_word_embeddings": False,
    "vocab_size": 512,
    "mm_projector_type": "mlp2x_gelu",
    "mm_hidden_size": 32,
    "mm_vision_select_layer": -2,
    "mm_patch_merge_type": "spatial_unpad",
    "image_aspect_ratio": "anyres_max_4",
    "image_grid_pinpoints": [[CROP * i, CROP * j] for i in range(1, 7) for j in range(1, 7)],
    "tokenizer_model_max_length": 16384,
    "vision_config": TINY_VISION,
}
LAVIDA_VISION_FIELDS = {
    "mm_projector_type": "mlp2x_gelu",
    "mm_hidden_size": 32,
    "mm_patch_merge_type": "spatial_unpad",
    "mm_spatial_pool_mode": "bilinear",
    "mm_pooler_ratio": 2,
    "mm_newline_position": "grid",
    "image_aspect_ratio": "anyres",
    "image_grid_pinpoints": [list(pair) for pair in lavida.PINPOINTS],
    "vision_config": TINY_VISION,
}
TINY_LAVIDA_LLADA = {
    "architectures": ["LlavaLladaForMaskedDiffusion"],
    "model_type": "llava_llada",
    "d_model": 64,
    "n_heads": 4,
    "n_kv_heads": 4,
    "n_layers": 2,
    "mlp_hidden_size": 128,
    "rms_norm_eps": 1e-5,
    "rope": True,
    "rope_theta": 500000.0,
    "max_sequence_length": 4096,
    "block_type": "llama",
    "activation_type": "silu",
    "include_bias": False,
    "weight_tying": False,
    "vocab_size": 512,
    "embedding_size": 512,
    "mask_token_id": 126336,
    **LAVIDA_VISION_FIELDS,
}
"""LaViDa-LLaDA in miniature: OLMo-style LLaDA fields plus the LLaVA fields of LaViDa's stage-2 scripts."""
TINY_LAVIDA_DREAM = {
    "architectures": ["LlavaDreamForMaskedDiffusion"],
    "model_type": "llava_dream",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "vocab_size": 512,
    "mask_token_id": 151666,
    **LAVIDA_VISION_FIELDS,
}
"""LaViDa-Dream in miniature: Qwen2-shaped (2 KV heads for 4 query heads, q/k/v biases)."""


MERGE_CORPUS = (
    SYSTEM_PROMPT,
    "system user assistant",
    "What is written in the box? Which number is in the box? What color is the box? Which color is the box?",
    *["the blue box, the pink box, the gold box, the teal box, the lime box, the gray box"] * 4,
    *["blue\npink\ngold\nteal\nlime\ngray"] * 4,
    "Answer the question using a single word or phrase.",
    "Answer with the option's letter from the given choices directly.",
)
"""Text the byte-level BPE learns its merges from: the prompt scaffolding, so prompts stay short. No digits,
so numbers remain one token per digit."""
MERGES = 160


def build_tokenizer(
    special_tokens: tuple[str, ...] = SPECIAL_TOKENS,
    bos_token: str = "<|startoftext|>",
    chat_template: str = LLADA_CHAT_TEMPLATE,
) -> PreTrainedTokenizerFast:
    """Byte-level BPE (256 bytes + merges learned offline from the prompt scaffolding) with a family's special
    tokens and chat template (LLaDA's by default). Deterministic: the same files every time."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=256 + MERGES, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    backend.train_from_iterator(MERGE_CORPUS, trainer=trainer)
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in special_tokens])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos_token,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def save_checkpoint(
    network: LladaVNetwork,
    raw_config: dict,
    out_dir: str | Path,
    tokenizer: PreTrainedTokenizerFast | None = None,
    key_map: KeyMap = IDENTITY,
) -> Path:
    """Write a network in the layout its loader reads: config.json, model.safetensors (parameter names as the
    family's checkpoints spell them), tokenizer files (LLaDA's by default)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {key_map.to_checkpoint(key): tensor.detach().contiguous() for key, tensor in network.state_dict().items()}
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(raw_config, indent=2) + "\n")
    (tokenizer or build_tokenizer()).save_pretrained(out)
    return out


@dataclass(frozen=True)
class TinyFamily:
    config: dict
    network_config: Callable[[dict, str], LladaVConfig]
    """The family loader's own reader: (config.json, attn_implementation) → the network's config."""
    runtime: Callable[[LladaVNetwork, PreTrainedTokenizerFast], LladaV]
    """The family loader's runtime around a network and its tokenizer (the speed benchmark builds one)."""
    tokenizer: Callable[[], PreTrainedTokenizerFast]
    key_map: KeyMap = IDENTITY
    text_fields: dict[str, str] = field(default_factory=dict)
    """Text dimensions whose config.json name differs from the Llama name (LaViDa-LLaDA's OLMo fields)."""

    def text_field(self, name: str) -> str:
        """Where the Llama-named dimension ``name`` lives in this family's config.json."""
        return self.text_fields.get(name, name)


TINY = {
    "llada_v": TinyFamily(TINY_CONFIG, LladaVConfig.from_dict, LladaV, build_tokenizer),
    "lavida_llada": TinyFamily(
        TINY_LAVIDA_LLADA,
        partial(lavida.lavida_config, lavida.LLADA),
        partial(lavida.Lavida, family=lavida.LLADA),
        build_tokenizer,
        lavida.OLMO_KEY_MAP,
        lavida.OLMO_TEXT_FIELDS,
    ),
    "lavida_dream": TinyFamily(
        TINY_LAVIDA_DREAM,
        partial(lavida.lavida_config, lavida.DREAM),
        partial(lavida.Lavida, family=lavida.DREAM),
        lambda: build_tokenizer(DREAM_SPECIAL_TOKENS, "<|beginoftext|>", CHATML_CHAT_TEMPLATE),
    ),
}
"""Tiny checkpoints by model family (the names of ``configs/model/*.yaml``'s ``family``)."""


def make_tiny(out_dir: str | Path, seed: int = 0, family: str = "llada_v", layers: int | None = None) -> Path:
    """Random weights with sharpened attention; same seed, same bytes. ``layers`` overrides the text depth.

    The LM head's rows past the tokenizer (ids no tokenizer can write, as the real checkpoints' padded
    vocabulary) are zero: never trained, they lose every argmax to the random rows, as untrained rows do in a
    real model — where a loader keeps them (LaViDa-LLaDA), they stay generable but are not generated."""
    if family not in TINY:
        raise ValueError(f"no tiny checkpoint for family {family!r}; choose one of {', '.join(TINY)}")
    spec = TINY[family]
    raw = {**spec.config, "redvtp_eval_tiny_seed": seed}
    if layers is not None:
        raw[spec.text_field("num_hidden_layers")] = layers
    torch.manual_seed(seed)
    network = LladaVNetwork(spec.network_config(raw, "sdpa"))
    tokenizer = spec.tokenizer()
    with torch.no_grad():
        for layer in network.model.layers:
            layer.self_attn.q_proj.weight.mul_(ATTENTION_GAIN)
            layer.self_attn.k_proj.weight.mul_(ATTENTION_GAIN)
        network.lm_head.weight[len(tokenizer) :] = 0
    return save_checkpoint(network, raw, out_dir, tokenizer, spec.key_map)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--family", default="llada_v", choices=list(TINY))
    args = parser.parse_args()
    print(f"wrote {make_tiny(args.out_dir, args.seed, args.family)}")


if __name__ == "__main__":
    main()
