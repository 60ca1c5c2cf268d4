from __future__ import annotations

import pytest
import torch
from helpers import page

from redvtp_eval.models import anyres

PINPOINTS = [(384 * i, 384 * j) for i in range(1, 7) for j in range(1, 7)]


@pytest.mark.parametrize(
    ("size", "tokens"),
    [((1700, 2200), 3657), ((1024, 1024), 3699), ((800, 600), 3627), ((384, 384), 1485)],
)
def test_visual_token_counts_match_the_official_pipeline(tiny, size, tokens):
    prompt = tiny.prepare("What is the total?", [page(size)])
    assert prompt.visual_tokens == tokens
    ((start, end),) = prompt.visual_spans
    assert prompt.embeds.shape == (start + tokens + (len(prompt.embeds) - end), 64)


def test_best_fit_grid_for_a_portrait_page():
    crops, grid = anyres.anyres_crops(page((1700, 2200)), PINPOINTS, 384)
    assert grid == (5, 6)
    assert len(crops) == 1 + 5 * 6
    assert all(crop.size == (384, 384) for crop in crops)


def test_range_pinpoints_expand_like_the_training_script():
    assert anyres.parse_pinpoints("(1x1),...,(6x6)", 384) == PINPOINTS
    assert anyres.max_crops("anyres_max_4") == 4
    assert anyres.max_crops("anyres") is None


def test_unpad_removes_letterbox_rows_of_a_wide_image():
    feature_map = torch.zeros(2, 54, 54)
    assert anyres.unpad(feature_map, (800, 400)).shape == (2, 28, 54)
    assert anyres.unpad(feature_map, (400, 800)).shape == (2, 54, 28)


def test_newline_closes_every_row_of_the_tile_map(tiny):
    newline = tiny.network.model.image_newline
    prompt = tiny.prepare("q", [page((384, 384))])
    start, end = prompt.visual_spans[0]
    tiles = prompt.embeds[start + 729 : end].view(27, 28, -1)
    assert torch.equal(tiles[:, -1], newline.expand(27, -1))
    assert not torch.isclose(tiles[:, :-1], newline).all(dim=-1).any()


def test_several_images_are_each_one_padded_crop(tiny):
    prompt = tiny.prepare("Compare them.", [page((800, 600)), page((384, 700), color="red")])
    assert [end - start for start, end in prompt.visual_spans] == [729, 729]
    (_, first_end), (second_start, _) = prompt.visual_spans
    assert second_start - first_end == 0  # " " after the first <image> is the dropped token


@pytest.mark.parametrize("size", [(1700, 2200), (1024, 1024), (800, 600), (384, 384), (384, 192)])
def test_token_boxes_follow_the_packed_order(tiny, size):
    boxes = anyres.token_boxes(size, PINPOINTS, 384, 14, 4)
    assert len(boxes) == tiny.prepare("q", [page(size)]).visual_tokens
    tile_boxes = [box for box in boxes[729:] if box is not None]
    newlines = boxes[729:].count(None)
    assert len(tile_boxes) % newlines == 0
    width, height = size
    for left, top, right, bottom in boxes[:729] + tile_boxes:
        assert -1e-6 <= left < right <= width + 1e-6 and -1e-6 <= top < bottom <= height + 1e-6


def test_token_boxes_of_a_grid_aligned_page_are_its_patches():
    pinpoints = [(192 * i, 192 * j) for i in range(1, 7) for j in range(1, 7)]
    boxes = anyres.token_boxes((384, 192), pinpoints, 192, 16, 4)
    assert len(boxes) == 144 + 12 * 25
    assert boxes[144] == (0, 0, 16, 16)
    assert boxes[144 + 25 + 3] == (48, 16, 64, 32)
    assert boxes[0] == (0, 0, 32, 16)
