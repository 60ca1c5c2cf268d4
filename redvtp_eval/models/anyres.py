"""AnyRes tiling: from one image to crops, and from the crops' features to one visual token sequence.

Where it sits: the model's ``prepare`` calls :func:`anyres_crops` before the vision tower and
:func:`pack_anyres_features` after the projector. It follows the LLaVA-OneVision code that LLaDA-V
ships (``process_anyres_image`` and the ``spatial_unpad`` branch of
``prepare_inputs_labels_for_multimodal``), rule for rule, because every rule changes the number of
visual tokens that a pruner sees:

1. pick the grid pinpoint with the largest effective area (ties: least waste, then the first listed);
2. resize the image into it keeping the aspect ratio (``ceil`` sizes), pad black, centred, and cut
   row-major crops; the first crop is the whole image squashed to one crop;
3. after the projector, lay the tile features out as one map, cut the padding off again, shrink the map
   bilinearly when ``sqrt(h·w / (max_crops·unit²)) > 1.1`` (``anyres_max_N``), and append the
   ``image_newline`` vector at the end of every row.

LaViDa uses plain ``anyres`` (no shrinking) over five pinpoints, and first pools every crop's feature map
bilinearly to half its side (:func:`bilinear_pool`, 27×27 → 14×14), so ``unit`` is 14 there.
"""

from __future__ import annotations

import math
import re

import torch
from PIL import Image
from torch import Tensor
from torch.nn import functional as F
from transformers.image_processing_utils import select_best_resolution


def parse_pinpoints(pinpoints: str | list, crop_size: int) -> list[tuple[int, int]]:
    """Grid pinpoints as (width, height) pairs; accepts a list or the ``"(1x1),...,(6x6)"`` range form."""
    if isinstance(pinpoints, str):
        found = re.findall(r"\((\d+)x(\d+)\)", pinpoints)
        (w0, h0), (w1, h1) = (int(v) for v in found[0]), (int(v) for v in found[-1])
        return [(i * crop_size, j * crop_size) for i in range(w0, w1 + 1) for j in range(h0, h1 + 1)]
    return [(int(w), int(h)) for w, h in pinpoints]


def max_crops(image_aspect_ratio: str) -> int | None:
    """The N of ``anyres_max_N`` (the tile map is shrunk beyond N crops' worth of tokens); None for ``anyres``."""
    match = re.fullmatch(r"anyres_max_(\d+)", image_aspect_ratio)
    return int(match.group(1)) if match else None


def best_resolution(size: tuple[int, int], pinpoints: list[tuple[int, int]]) -> tuple[int, int]:
    """(width, height) of the pinpoint that the official best-fit rule chooses for an image of ``size``."""
    height, width = select_best_resolution((size[1], size[0]), [(h, w) for w, h in pinpoints])
    return width, height


def fit(size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int, int, int]:
    """Where an image of ``size`` lands in the ``target`` canvas: (width, height, left, top), aspect kept."""
    (width, height), (target_w, target_h) = size, target
    scale_w, scale_h = target_w / width, target_h / height
    if scale_w < scale_h:
        new_w, new_h = target_w, min(math.ceil(height * scale_w), target_h)
    else:
        new_w, new_h = min(math.ceil(width * scale_h), target_w), target_h
    return new_w, new_h, (target_w - new_w) // 2, (target_h - new_h) // 2


