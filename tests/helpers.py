"""Test images the project draws itself."""

from __future__ import annotations

import torch
from PIL import Image, ImageDraw


def page(size: tuple[int, int] = (384, 384), text: str = "TOTAL 42", color: str = "white") -> Image.Image:
    """A small document-like image: a coloured page with one line of text and a box."""
    image = Image.new("RGB", size, color)
    draw = ImageDraw.Draw(image)
    draw.rectangle((size[0] // 5, size[1] // 5, size[0] // 2, size[1] // 2), outline="black", width=3)
    draw.text((size[0] // 4, size[1] // 3), text, fill="black")
    return image


def toy_visual_tokens(task: str, index: int) -> int:
    """How many visual tokens the shipped toy model makes of held-out page ``index`` of an offline toy task
    (the pages come in several sizes, so this varies from page to page)."""
    import json
    from pathlib import Path

    from redvtp_eval.harness.offline_tasks import held_out
    from redvtp_eval.models import anyres

    raw = json.loads((Path(__file__).resolve().parents[1] / "checkpoints" / "toy-llada-v" / "config.json").read_text())
    crop, patch = raw["vision_config"]["image_size"], raw["vision_config"]["patch_size"]
    pinpoints = anyres.parse_pinpoints(raw["image_grid_pinpoints"], crop)
    size = held_out(task, index).image.size
    return len(anyres.token_boxes(size, pinpoints, crop, patch, anyres.max_crops(raw["image_aspect_ratio"])))


def layer_maps(model, prompt, gen_length: int = 8):
    """Every layer's (heads, L, L) eager attention map of step 1's full forward (``gen_length`` masked rows)."""
    maps = []
    hooks = [
        layer.self_attn.register_forward_hook(lambda module, args, output: maps.append(output[1][0]))
        for layer in model.network.model.layers
    ]
    tokens = torch.full((gen_length,), model.mask_token_id)
    embeds = torch.cat([prompt.embeds, model.embed(tokens)])
    with torch.no_grad():
        model.logits(embeds, torch.arange(len(embeds)), torch.arange(len(prompt.embeds), len(embeds)))
    for hook in hooks:
        hook.remove()
    return maps
