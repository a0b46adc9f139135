"""
Deterministic placeholder images, rendered with Pillow.

Each has the size the real model would return, a colour taken from the input, and the prompt written on it
so a person can tell images apart.
"""

from __future__ import annotations

import hashlib
import io
import textwrap
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont


def image_id(model: str, inputs: dict[str, object]) -> str:
    """Return the id of the image ``model`` makes for ``inputs``: the same input always names the same image."""
    canonical = repr((model, sorted((k, str(v)) for k, v in inputs.items())))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def _colour(seed: str) -> tuple[int, int, int]:
    digest = hashlib.sha256(seed.encode()).digest()
    # Mid-tone colours keep black text readable.
    return (80 + digest[0] % 150, 80 + digest[1] % 150, 80 + digest[2] % 150)


@lru_cache(maxsize=64)
def render(prompt: str, width: int, height: int, fmt: str = "PNG") -> bytes:
    """
    Encode one image; cached, since a pipeline usually downloads what it just generated.

    :param prompt: the text written on the image, which also picks its colour.
    :param width: the image's width in pixels.
    :param height: the image's height in pixels.
    :param fmt: the Pillow format: ``PNG``, ``JPEG`` or ``WEBP``.
    """
    image = Image.new("RGB", (width, height), _colour(prompt))
    draw = ImageDraw.Draw(image)
    size = max(16, width // 24)
    try:
        font: ImageFont.FreeTypeFont | ImageFont.ImageFont = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a bitmap font that knows Latin-1 only, so other letters become "?"
        font = ImageFont.load_default()
        prompt = prompt.encode("latin-1", "replace").decode("latin-1")
    margin = width // 16
    lines = textwrap.wrap(prompt, width=max(10, (width - 2 * margin) // max(1, int(size * 0.55))))[:12]
    y = margin
    draw.text((margin, y), f"Imagen emulator  {width}x{height}", fill=(20, 20, 20), font=font)
    y += int(size * 2)
    for line in lines:
        draw.text((margin, y), line, fill=(0, 0, 0), font=font)
        y += int(size * 1.3)
    out = io.BytesIO()
    if fmt == "JPEG":
        image.save(out, format="JPEG", quality=85)
    elif fmt == "WEBP":
        image.save(out, format="WEBP", quality=80)
    else:
        image.save(out, format="PNG", compress_level=1)
    return out.getvalue()
