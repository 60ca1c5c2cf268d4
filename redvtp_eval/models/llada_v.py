"""LLaDA-V (``GSAI-ML/LLaDA-V``): the network with the checkpoint's parameter names, and its runtime.

Where it sits: ``load_llada_v`` → :class:`LladaV`, which the sampler drives through the
:class:`~redvtp_eval.models.base.DiffusionVLM` methods.

The network is LLaVA-OneVision-shaped. Language model: LLaDA-8B in Llama form, built from transformers'
``LlamaDecoderLayer`` with the causal flag off (bidirectional attention, no mask). Vision: a SigLIP
so400m-patch14-384 tower stored already truncated to 26 layers; features are taken before
``post_layernorm``. Then the ``mlp2x_gelu`` projector, AnyRes tiling (``anyres_max_4``) and
``image_newline`` at every row end. The real checkpoint's ``config.json`` has no vision config: the
official builder reads the tower's own config from ``mm_vision_tower`` (a hub id or a local folder) and
deletes its last layer. :func:`tower_config` does the same for a local folder and takes the so400m values
for a hub id; the tiny checkpoints that ``make_tiny`` writes carry a ``vision_config`` entry instead (the
tower as stored, already truncated), and all go through the same code below.

LaViDa (:mod:`redvtp_eval.models.lavida`) is the same network and runtime with other settings: a
Qwen2-shaped text stack for its Dream backbone (:data:`TEXT_STACKS`), per-crop pooling
(``crop_pool_stride``), plain ``anyres``, and its own prompt and decoding.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor, nn
from transformers import (
    LlamaConfig,
    PretrainedConfig,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    SiglipVisionConfig,
    SiglipVisionModel,
)
from transformers.initialization import no_init_weights
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm, LlamaRotaryEmbedding
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer, Qwen2RMSNorm, Qwen2RotaryEmbedding
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from redvtp_eval.models import anyres
from redvtp_eval.models.attention import PROBED, AttentionProbe
from redvtp_eval.models.base import LayerHook, Prompt
from redvtp_eval.models.checkpoint import CheckpointError, load_weights, read_config, resolve_checkpoint
from redvtp_eval.models.prefix_cache import PrefixCache
from redvtp_eval.models.prompt import IMAGE_PLACEHOLDER, render_chat, splice_image_tokens, user_message
from redvtp_eval.models.timing import Timer

HUB_ID = "GSAI-ML/LLaDA-V"

SIGLIP_SO400M_26_LAYERS = {
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 26,
    "num_attention_heads": 16,
    "image_size": 384,
    "patch_size": 14,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
}
"""SigLIP so400m-patch14-384's config, with the last of its 27 layers already removed: the tower of a
``mm_vision_tower`` hub id (``google/siglip-so400m-patch14-384``, ``google/siglip2-so400m-patch14-384``)."""

SIGLIP_VISION_FIELDS = (*SIGLIP_SO400M_26_LAYERS, "num_channels", "attention_dropout")
"""The fields of a tower's own config.json that shape the network; the rest (model_type, dtype…) are not read."""

TRAINING_PINPOINTS = "(1x1),...,(6x6)"
"""The grid that LLaDA-V's training scripts pass; used when a config.json does not list its pinpoints."""

TEXT_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "hidden_act",
)

MASK_TOKEN = "<|mdm_mask|>"
SUPPRESSED_TOKENS = ("<|endoftext|>", "<|startoftext|>", "<|start_header_id|>", "<|end_header_id|>")
"""Tokens whose logits the official sampler sets to −inf at masked positions (ids 126081, 126080, 126346, 126347)."""


def _tower_folder(name: str, checkpoint: Path | None) -> Path | None:
    """``mm_vision_tower`` as a local folder holding a config.json: a path as written (absolute, ``~``, or
    relative to the working directory, as the official builder opens it), or relative to the checkpoint
    folder (a tower shipped next to the weights), checkpoint folder first. None: a hub id."""
    path = Path(name).expanduser()
    candidates = [path] if path.is_absolute() else [*([checkpoint / path] if checkpoint else []), path]
    return next((folder for folder in candidates if (folder / "config.json").is_file()), None)


