"""Synthetic photographs: what load tests, benchmarks and tests send when they need a realistic image file.

A smooth two-axis colour gradient, a dozen soft-edged shapes and mild sensor noise: the picture has the
edges, flat areas and noise of a photo, so it compresses (and decodes) like one, which random pixels or a
flat colour do not. Deterministic for a seed.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def synthetic_photo(width: int = 640, height: int = 480, format: str = "JPEG", seed: int = 0, quality: int = 85) -> bytes:
    """The bytes of a width x height photo-like picture in `format` (a Pillow format name; `quality` for the lossy ones)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    base = rng.uniform(40, 215, size=3)
    tilt = rng.uniform(-90, 90, size=(2, 3))
    pixels = base + x[..., None] * tilt[0] + y[..., None] * tilt[1]
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, y0 = rng.uniform(0, 1, 2) * (width, height)
        size = rng.uniform(0.05, 0.4) * min(width, height)
        box = (x0, y0, x0 + size, y0 + size * rng.uniform(0.5, 1.5))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    image = image.filter(ImageFilter.GaussianBlur(1.2))
    noisy = np.asarray(image, dtype=np.int16) + rng.normal(0, 6, (height, width, 3)).astype(np.int16)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB").save(buffer, format, quality=quality)
    return buffer.getvalue()
