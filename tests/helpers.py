"""Test images the project draws itself."""

from __future__ import annotations

from PIL import Image, ImageDraw


def page(size: tuple[int, int] = (384, 384), text: str = "TOTAL 42", color: str = "white") -> Image.Image:
    """A small document-like image: a coloured page with one line of text and a box."""
    image = Image.new("RGB", size, color)
    draw = ImageDraw.Draw(image)
    draw.rectangle((size[0] // 5, size[1] // 5, size[0] // 2, size[1] // 2), outline="black", width=3)
    draw.text((size[0] // 4, size[1] // 3), text, fill="black")
    return image