def tower_config(raw: dict, checkpoint: Path | None = None) -> dict:
    """The SigLIP config of the tower as the network holds it (its last layer removed, as the official
    builder does after loading): config.json's ``vision_config`` if any (stored truncated); else the
    config.json of the local folder ``mm_vision_tower`` names (a ``SiglipConfig`` or a vision-only one)
    with one layer fewer; else, for a hub id or no tower named, the so400m values."""
    if "vision_config" in raw:
        return raw["vision_config"]
    name = raw.get("mm_vision_tower")
    folder = _tower_folder(name, checkpoint) if name else None
    if folder is None:
        return SIGLIP_SO400M_26_LAYERS
    stored = json.loads((folder / "config.json").read_text())
    stored = stored.get("vision_config", stored)
    tower = {key: stored[key] for key in SIGLIP_VISION_FIELDS if key in stored}
    default_layers = SiglipVisionConfig().num_hidden_layers
    tower["num_hidden_layers"] = tower.get("num_hidden_layers", default_layers) - 1
    if tower["num_hidden_layers"] < 1:
        raise CheckpointError(f"the vision tower of {folder} has no layer left once its last is removed")
    return tower


@dataclass
class LladaVConfig:
    """A LLaVA-shaped diffusion VLM: a text stack (Llama- or Qwen2-shaped), SigLIP, projector and AnyRes layout."""

    text: PretrainedConfig
    vision: SiglipVisionConfig
    mm_hidden_size: int
    image_aspect_ratio: str
    image_grid_pinpoints: list[tuple[int, int]]
    mm_patch_merge_type: str
    max_prompt_tokens: int | None
    crop_pool_stride: int | None = None
    """LaViDa pools every AnyRes crop's feature map bilinearly by this stride (27×27 → 14×14); None: no pooling."""

    @classmethod
    def from_dict(cls, raw: dict, attn_implementation: str, checkpoint: Path | None = None) -> LladaVConfig:
        """From a checkpoint's config.json; ``checkpoint`` (its folder) resolves a relative ``mm_vision_tower``."""
        text = LlamaConfig(
            **{key: raw[key] for key in TEXT_FIELDS if key in raw},
            attention_bias=False,
            mlp_bias=False,
            tie_word_embeddings=False,
        )
        return cls.around(text, raw, attn_implementation, "anyres_max_4", TRAINING_PINPOINTS, checkpoint=checkpoint)

    @classmethod
    def around(
        cls,
        text: PretrainedConfig,
        raw: dict,
        attn_implementation: str,
        image_aspect_ratio: str,
        pinpoints: str | list,
        crop_pool_stride: int | None = None,
        checkpoint: Path | None = None,
    ) -> LladaVConfig:
        """The vision side read from a LLaVA-style ``raw`` config around a given text config; the defaults are
        the family's training values, used when config.json does not state them."""
        if raw.get("mm_projector_type", "mlp2x_gelu") != "mlp2x_gelu":
            raise CheckpointError(f"mm_projector_type {raw['mm_projector_type']!r} is not the expected mlp2x_gelu")
        text._attn_implementation = PROBED.format(attn_implementation)
        vision = SiglipVisionConfig(**tower_config(raw, checkpoint), vision_use_head=False)
        # The official SigLIP attention is a hand-written matmul + softmax: eager, whatever the LM uses.
        vision._attn_implementation = "eager"
        return cls(
            text=text,
            vision=vision,
            mm_hidden_size=raw.get("mm_hidden_size", vision.hidden_size),
            image_aspect_ratio=raw.get("image_aspect_ratio", image_aspect_ratio),
            image_grid_pinpoints=anyres.parse_pinpoints(raw.get("image_grid_pinpoints", pinpoints), vision.image_size),
            mm_patch_merge_type=raw.get("mm_patch_merge_type", "spatial_unpad"),
            max_prompt_tokens=raw.get("tokenizer_model_max_length"),
            crop_pool_stride=crop_pool_stride,
        )


