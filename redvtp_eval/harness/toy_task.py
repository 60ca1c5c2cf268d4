"""The synthetic visual task of the toy model: name the colour of the one small box on a page.

Where it sits: ``toy.train`` trains on an endless stream of these samples; ``offline_tasks`` writes two
held-out splits for lmms-eval; the analysis of which visual tokens a pruner keeps uses ``answer_box``.
It lives in the harness because the harness's offline tasks are drawn from it (the job writes them on
first use); ``toy/`` trains and studies the toy model on it from above.

A 384×192 white page holds one 32-px box (2×2 cells) filled with one of six colours (a black digit in
it), and loose black digits elsewhere; box and digits sit on the 16-px grid of the toy model's patches
and never straddle its 192-px crops. The question asks the box's colour. The answer is in 4 cells out
of 288: through the toy model's AnyRes tiling (192-px crops of 16-px patches, a 2×1 grid) the page
becomes 144 base-view tokens + 12·25 tile tokens = 444 visual tokens, of which four tile tokens and two
to four base-view tokens show the box — so which visual tokens are kept decides the answer. Two forms: free
answer (scored with ANLS, like DocVQA) and the six colours as options (scored by letter, like AI2D).
Samples are a pure function of (split seed, index).

Why colour and not reading, and why 2×2 cells: versions that asked for the number or the digit in a box
(the page still draws one) stayed at chance after 700–1,400 steps on 2 CPU cores, and a one-cell colour
box reached only 0.38 / 0.31 held-out; finding one token among ~550 did not fit the 15-minute budget.
Naming the colour of a four-cell box needs the same thing from pruning — the region that answers the
question — with less to learn.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

GENERATOR_VERSION = 1
PAGE = (384, 192)
CELL = 16
CROP = 192
COLUMNS, ROWS = PAGE[0] // CELL, PAGE[1] // CELL
COLORS = {
    "blue": (40, 90, 230),
    "pink": (240, 120, 180),
    "gold": (235, 190, 30),
    "teal": (20, 150, 150),
    "lime": (120, 210, 60),
    "gray": (150, 150, 150),
}
"""Four-letter names, so that every question has the same number of tokens."""
BOX_CELLS = 2
LOOSE_DIGITS = 12
HELD_OUT_SEED = 1_000_003
"""Held-out samples come from a stream that the training stream (seed < 1e6) never reaches."""


@dataclass(frozen=True)
class ToySample:
    image: Image.Image
    color: str
    answer: str
    """The box's colour name: what the free-answer question asks for."""
    options: list[str]
    """The colour names in a fixed order: the multiple-choice form answers by letter."""
    correct_option: int
    answer_box: tuple[int, int, int, int]
    """Pixel box (left, top, right, bottom) of the asked box."""

    question = "What color is the box?"
    choice_question = "Which color is the box?"


def _font(size: int = 14) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _free_cells(taken: set[tuple[int, int]], size: int, rng: random.Random) -> tuple[int, int]:
    """Top-left cell of a free ``size``×``size`` square with one free cell around it, inside one crop."""
    per_crop = CROP // CELL
    while True:
        row, col = rng.randrange(ROWS - size + 1), rng.randrange(COLUMNS - size + 1)
        if col // per_crop != (col + size - 1) // per_crop:
            continue
        around = {(r, c) for r in range(row - 1, row + size + 1) for c in range(col - 1, col + size + 1)}
        if not around & taken:
            taken.update((r, c) for r in range(row, row + size) for c in range(col, col + size))
            return row, col


def _digit(draw: ImageDraw.ImageDraw, row: int, col: int, digit: str, font, cells: int = 1) -> None:
    """A digit centred in a square of ``cells``×``cells`` grid cells."""
    left, top, right, bottom = draw.textbbox((0, 0), digit, font=font)
    x = col * CELL + (cells * CELL - (right - left)) // 2 - left
    y = row * CELL + (cells * CELL - (bottom - top)) // 2 - top
    draw.text((x, y), digit, fill="black", font=font)


def make_sample(rng: random.Random) -> ToySample:
    image = Image.new("RGB", PAGE, "white")
    draw = ImageDraw.Draw(image)
    font = _font()
    taken: set[tuple[int, int]] = set()
    color = rng.choice(list(COLORS))
    row, col = _free_cells(taken, BOX_CELLS, rng)
    answer_box = (col * CELL, row * CELL, (col + BOX_CELLS) * CELL, (row + BOX_CELLS) * CELL)
    draw.rectangle((answer_box[0], answer_box[1], answer_box[2] - 1, answer_box[3] - 1), fill=COLORS[color])
    _digit(draw, row, col, str(rng.randrange(10)), font)
    for _ in range(LOOSE_DIGITS):
        row, col = _free_cells(taken, 1, rng)
        _digit(draw, row, col, str(rng.randrange(10)), font)
    options = list(COLORS)
    return ToySample(image, color, color, options, options.index(color), answer_box)


def sample_at(seed: int, index: int) -> ToySample:
    return make_sample(random.Random(f"{GENERATOR_VERSION}/{seed}/{index}"))


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
