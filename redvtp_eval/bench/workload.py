"""A benchmark workload: a model family with random weights at a chosen size, and one request shaped like a task's.

Where it sits: the speed benchmark builds one :class:`Workload` and drives the evaluation's own engine
with it (``LladaV.prepare_ids`` → ``generate`` with a pruner). The model's compute does not depend on
the weights' values, and the number of steps is fixed by the schedule (no stop string ends a run early),
so the timing is that of the real model at that size.

The network is built as the family's loader builds it: the family's tiny checkpoint config.json
(layout, AnyRes pinpoints, pooling, RoPE, norms) with the size's dimensions written under the family's
own field names, read by the loader's config reader, wrapped in the loader's runtime class. Without
vision dimensions the tower is the official SigLIP so400m cut to 26 layers, as for the real checkpoints,
whose config.json carries none. The request is a blank page of the task's image size (AnyRes tiling,
pooling and visual token count are the model's real ones) between random text tokens of the task's
prompt lengths, and the task's generation settings for the family, read by the family's gen-kwargs parser.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from PIL import Image

from redvtp_eval.engine.families import family
from redvtp_eval.engine.sampler import GenerationSettings
from redvtp_eval.models.base import Prompt
from redvtp_eval.models.llada_v import LladaV, build_network
from redvtp_eval.models.make_tiny import TINY
from redvtp_eval.models.prompt import IMAGE_PLACEHOLDER

INIT_STD = 0.02


def architecture(family_name: str, text: dict, vision: dict | None) -> dict:
    """A config.json of ``family_name`` with the given dimensions (Llama names; ``vision=None``: SigLIP so400m)."""
    spec = TINY[family_name]
    raw = {key: value for key, value in spec.config.items() if key not in ("vision_config", "mm_hidden_size")}
    raw.update({spec.text_field(name): value for name, value in text.items()})
    if vision is not None:
        raw["vision_config"] = {**spec.config["vision_config"], **vision}
    return raw


def random_model(
    family_name: str, raw: dict, dtype: torch.dtype, device: torch.device, attn_implementation: str, seed: int
) -> LladaV:
    """The network allocated directly on ``device`` (never materialised elsewhere), filled with N(0, 0.02) there."""
    spec = TINY[family_name]
    network = build_network(spec.network_config(raw, attn_implementation), dtype, device)
    generator = torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.normal_(0.0, INIT_STD, generator=generator)
    return spec.runtime(network, spec.tokenizer())


def generation_settings(
    family_name: str, shape: dict, prefix_cache: bool, fast_dllm: str = "none", threshold: float | None = None
) -> GenerationSettings:
    """The shape's task settings for the family, through the family's own gen-kwargs parser (``prefix_cache``:
    LaViDa's ``prefix_lm``; ``fast_dllm`` and ``threshold``: Fast-dLLM's cache and parallel decoding), without stop
    strings so that every run does every step."""
    generation = shape["task"]["generation"]
    if family_name not in generation:
        raise ValueError(f"bench_shape {shape['name']} has no generation settings for the {family_name} family")
    gen_kwargs = {**generation[family_name], **({"prefix_lm": True} if prefix_cache else {})}
    if fast_dllm != "none" or threshold is not None:
        gen_kwargs |= {"fast_dllm": fast_dllm, "confidence_threshold": threshold}
    settings, _ = family(family_name).settings(gen_kwargs)
    if prefix_cache and not settings.prefix_cache:
        raise ValueError(f"the {family_name} family has no prefix-KV cache (LaViDa's prefix_lm); drop prefix_cache")
    if (settings.fast_dllm, settings.threshold) != (fast_dllm, threshold):
        raise ValueError(f"the {family_name} family's settings have no fast_dllm / threshold; run them on llada_v")
    return replace(settings, stop_strings=())


@dataclass
class Workload:
    model: LladaV
    ids: list[int]
    """Prompt token ids with one image placeholder."""
    image: Image.Image
    settings: GenerationSettings
    crops: int
    """Crops the vision encoder runs on (AnyRes base view + tiles)."""

    def prompt(self, tower_layer: int | None = None) -> Prompt:
        """Preprocessing, vision encoder and splice, timed inside as in the evaluation (``tower_layer``: the
        vision-tower attention a pruner asks for, ``Pruner.tower_attention_layer()``)."""
        return self.model.prepare_ids(self.ids, [self.image], tower_layer)


def make_workload(model: LladaV, shape: dict, settings: GenerationSettings, seed: int) -> Workload:
    """``shape``: image_size (width, height), text_before_image, text_after_image."""
    generator = torch.Generator().manual_seed(seed)
    ordinary = min(model.tokenizer.added_tokens_decoder)

    def text(count: int) -> list[int]:
        return torch.randint(0, ordinary, (count,), generator=generator).tolist()

    ids = [*text(shape["text_before_image"]), IMAGE_PLACEHOLDER, *text(shape["text_after_image"])]
    image = Image.new("RGB", tuple(shape["image_size"]), "white")
    _, layout = model.image_crops([image])
    return Workload(model, ids, image, settings, layout.crops)


def replayed_steps(samples_path: Path) -> dict[str, list[int]]:
    """Per side (``baseline``, ``pruned``), the denoising steps each sample of a finished paired job ran, in the
    log's order (failed samples left out): what an evaluation's answers cost when they stop early, for the
    benchmark to replay (``workload=…/samples.jsonl``) next to the every-step shape."""
    if not samples_path.is_file():
        raise ValueError(f"workload {samples_path} is not a file: give a finished job's samples.jsonl")
    rows = [json.loads(line) for line in samples_path.read_text().splitlines() if line.strip()]
    rows = [row for row in rows if not row.get("failed")]
    if not rows:
        raise ValueError(f"workload {samples_path} has no completed sample to replay")
    if any("baseline" not in row for row in rows):
        raise ValueError(
            f"workload {samples_path} comes from an unpaired job (paired_baseline=false): its samples carry no "
            "unpruned step count; replay a paired job's samples.jsonl"
        )
    return {"baseline": [row["baseline"]["steps"] for row in rows], "pruned": [row["steps"] for row in rows]}