class SiglipTower(nn.Module):
    """Holds the SigLIP model under ``vision_tower.vision_model`` as the official wrapper does."""

    def __init__(self, config: SiglipVisionConfig) -> None:
        super().__init__()
        self.vision_tower = nn.ModuleDict({"vision_model": SiglipVisionModel(config)})

    def forward(self, pixel_values: Tensor) -> Tensor:
        """(crops, 3, S, S) → (crops, patches, C): the last kept layer's output, before ``post_layernorm``."""
        return self.encode(pixel_values)[0]

    def encode(self, pixel_values: Tensor, attention_layer: int | None = None) -> tuple[Tensor, Tensor | None]:
        """:meth:`forward`, and with ``attention_layer`` (0-based, negative from the end) the (crops, patches)
        float32 attention each patch receives at that layer, averaged over heads and query patches.

        The tower's attention is eager (softmax probabilities are materialised anyway), so this only averages the
        chosen layer's map on its way out: one (heads · patches) mean per patch, no extra forward."""
        siglip = self.vision_tower["vision_model"]
        received: list[Tensor] = []
        handle = None
        if attention_layer is not None:
            layers = siglip.encoder.layers
            if not -len(layers) <= attention_layer < len(layers):
                raise ValueError(f"tower layer {attention_layer} is out of range: the tower holds {len(layers)} layers")

            def record(module, args, output) -> None:
                if output[1] is None:
                    raise RuntimeError("the vision tower returned no attention map: its attention must be eager")
                received.append(output[1].mean(dim=(1, 2), dtype=torch.float32))

            handle = layers[attention_layer].self_attn.register_forward_hook(record)
        try:
            features = siglip.encoder(inputs_embeds=siglip.embeddings(pixel_values)).last_hidden_state
        finally:
            if handle is not None:
                handle.remove()
        return features, (received[0] if received else None)


TEXT_STACKS = {
    "llama": (LlamaDecoderLayer, LlamaRMSNorm, LlamaRotaryEmbedding),
    "qwen2": (Qwen2DecoderLayer, Qwen2RMSNorm, Qwen2RotaryEmbedding),
}
"""Decoder layer, norm and RoPE per text config type: LLaDA is Llama-shaped, Dream is Qwen2-shaped (GQA,
q/k/v biases). Both keep the HF parameter names, so one backbone module serves every family."""


class LladaVBackbone(nn.Module):
    def __init__(self, config: LladaVConfig) -> None:
        super().__init__()
        text = config.text
        layer_class, norm_class, rotary_class = TEXT_STACKS[text.model_type]
        self.embed_tokens = nn.Embedding(text.vocab_size, text.hidden_size)
        self.layers = nn.ModuleList(layer_class(text, index) for index in range(text.num_hidden_layers))
        for layer in self.layers:
            layer.self_attn.is_causal = False
        self.norm = norm_class(text.hidden_size, eps=text.rms_norm_eps)
        self.rotary_emb = rotary_class(text)
        self.vision_tower = SiglipTower(config.vision)
        self.mm_projector = nn.Sequential(
            nn.Linear(config.mm_hidden_size, text.hidden_size), nn.GELU(), nn.Linear(text.hidden_size, text.hidden_size)
        )
        self.image_newline = nn.Parameter(torch.randn(text.hidden_size) / text.hidden_size**0.5)


