"""A benchmark workload: LLaDA-V with random weights at a chosen size, and one synthetic request shaped like a task's.

Where it sits: the speed benchmark builds one :class:`Workload` and drives the evaluation's own engine
with it (``LladaV.prepare_ids`` → ``generate`` with a pruner). The model's compute does not depend on
the weights' values, and the number of steps is fixed by the schedule (no stop string ends a run early),
so the timing is that of the real model at that size.

Sizes take the tiny checkpoint's config (layout, AnyRes pinpoints, RoPE, norms) and replace the
dimensions; without vision dimensions the tower is the official SigLIP so400m cut to 26 layers, as for
the real checkpoint, whose config.json carries none. The request is a blank page of the task's image
size (AnyRes tiling and visual token count are the real ones) between random text tokens of the task's
prompt lengths, and ``gen_length`` masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from redvtp_eval.models.base import Prompt
from redvtp_eval.models.llada_v import LladaV, LladaVConfig, build_network
from redvtp_eval.models.make_tiny import TINY_CONFIG, build_tokenizer
from redvtp_eval.models.prompt import IMAGE_PLACEHOLDER
from redvtp_eval.sampler import GenerationSettings

INIT_STD = 0.02


def architecture(text: dict, vision: dict | None) -> dict:
    """A config.json for :meth:`LladaVConfig.from_dict` with the given dimensions (``vision=None``: SigLIP so400m)."""
    raw = {key: value for key, value in TINY_CONFIG.items() if key not in ("vision_config", "mm_hidden_size")}
    raw.update(text)
    if vision is not None:
        raw["vision_config"] = {**TINY_CONFIG["vision_config"], **vision}
    return raw


def random_llada_v(raw: dict, dtype: torch.dtype, device: torch.device, attn_implementation: str, seed: int) -> LladaV:
    """The network allocated directly on ``device`` (never materialised elsewhere), filled with N(0, 0.02) there."""
    network = build_network(LladaVConfig.from_dict(raw, attn_implementation), dtype, device)
    generator = torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.normal_(0.0, INIT_STD, generator=generator)
    return LladaV(network, build_tokenizer())


@dataclass
class Workload:
    model: LladaV
    ids: list[int]
    """Prompt token ids with one image placeholder."""
    image: Image.Image
    settings: GenerationSettings
    crops: int
    """Crops the vision encoder runs on (AnyRes base view + tiles)."""

    def prompt(self) -> Prompt:
        """Preprocessing, vision encoder and splice, timed inside as in the evaluation."""
        return self.model.prepare_ids(self.ids, [self.image])


def make_workload(model: LladaV, shape: dict, seed: int) -> Workload:
    """``shape``: image_size (width, height), text_before_image, text_after_image, gen_length, steps, block_length."""
    settings = GenerationSettings(
        gen_length=shape["gen_length"], steps=shape["steps"], block_length=shape["block_length"], stop_strings=()
    )
    generator = torch.Generator().manual_seed(seed)
    ordinary = min(model.tokenizer.added_tokens_decoder)

    def text(count: int) -> list[int]:
        return torch.randint(0, ordinary, (count,), generator=generator).tolist()

    ids = [*text(shape["text_before_image"]), IMAGE_PLACEHOLDER, *text(shape["text_after_image"])]
    image = Image.new("RGB", tuple(shape["image_size"]), "white")
    _, layout = model.image_crops([image])
    return Workload(model, ids, image, settings, layout.crops)
