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
    (start, end), = prompt.visual_spans
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