def anyres_crops(
    image: Image.Image, pinpoints: list[tuple[int, int]], crop_size: int
) -> tuple[list[Image.Image], tuple[int, int]]:
    """The base view followed by the tiles (row-major), and the tile grid as (columns, rows)."""
    target_w, target_h = best_resolution(image.size, pinpoints)
    new_w, new_h, left, top = fit(image.size, (target_w, target_h))
    canvas = Image.new("RGB", (target_w, target_h), (0, 0, 0))
    canvas.paste(image.resize((new_w, new_h)), (left, top))
    tiles = [
        canvas.crop((left, top, left + crop_size, top + crop_size))
        for top in range(0, target_h, crop_size)
        for left in range(0, target_w, crop_size)
    ]
    base = image.resize((crop_size, crop_size))
    return [base, *tiles], (target_w // crop_size, target_h // crop_size)


def unpad(feature_map: Tensor, size: tuple[int, int]) -> Tensor:
    """Drop the rows or columns of a (C, H, W) map that came from letterbox padding of a (width, height) image."""
    width, height = size
    _, cur_h, cur_w = feature_map.shape
    if width / height > cur_w / cur_h:
        new_h = int(height * (cur_w / width))
        pad = (cur_h - new_h) // 2
        return feature_map[:, pad : cur_h - pad, :]
    new_w = int(width * (cur_h / height))
    pad = (cur_w - new_w) // 2
    return feature_map[:, :, pad : cur_w - pad]


def bilinear_pool(features: Tensor, stride: int) -> Tensor:
    """(crops, unit², C) → (crops, ceil(unit/stride)², C): LaViDa's per-crop ``get_2dPool`` in its bilinear mode."""
    crops, tokens, channels = features.shape
    unit = math.isqrt(tokens)
    grid = features.view(crops, unit, unit, channels).permute(0, 3, 1, 2)
    pooled = F.interpolate(grid, size=[math.ceil(unit / stride)] * 2, mode="bilinear")
    return pooled.permute(0, 2, 3, 1).reshape(crops, -1, channels)


def pack_anyres_features(
    features: Tensor, size: tuple[int, int], grid: tuple[int, int], newline: Tensor, max_crops: int | None
) -> Tensor:
    """(1 + cols·rows, unit², C) crop features → (N, C) visual tokens: base view, then the un-padded tile map."""
    unit = math.isqrt(features.shape[1])
    cols, rows = grid
    base, tiles = features[0], features[1:]
    tile_map = tiles.view(rows, cols, unit, unit, -1).permute(4, 0, 2, 1, 3).flatten(1, 2).flatten(2, 3)
    tile_map = unpad(tile_map, size)
    channels, h, w = tile_map.shape
    if max_crops is not None:
        times = math.sqrt(h * w / (max_crops * unit**2))
        if times > 1.1:
            tile_map = F.interpolate(tile_map[None], [int(h // times), int(w // times)], mode="bilinear")[0]
    row_ends = newline.to(tile_map.dtype)[:, None, None].expand(channels, tile_map.shape[1], 1)
    tile_map = torch.cat([tile_map, row_ends], dim=-1)
    return torch.cat([base, tile_map.flatten(1, 2).transpose(0, 1)], dim=0)


def tile_map_shape(unit: int, size: tuple[int, int], grid: tuple[int, int], max_crops: int | None) -> tuple[int, int]:
    """(rows, columns) of the tile map that :func:`pack_anyres_features` packs (before its newline column)."""
    cols, rows = grid
    h, w = unpad(torch.empty(0, rows * unit, cols * unit), size).shape[1:]
    if max_crops is not None:
        times = math.sqrt(h * w / (max_crops * unit**2))
        if times > 1.1:
            h, w = int(h // times), int(w // times)
    return h, w


def expand_to_square(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Pad the short side to a square, image centred: the ``pad`` view used when a prompt has several images."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    square = Image.new(image.mode, (side, side), background)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


Box = tuple[float, float, float, float]


def token_boxes(
    size: tuple[int, int], pinpoints: list[tuple[int, int]], crop_size: int, patch_size: int, max_crops: int | None
) -> list[Box | None]:
    """The image region (left, top, right, bottom, in pixels) each visual token of a one-image prompt covers.

    Same order and count as :func:`pack_anyres_features`; ``None`` marks the ``image_newline`` tokens. The
    official un-padding can keep a sliver of letterbox padding at the edges; boxes are clipped to the image.
    Used to ask which of the kept tokens cover a given part of the image.
    """
    width, height = size
    unit = crop_size // patch_size
    boxes: list[Box | None] = [
        (c * width / unit, r * height / unit, (c + 1) * width / unit, (r + 1) * height / unit)
        for r in range(unit)
        for c in range(unit)
    ]
    target_w, target_h = best_resolution(size, pinpoints)
    new_w, new_h, left, top = fit(size, (target_w, target_h))
    rows, cols = target_h // crop_size * unit, target_w // crop_size * unit
    cell = crop_size / unit
    index = torch.stack(torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij"))
    kept = unpad(index, size)
    (r0, c0), (r1, c1) = kept[:, 0, 0].tolist(), (kept[:, -1, -1] + 1).tolist()
    h, w = r1 - r0, c1 - c0
    if max_crops is not None and math.sqrt(h * w / (max_crops * unit**2)) > 1.1:
        times = math.sqrt(h * w / (max_crops * unit**2))
        h, w = int(h // times), int(w // times)
    row_height, col_width = (r1 - r0) * cell / h, (c1 - c0) * cell / w
    x_scale, y_scale = width / new_w, height / new_h
    for r in range(h):
        for c in range(w):
            x0, y0 = c0 * cell + c * col_width - left, r0 * cell + r * row_height - top
            box = (x0 * x_scale, y0 * y_scale, (x0 + col_width) * x_scale, (y0 + row_height) * y_scale)
            boxes.append((max(box[0], 0.0), max(box[1], 0.0), min(box[2], width), min(box[3], height)))
        boxes.append(None)
    return boxes


def region_mask(boxes: list[Box | None], region: Box) -> Tensor:
    """Which tokens (of :func:`token_boxes`) cover part of ``region`` (left, top, right, bottom, in pixels):
    a boolean mask, True where the token's box and the region overlap with positive area."""
    left, top, right, bottom = region
    return torch.tensor(
        [box is not None and box[0] < right and left < box[2] and box[1] < bottom and top < box[3] for box in boxes],
        dtype=torch.bool,
    )
