"""Helpers of the offline tasks: images are PNG bytes, decoded here so a bad one fails inside the adapter."""

from __future__ import annotations

import io

from PIL import Image


def doc_to_visual(doc: dict) -> list[Image.Image]:
    return [Image.open(io.BytesIO(doc["image"])).convert("RGB")]
