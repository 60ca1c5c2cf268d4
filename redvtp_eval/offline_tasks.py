"""Small evaluation sets that the project draws itself, so that a run needs no download.

    python -m redvtp_eval.offline_tasks        # writes tasks/data/*.parquet (the harness does it on first use)

Where it sits: the lmms-eval task YAMLs in ``tasks/`` read these parquet files and score them with
lmms-eval's own code: ``redvtp_toy_docvqa`` like DocVQA (ANLS), ``redvtp_toy_mcq`` like AI2D (letter
extraction, exact match). Images are stored as PNG bytes and decoded by the task's ``doc_to_visual``,
so an undecodable image reaches the model adapter, which records it as a failed sample.
Same seed, same files.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw

TASKS_DIR = Path(__file__).resolve().parents[1] / "tasks"
DATA_DIR = TASKS_DIR / "data"
PAGE = (800, 600)
COLORS = ("red", "green", "blue", "orange")
ITEMS = ("paper", "ink", "staples", "folders", "tape", "pens", "labels", "clips")
NAMES = ("ACME", "GLOBEX", "INITECH", "UMBRELLA", "HOOLI", "STARK", "WAYNE", "TYRELL")


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def invoice(rng: random.Random, index: int) -> dict:
    """An invoice page; the question asks for one field, the answer is printed once on the page."""
    image = Image.new("RGB", PAGE, "white")
    draw = ImageDraw.Draw(image)
    customer = rng.choice(NAMES)
    number = f"{rng.randint(1000, 9999)}"
    lines = [(item, rng.randint(1, 90) + rng.randint(0, 99) / 100) for item in rng.sample(ITEMS, 4)]
    total = f"{sum(price for _, price in lines):.2f}"
    draw.text((40, 30), f"INVOICE {number}", fill="black")
    draw.text((40, 60), f"CUSTOMER {customer}", fill="black")
    for row, (item, price) in enumerate(lines):
        draw.text((60, 140 + 36 * row), f"{item:<10} {price:>8.2f}", fill="black")
    draw.rectangle((420, 440, 760, 540), outline="blue", width=4)
    draw.text((440, 480), f"TOTAL {total}", fill="blue")
    question, answer = rng.choice(
        [("What is the total?", total), ("Who is the customer?", customer), ("What is the invoice number?", number)]
    )
    return {"questionId": f"doc-{index}", "question": question, "answers": [answer], "image": png(image)}


def bar_chart(rng: random.Random, index: int) -> dict:
    """Four coloured bars; the question asks which one is tallest, answered by letter."""
    image = Image.new("RGB", PAGE, "white")
    draw = ImageDraw.Draw(image)
    heights = rng.sample(range(80, 480), len(COLORS))
    for slot, (color, height) in enumerate(zip(COLORS, heights)):
        left = 100 + slot * 160
        draw.rectangle((left, 540 - height, left + 100, 540), fill=color)
        draw.text((left + 20, 560), color, fill="black")
    options = list(COLORS)
    rng.shuffle(options)
    tallest = COLORS[heights.index(max(heights))]
    return {
        "id": f"mcq-{index}",
        "question": "Which bar is the tallest?",
        "options": options,
        "answer": str(options.index(tallest)),
        "image": png(image),
    }


TASKS = {"redvtp_toy_docvqa": invoice, "redvtp_toy_mcq": bar_chart}


def write_offline_tasks(data_dir: Path = DATA_DIR, size: int = 8, seed: int = 0) -> list[Path]:
    data_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for offset, (name, make) in enumerate(TASKS.items()):
        rng = random.Random(seed * 1000 + offset)
        path = data_dir / f"{name}.parquet"
        pd.DataFrame([make(rng, index) for index in range(size)]).to_parquet(path, index=False)
        paths.append(path)
    return paths


def ensure_offline_tasks() -> None:
    if not all((DATA_DIR / f"{name}.parquet").exists() for name in TASKS):
        write_offline_tasks()


if __name__ == "__main__":
    for written in write_offline_tasks():
        print(f"wrote {written}")
