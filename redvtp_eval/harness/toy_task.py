"""The synthetic visual task of the toy model: read the three stripe colours of the one coloured tag on a page.

Where it sits: ``toy.train`` trains on an endless stream of these samples; ``offline_tasks`` writes two
held-out splits for lmms-eval; ``answer_box`` says where the answer is drawn, which the harness maps to
visual tokens (:func:`answer_region`) for the oracle pruners and the analysis of which tokens a pruner
keeps. It lives in the harness because the harness's offline tasks are drawn from it (the job writes them
on first use); ``toy/`` trains and studies the toy model on it from above.

A white page of one of eight sizes (four AnyRes grids, 222–456 visual tokens) holds four to eight *tags*.
A tag is one 16-px cell on the grid of the toy model's patches, drawn as three vertical stripes. One tag,
and only one, is coloured (three different colours of five); the others are striped in shades of grey, the
same shape. The question asks for the coloured tag's stripes; the answer is their colours from left to
right, e.g. ``teal, gold, pink`` (five tokens). Two
forms: free answer (scored with ANLS like DocVQA, generated with DocVQA's 32 tokens and 16 steps), and the
middle stripe's colour among the five as options in a fixed order (scored by letter like AI2D). Each form
has three wordings of different lengths.

Why this shape (issue 15): the answer lives in one tile token and one or two base-view tokens of 222–456,
so a blind pruner loses it often and one that drops it first always does; the distractors look alike, so
keeping "busy" tokens is not enough either. Everything is colour, which a patch embedding reads linearly
(versions that asked the model to read digits, or to bind a colour word of the question to one tag, stayed
at chance within the CPU budget). Page sizes and wordings vary so that the response's position varies, as
it does for the real model (a toy that saw one page size collapsed when pruning renumbered the positions).
Samples are a pure function of (split seed, index).
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

GENERATOR_VERSION = 3
CELL = 16
PAGES = (
    (192, 96),
    (192, 192),
    (192, 288),
    (192, 384),
    (288, 192),
    (384, 96),
    (384, 192),
    (576, 96),
)
"""Page sizes (width, height), on four AnyRes grids (1×1, 1×2, 2×1, 3×1 crops of 192 px): 222 to 456 visual
tokens. Each fits its pinpoint unscaled (any padding a multiple of 16 px), so tags stay on the patch grid
(288×96 or 288×288 would be scaled up); larger pages cost more training time than the budget allows."""
COLORS = {
    "blue": (40, 90, 230),
    "pink": (240, 120, 180),
    "gold": (235, 190, 30),
    "teal": (20, 150, 150),
    "lime": (120, 210, 60),
}
"""Each name is one token of the toy tokenizer, so every question of a wording has the same length."""
TAGS = (4, 8)
"""Fewest and most tags on a page (one coloured, the rest grey)."""
STRIPES = ((0, 5), (5, 11), (11, 16))
"""The three stripes' columns within a cell."""
GREYS = ((40, 40, 40), (100, 100, 100), (160, 160, 160), (210, 210, 210))
"""The stripe shades of the grey tags."""
QUESTIONS = (
    "What are the stripe colors of the colored box?",
    "Colored box: its stripes?",
    "One box is colored, the others are gray. What are the colors of its stripes, from left to right?",
)
CHOICE_QUESTIONS = (
    "Which color is the middle stripe of the colored box?",
    "Middle stripe of the colored box?",
    "One box is colored, the others are gray. Which color is its middle stripe?",
)
HELD_OUT_SEED = 1_000_003
"""Held-out samples come from a stream that the training stream (seed < 1e6) never reaches."""


@dataclass(frozen=True)
class ToySample:
    image: Image.Image
    question: str
    """The free-answer question."""
    choice_question: str
    answer: str
    """The coloured tag's stripe colours, left to right: what the free-answer question asks for."""
    options: list[str]
    """The five colour names in a fixed order: the multiple-choice form names the middle stripe by letter."""
    correct_option: int
    answer_box: tuple[int, int, int, int]
    """Pixel box (left, top, right, bottom) of the coloured tag on the page given to the model."""
    wording: int
    """Index of the question's wording in ``QUESTIONS`` / ``CHOICE_QUESTIONS``."""


def _free_cell(taken: set[tuple[int, int]], columns: int, rows: int, rng: random.Random) -> tuple[int, int]:
    """A free cell (row, column) whose eight neighbours are free too, so that no two tags touch."""
    while True:
        row, col = rng.randrange(rows), rng.randrange(columns)
        if not {(r, c) for r in range(row - 1, row + 2) for c in range(col - 1, col + 2)} & taken:
            taken.add((row, col))
            return row, col


def _draw_tag(draw: ImageDraw.ImageDraw, row: int, col: int, fills: tuple[tuple[int, int, int], ...]) -> None:
    left, top = col * CELL, row * CELL
    for (x0, x1), fill in zip(STRIPES, fills):
        draw.rectangle((left + x0, top, left + x1 - 1, top + CELL - 1), fill=fill)


def stripe_text(stripes: tuple[str, ...]) -> str:
    return ", ".join(stripes)


def make_sample(rng: random.Random, page: tuple[int, int] | None = None, wording: int | None = None) -> ToySample:
    """One page; ``page`` and ``wording`` fix the shape (training batches share one), else they are drawn."""
    page = page or rng.choice(PAGES)
    wording = rng.randrange(len(QUESTIONS)) if wording is None else wording
    image = Image.new("RGB", page, "white")
    draw = ImageDraw.Draw(image)
    taken: set[tuple[int, int]] = set()
    names = list(COLORS)
    stripes = tuple(rng.sample(names, len(STRIPES)))
    row, col = _free_cell(taken, page[0] // CELL, page[1] // CELL, rng)
    _draw_tag(draw, row, col, tuple(COLORS[name] for name in stripes))
    answer_box = (col * CELL, row * CELL, (col + 1) * CELL, (row + 1) * CELL)
    for _ in range(rng.randint(*TAGS) - 1):
        _draw_tag(draw, *_free_cell(taken, page[0] // CELL, page[1] // CELL, rng), tuple(rng.sample(GREYS, 3)))
    return ToySample(
        image=image,
        question=QUESTIONS[wording],
        choice_question=CHOICE_QUESTIONS[wording],
        answer=stripe_text(stripes),
        options=names,
        correct_option=names.index(stripes[1]),
        answer_box=answer_box,
        wording=wording,
    )


def sample_at(seed: int, index: int, page: tuple[int, int] | None = None, wording: int | None = None) -> ToySample:
    return make_sample(random.Random(f"{GENERATOR_VERSION}/{seed}/{index}"), page, wording)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
