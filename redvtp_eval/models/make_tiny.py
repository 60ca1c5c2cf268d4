"""Write a tiny LLaDA-V checkpoint: same layout, tokens and image pipeline as the real one, random weights.

    python -m redvtp_eval.models.make_tiny checkpoints/tiny-llada-v [--seed 0]

Where it sits: it is the project's embedded model and the vehicle of every test. ``load_llada_v`` reads
it through the same code path as ``GSAI-ML/LLaDA-V``: config.json, safetensors with the official
parameter names, and tokenizer files with the LLaDA special tokens and chat template. Only the sizes
differ: a byte-level BPE tokenizer (256 bytes, a few merges, the special tokens), a 2-layer language model and a
2-layer SigLIP tower that keeps the real crop size and patch size, so visual token counts are real.
Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from redvtp_eval.models.llada_v import LladaVConfig, LladaVNetwork
from redvtp_eval.models.prompt import SYSTEM_PROMPT

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

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}"
    "{% endfor %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
)
"""Same rendering as LLaDA-V's template: BOS before the first turn, the assistant header always appended."""

CROP = 384
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
    "vision_config": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": CROP,
        "patch_size": 14,
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": 1e-6,
    },
}


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


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE (256 bytes + merges learned offline from the prompt scaffolding) with LLaDA's special
    tokens and chat template. Deterministic: the same files every time."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=256 + MERGES, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    backend.train_from_iterator(MERGE_CORPUS, trainer=trainer)
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def save_checkpoint(network: LladaVNetwork, raw_config: dict, out_dir: str | Path) -> Path:
    """Write a network in the layout ``load_llada_v`` reads: config.json, model.safetensors, tokenizer files."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {key: tensor.detach().contiguous() for key, tensor in network.state_dict().items()}
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(raw_config, indent=2) + "\n")
    build_tokenizer().save_pretrained(out)
    return out


def make_tiny(out_dir: str | Path, seed: int = 0) -> Path:
    """Random weights with sharpened attention; same seed, same bytes."""
    torch.manual_seed(seed)
    network = LladaVNetwork(LladaVConfig.from_dict(TINY_CONFIG, "sdpa"))
    with torch.no_grad():
        for layer in network.model.layers:
            layer.self_attn.q_proj.weight.mul_(ATTENTION_GAIN)
            layer.self_attn.k_proj.weight.mul_(ATTENTION_GAIN)
    return save_checkpoint(network, {**TINY_CONFIG, "redvtp_eval_tiny_seed": seed}, out_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"wrote {make_tiny(args.out_dir, args.seed)}")


if __name__ == "__main__":
    main()