class LladaVNetwork(nn.Module):
    """Parameter names equal the checkpoint's: ``model.layers.{i}.self_attn.*``, ``model.mm_projector.*``…"""

    def __init__(self, config: LladaVConfig) -> None:
        super().__init__()
        self.config = config
        self.model = LladaVBackbone(config)
        self.lm_head = nn.Linear(config.text.hidden_size, config.text.vocab_size, bias=False)

    def encode_crops(self, pixel_values: Tensor) -> Tensor:
        return self.model.mm_projector(self.model.vision_tower(pixel_values))

    def encode_crops_with_attention(self, pixel_values: Tensor, tower_layer: int) -> tuple[Tensor, Tensor]:
        """:meth:`encode_crops`, and the (crops, patches) attention each patch received at that tower layer."""
        features, received = self.model.vision_tower.encode(pixel_values, tower_layer)
        return self.model.mm_projector(features), received

    def hidden_states(
        self, embeds: Tensor, position_ids: Tensor, probe: AttentionProbe | None, cache: PrefixCache | None = None
    ) -> Tensor:
        """Bidirectional pass over (1, L, d) embeddings at explicit positions (1, L); with a prefix cache, the
        L positions also attend to the cached prompt (or, while it fills, are the prompt)."""
        return self.hooked_hidden_states(embeds, position_ids, probe, cache)[0]

    def hooked_hidden_states(
        self,
        embeds: Tensor,
        position_ids: Tensor,
        probe: AttentionProbe | None,
        cache: PrefixCache | None = None,
        hook: LayerHook | None = None,
        rope: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """:meth:`hidden_states`, and with a ``hook``: each layer is probed with the hook's probe for it, and
        after each layer the hook may drop rows (visual-token pruning inside the LM); the later layers run on
        the rows kept, at their own positions. Also returns, when rows were dropped, the input index of each
        row that remains (None otherwise). ``rope``: the (cos, sin) tables of ``position_ids`` if the caller
        holds them (:meth:`LladaV.rotary`), else computed here."""
        if rope is None:
            rope = self.model.rotary_emb(embeds, position_ids)
        hidden, rows = embeds, None
        for index, layer in enumerate(self.model.layers):
            hidden = layer(
                hidden,
                attention_mask=None,
                position_ids=position_ids,
                cache=cache,
                position_embeddings=rope,
                probe=probe if hook is None else hook.probe(index),
            )
            dropped = hook.after_layer(index, hidden[0]) if hook is not None else None
            if dropped is not None:
                kept_hidden, keep = dropped
                hidden, position_ids = kept_hidden[None], position_ids[:, keep]
                rope = tuple(part[:, keep] for part in rope)
                rows = keep.nonzero().squeeze(1) if rows is None else rows[keep]
        return self.model.norm(hidden), rows

    def truncate_vocab(self, size: int, head: bool) -> None:
        """Keep the first ``size`` rows of the input embedding and, if ``head``, of the LM head, as the official
        loader's ``resize_token_embeddings(len(tokenizer))``: transformers resizes the output embedding only
        when the config says the two are untied (:func:`head_follows_resize`)."""
        if size > self.config.text.vocab_size:
            raise CheckpointError(f"tokenizer has {size} tokens but the model only {self.config.text.vocab_size}")
        rows = self.model.embed_tokens.weight[:size].clone()
        self.model.embed_tokens = nn.Embedding.from_pretrained(rows, freeze=False)
        if head:
            self.lm_head.weight = nn.Parameter(self.lm_head.weight[:size].clone())
            self.lm_head.out_features = size
            self.config.text.vocab_size = size


def head_follows_resize(raw: dict, untied_by_default: bool) -> bool:
    """Whether ``resize_token_embeddings`` also cuts the LM head: transformers (4.40 for LLaDA-V, 4.50 for
    LaViDa) resizes it only when ``config.tie_word_embeddings`` is false, and the config class supplies the
    default when config.json does not say (LLaDA-V's and Dream's classes: untied; LaViDa-LLaDA's OLMo
    ``LLaDAConfig``: PretrainedConfig's tied default, while its own ``tie_weights`` never ties ``ff_out``)."""
    return not raw.get("tie_word_embeddings", not untied_by_default)


@dataclass(frozen=True)
class CropLayout:
    """How one prompt's crops map back to images: AnyRes (one image: its size and tile grid) or one crop per image."""

    crops: int
    size: tuple[int, int] | None
    grid: tuple[int, int] | None


class PromptTooLongError(ValueError):
    """The prompt does not fit the model's context; the sample cannot be run as is."""


class TokenOutsideVocabularyError(ValueError):
    """A committed id has an LM-head row but no input embedding (LaViDa-LLaDA's head keeps the padded vocabulary);
    the official code would index past its embedding here, so the sample cannot go on."""


class ImageTagError(ValueError):
    """The question's own ``<image>`` tags do not match its images; the sample cannot be run as is."""


class LladaV:
    """LLaDA-V at inference: tokenizer, image processing, prompt construction and the network."""

    mask_token = MASK_TOKEN
    suppressed_tokens = SUPPRESSED_TOKENS
    shifted_logits = False
    """True for AR-initialised backbones (Dream): position i is predicted by the output at position i − 1."""
    autocast_dtype = torch.float16
    """The official ``generate_with_embeds`` runs inside ``torch.cuda.amp.autocast(enabled=True)`` (float16)."""

    def __init__(self, network: LladaVNetwork, tokenizer: PreTrainedTokenizerBase) -> None:
        self.network = network
        self.tokenizer = tokenizer
        self.config = network.config
        self.device = network.lm_head.weight.device
        self.dtype = network.lm_head.weight.dtype
        self.num_layers = network.config.text.num_hidden_layers
        self.mask_token_id = self._token_id(self.mask_token)
        self.suppressed_token_ids = tuple(self._token_id(token) for token in self.suppressed_tokens)
        self.special_token_ids = frozenset(
            token_id for token_id, token in tokenizer.added_tokens_decoder.items() if token.special
        )
        crop = self.config.vision.image_size
        self.image_processor = SiglipImageProcessorPil(size={"height": crop, "width": crop})
        self.max_crops = anyres.max_crops(self.config.image_aspect_ratio)

    def _token_id(self, token: str) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise CheckpointError(f"the tokenizer has no {token} token: is it the checkpoint's own tokenizer?")
        return token_id

    def prompt_ids(self, question: str, num_images: int, think_mode: str | None = None) -> list[int]:
        """Token ids of the full chat prompt, one :data:`IMAGE_PLACEHOLDER` per image."""
        ids = splice_image_tokens(self.render(user_message(question, num_images, think_mode)), self.tokenizer)
        if ids.count(IMAGE_PLACEHOLDER) != num_images:
            raise ImageTagError(f"the prompt holds {ids.count(IMAGE_PLACEHOLDER)} <image> tags for {num_images} images")
        return ids

    def render(self, user: str) -> str:
        """The chat prompt around one user turn: LLaDA-V renders with the checkpoint's own template."""
        return render_chat(self.tokenizer, user)

    def image_crops(self, images: list[Image.Image]) -> tuple[Tensor, CropLayout]:
        """Pixel crops of the images, and how their features are laid out again.

        One image: AnyRes tiling. Several images: each padded to a square and encoded as one crop without
        newline, which is what the official evaluation does for multi-image prompts.
        """
        images = [image.convert("RGB") for image in images]
        crop = self.config.vision.image_size
        if len(images) == 1:
            crops, grid = anyres.anyres_crops(images[0], self.config.image_grid_pinpoints, crop)
            layout = CropLayout(len(crops), images[0].size, grid)
        else:
            background = tuple(int(mean * 255) for mean in self.image_processor.image_mean)
            crops = [anyres.expand_to_square(image, background) for image in images]
            layout = CropLayout(len(crops), None, None)
        pixels = self.image_processor(crops, return_tensors="pt")["pixel_values"]
        return pixels.to(device=self.device, dtype=self.dtype), layout

    def visual_blocks(self, features: Tensor, layout: CropLayout, newline: Tensor | None = None) -> list[Tensor]:
        """Projected crop features (crops, patches, d) → one (N, d) block of visual tokens per image; ``newline``
        replaces the ``image_newline`` vector (default: the network's)."""
        if layout.grid is None:
            return list(features)
        if self.config.crop_pool_stride:
            features = anyres.bilinear_pool(features, self.config.crop_pool_stride)
        newline = self.network.model.image_newline if newline is None else newline
        return [anyres.pack_anyres_features(features, layout.size, layout.grid, newline, self.max_crops)]

    def visual_scores(self, received: Tensor, layout: CropLayout) -> list[Tensor]:
        """Per-patch tower scores (crops, patches) → per image, (N,) float32 scores aligned with its visual tokens.

        The scores travel the features' own path as a one-channel feature map: the same per-crop bilinear
        pooling (LaViDa), un-padding, ``anyres_max`` shrinking and row layout, so a token that is a weighted
        average of patches gets the same weighted average of their scores; ``image_newline`` tokens get 0
        (they are no patch and receive no tower attention)."""
        zero = torch.zeros(1, dtype=torch.float32, device=received.device)
        return [block[:, 0] for block in self.visual_blocks(received.float()[..., None], layout, newline=zero)]

    def visual_crops(self, layout: CropLayout) -> list[Tensor] | None:
        """Per image, (N,) long: the crop each visual token mostly comes from (0: base view, 1…: tiles row-major,
        −1: ``image_newline``), by sending a one-hot crop map along the features' path (pooling, un-padding,
        shrinking, row layout) and taking each token's largest share; None for one crop per image."""
        if layout.grid is None:
            return None
        tokens = (self.config.vision.image_size // self.config.vision.patch_size) ** 2
        one_hot = torch.eye(layout.crops, device=self.device)[:, None, :].expand(-1, tokens, -1)
        (shares,) = self.visual_blocks(one_hot, layout, newline=torch.zeros(layout.crops, device=self.device))
        return [torch.where(shares.sum(dim=1) > 0, shares.argmax(dim=1), torch.full_like(shares[:, 0], -1).long())]

    def answer_region(self, image: Image.Image, box: tuple[float, float, float, float]) -> Tensor:
        """(N,) boolean mask of the visual tokens of a one-image prompt that cover ``box`` (pixels of ``image``):
        what the oracle pruners are told (``generate(..., region=[mask])``)."""
        if self.config.crop_pool_stride:
            raise NotImplementedError("answer regions follow the unpooled AnyRes layout of LLaDA-V only")
        vision = self.config.vision
        boxes = anyres.token_boxes(
            image.size, self.config.image_grid_pinpoints, vision.image_size, vision.patch_size, self.max_crops
        )
        return anyres.region_mask(boxes, box).to(self.device)

    def visual_grids(self, blocks: list[Tensor], layout: CropLayout) -> list[list[tuple[int, int, int, int]]]:
        """Per image, (first token, rows, columns, row stride) of each 2-D grid in its block of visual tokens."""
        if layout.grid is None:
            return [[(0, math.isqrt(len(block)), math.isqrt(len(block)), math.isqrt(len(block)))] for block in blocks]
        ((block,),) = [blocks]
        crop_tokens = (self.config.vision.image_size // self.config.vision.patch_size) ** 2
        if self.config.crop_pool_stride:
            crop_tokens = math.ceil(math.isqrt(crop_tokens) / self.config.crop_pool_stride) ** 2
        unit = math.isqrt(crop_tokens)
        h, w = anyres.tile_map_shape(unit, layout.size, layout.grid, self.max_crops)
        if unit * unit + h * (w + 1) != len(block):
            raise AssertionError(f"visual block of {len(block)} tokens is not {unit}² + {h}·({w}+1)")
        return [[(0, unit, unit, unit), (unit * unit, h, w, w + 1)]]

    def splice(self, ids: list[int], visual: list[Tensor]) -> tuple[Tensor, list[tuple[int, int]]]:
        """Prompt embeddings with the visual blocks in place of the placeholders, and each block's span."""
        pieces, spans, position = [], [], 0
        for index, chunk in enumerate(_split(ids, IMAGE_PLACEHOLDER)):
            if index:
                block = visual[index - 1]
                pieces.append(block)
                spans.append((position, position + len(block)))
                position += len(block)
            pieces.append(self.embed(torch.tensor(chunk, dtype=torch.long, device=self.device)))
            position += len(chunk)
        embeds = torch.cat(pieces)
        limit = self.config.max_prompt_tokens
        if limit is not None and len(embeds) > limit:
            raise PromptTooLongError(f"prompt has {len(embeds)} tokens, the model's limit is {limit}")
        return embeds, spans

    def prepare(
        self,
        question: str,
        images: list[Image.Image],
        think_mode: str | None = None,
        tower_layer: int | None = None,
    ) -> Prompt:
        """The prompt of a question about ``images``; with ``tower_layer``, also each visual token's received
        attention at that vision-tower layer (``Prompt.tower_attention``, for pruners that ask for it)."""
        return self.prepare_ids(self.prompt_ids(question, len(images), think_mode), images, tower_layer)

    @torch.no_grad()
    def prepare_ids(self, ids: list[int], images: list[Image.Image], tower_layer: int | None = None) -> Prompt:
        """The prompt from token ids holding one :data:`IMAGE_PLACEHOLDER` per image: image preprocessing,
        vision encoder and splice. The speed benchmark enters here with synthetic ids of a workload's length.
        ``tower_layer``: see :meth:`prepare` (recorded inside the ``vision`` timer)."""
        timer = Timer(self.device)
        visual, grids, crops, scores, token_crops = [], [], 0, None, None
        if images:
            with timer("preprocess"):
                pixels, layout = self.image_crops(images)
            with timer("vision"):
                if tower_layer is None:
                    visual = self.visual_blocks(self.network.encode_crops(pixels), layout)
                else:
                    features, received = self.network.encode_crops_with_attention(pixels, tower_layer)
                    visual, scores = self.visual_blocks(features, layout), self.visual_scores(received, layout)
            grids, crops, token_crops = self.visual_grids(visual, layout), layout.crops, self.visual_crops(layout)
        embeds, spans = self.splice(ids, visual)
        return Prompt(
            embeds=embeds,
            visual_spans=spans,
            seconds=timer.seconds,
            visual_grids=grids,
            crops=crops,
            tower_attention=scores,
            token_crops=token_crops,
        )

    def embed(self, token_ids: Tensor) -> Tensor:
        rows = self.network.model.embed_tokens.num_embeddings
        if rows < self.network.lm_head.out_features and int(token_ids.max()) >= rows:
            raise TokenOutsideVocabularyError(
                f"the model committed id {int(token_ids.max())}, past its {rows}-row input embedding"
            )
        return self.network.model.embed_tokens(token_ids)

    @torch.no_grad()
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
        hidden, rows = self.network.hooked_hidden_states(embeds[None], position_ids[None], probe, cache, hook, rope)
        if self.shifted_logits:
            at = (at - 1).clamp(min=0)
        if rows is not None:
            at = torch.searchsorted(rows, at)
        return self.network.lm_head(hidden[0, at]).float()

    @torch.no_grad()
    def rotary(self, position_ids: Tensor) -> tuple[Tensor, Tensor]:
        """The RoPE tables (cos, sin), each (1, L, head dim) in the model's dtype, of positions (L,)."""
        weight = self.network.model.embed_tokens.weight
        return self.network.model.rotary_emb(weight, position_ids[None])

    @torch.no_grad()
    def prefill(self, embeds: Tensor, position_ids: Tensor) -> tuple[PrefixCache, Tensor]:
        """The prompt's keys and values, and the logits (vocab,) at its last position (Dream's first answer token)."""
        cache = PrefixCache()
        hidden = self.network.hidden_states(embeds[None], position_ids[None], None, cache)
        cache.close()
        return cache, self.network.lm_head(hidden[0, -1]).float()

    def encode_text(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, token_ids: list[int]) -> str:
        """Text as the official evaluation reports it: special tokens skipped, one trailing '.' dropped, stripped."""
        text = self.tokenizer.decode(token_ids, skip_special_tokens=True)
        return (text[:-1] if text.endswith(".") else text).strip()


def _split(ids: list[int], separator: int) -> list[list[int]]:
    chunks: list[list[int]] = [[]]
    for token in ids:
        if token == separator:
            chunks.append([])
        else:
            chunks[-1].append(token)
    return chunks


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"dtype {name!r} is not one of {', '.join(DTYPES)}")
    return DTYPES[name]


def build_network(config: LladaVConfig, dtype: torch.dtype, device: torch.device) -> LladaVNetwork:
    """An uninitialised network, allocated directly on ``device`` in ``dtype`` (weights come next)."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device), no_init_weights():
            return LladaVNetwork(config).eval()
    finally:
        torch.set_default_dtype(default)


def check_attention(attn_implementation: str) -> None:
    if attn_implementation not in ("sdpa", "eager"):
        raise ValueError(f"attn_implementation must be 'sdpa' or 'eager', got {attn_implementation!r}")


def load_llada_v(
    path: str | Path = HUB_ID,
    dtype: str = "bfloat16",
    device: str = "cpu",
    attn_implementation: str = "sdpa",
) -> LladaV:
    """Load the official checkpoint (hub id in the local cache, or a directory), or a tiny one of the same layout."""
    check_attention(attn_implementation)
    directory = resolve_checkpoint(path, HUB_ID)
    raw = read_config(directory)
    config = LladaVConfig.from_dict(raw, attn_implementation, directory)
    torch_dtype, torch_device = parse_dtype(dtype), torch.device(device)
    network = build_network(config, torch_dtype, torch_device)
    load_weights(network, directory, torch_dtype, torch_device)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(directory)
    network.truncate_vocab(len(tokenizer), head=head_follows_resize(raw, untied_by_default=True))
    return LladaV(network, tokenizer)
