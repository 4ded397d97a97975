"""A generated ten-class image dataset: no download, deterministic, hard enough to rank models.

Each image shows one shape (circle, square, triangle, star, cross, ring) or one textured region
(stripes, checkerboard, dots, zigzag), drawn in dark ink on a lighter background. Colour says nothing
about the class: ink, background gradient and distractor colours are drawn from the same distributions
for every class. What varies per image: position, scale, rotation, aspect, texture period, a blotchy
distractor patch that partly hides the object, blur and pixel noise. Small objects and fine textures
blur together at low resolution, so input resolution matters as well as model capacity.

The ink is always darker than the background (generator version 2). With either polarity (version 1)
a network must learn every edge detector twice, and a proxy run of a few hundred steps on 2 CPU cores
stayed near chance (demo base: 22-28% top-1 after 4 epochs against 42% with fixed polarity);
`benchmarks/proxy_signal.py` measures what the proxy task separates now.

`generate_demo_data` writes the ImageFolder tree that `training.data` reads::

    OUT/labels.txt  OUT/dataset.json  OUT/train/<class>/00000.png ...  OUT/val/<class>/00000.png ...

Each image is drawn from its own random stream seeded by (seed, split, class, index), so the same
arguments give byte-identical files in any generation order (on the same numpy and Pillow versions).
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from effx_serve.core.fs import remove_left_by_dead_writers
from training.errors import SpecError

DATASET_NAME = "effx-demo-shapes"
GENERATOR_VERSION = 2
CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring", "stripes", "checkerboard", "dots", "zigzag")
SPLITS = {"train": 0, "val": 1}
"""Split name -> the number that goes into each image's seed."""
METADATA_FILE = "dataset.json"
LABELS_FILE = "labels.txt"
SUPERSAMPLE = 2
"""Objects are drawn at twice the image size and averaged down (a 2x2 box filter in `render`): antialiased edges."""
MAX_IMAGE_SIZE = 1024
MAX_PER_CLASS = 1_000_000
Progress = Callable[[int, int], None]


# -- drawing ------------------------------------------------------------------------------------


def _polygon_mask(n: int, points: np.ndarray, holes: tuple[np.ndarray, ...] = ()) -> np.ndarray:
    """A float 0/1 mask of the filled polygon (minus holes) on an n x n canvas."""
    canvas = Image.new("L", (n, n), 0)
    draw = ImageDraw.Draw(canvas)
    draw.polygon([tuple(point) for point in points.tolist()], fill=255)
    for hole in holes:
        draw.polygon([tuple(point) for point in hole.tolist()], fill=0)
    return np.asarray(canvas, dtype=np.float32) / 255.0


def _place(unit: np.ndarray, centre: np.ndarray, radius: float, angle: float, aspect: float = 1.0) -> np.ndarray:
    """Scale unit-radius points (stretched by `aspect` along x), rotate by `angle`, move to `centre`."""
    cos, sin = math.cos(angle), math.sin(angle)
    x, y = unit[:, 0] * radius * aspect, unit[:, 1] * radius / aspect
    return np.stack([centre[0] + cos * x - sin * y, centre[1] + sin * x + cos * y], axis=1)


@lru_cache(maxsize=8)
def _unit_circle(vertices: int = 48) -> np.ndarray:
    angles = np.linspace(0.0, 2.0 * math.pi, vertices, endpoint=False)
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _regular(vertices: int, rng: np.random.Generator, jitter: float = 0.0) -> np.ndarray:
    angles = np.arange(vertices) * (2.0 * math.pi / vertices) + rng.uniform(-jitter, jitter, vertices)
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _star(inner: float, points: int = 5) -> np.ndarray:
    angles = np.arange(2 * points) * (math.pi / points)
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _cross(half_width: float) -> np.ndarray:
    w = half_width
    return np.array([(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w)], dtype=np.float64)


def _shape_mask(name: str, rng: np.random.Generator, n: int, centre: np.ndarray, radius: float) -> np.ndarray:
    angle = rng.uniform(0.0, 2.0 * math.pi)
    aspect = rng.uniform(0.87, 1.15)
    if name == "circle":
        return _polygon_mask(n, _place(_unit_circle(), centre, radius, angle, aspect))
    if name == "square":
        return _polygon_mask(n, _place(_regular(4, rng), centre, radius, angle, aspect))
    if name == "triangle":
        return _polygon_mask(n, _place(_regular(3, rng, jitter=0.15), centre, radius, angle, aspect))
    if name == "star":
        return _polygon_mask(n, _place(_star(rng.uniform(0.38, 0.5)), centre, radius, angle, aspect))
    if name == "cross":
        return _polygon_mask(n, _place(_cross(rng.uniform(0.22, 0.36)), centre, radius, angle, aspect))
    if name == "ring":
        inner = _place(_unit_circle(), centre, radius * rng.uniform(0.45, 0.65), angle, aspect)
        return _polygon_mask(n, _place(_unit_circle(), centre, radius, angle, aspect), holes=(inner,))
    raise ValueError(f"unknown shape {name}")


@lru_cache(maxsize=8)
def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    coords = np.arange(n, dtype=np.float32) + 0.5
    return np.meshgrid(coords, coords)


def _texture_mask(name: str, rng: np.random.Generator, n: int, centre: np.ndarray, radius: float) -> np.ndarray:
    """A texture inside a random region (rotated rectangle or ellipse) whose outline is not the class."""
    unit = _regular(4, rng) if rng.random() < 0.5 else _unit_circle()
    region = _polygon_mask(n, _place(unit, centre, radius, rng.uniform(0.0, 2.0 * math.pi), rng.uniform(0.8, 1.25)))
    # Period 4..10 px of a 64 px image: at 32 px the finest ones are at the sampling limit.
    period = rng.uniform(4.0, 10.0) * n / 64.0
    angle = rng.uniform(0.0, math.pi)
    xs, ys = _grid(n)
    u = ((xs - centre[0]) * math.cos(angle) + (ys - centre[1]) * math.sin(angle)) / period
    v = ((ys - centre[1]) * math.cos(angle) - (xs - centre[0]) * math.sin(angle)) / period
    if name == "stripes":
        pattern = (u % 1.0) < 0.5
    elif name == "checkerboard":
        pattern = (np.floor(u) + np.floor(v)) % 2 == 0
    elif name == "dots":
        pattern = ((u % 1.0) - 0.5) ** 2 + ((v % 1.0) - 0.5) ** 2 < rng.uniform(0.25, 0.35) ** 2
    elif name == "zigzag":
        wave = 2.0 * np.abs((v / rng.uniform(1.2, 2.0)) % 1.0 - 0.5)
        pattern = ((u + rng.uniform(0.5, 0.9) * wave) % 1.0) < 0.5
    else:
        raise ValueError(f"unknown texture {name}")
    return region * pattern.astype(np.float32)


INK_MAX = 70.0
"""Ink channels are drawn from [0, INK_MAX], background channels from [BACKGROUND_MIN, 255]: always visible."""
BACKGROUND_MIN = 128.0


def _colour(rng: np.random.Generator, low: float, high: float) -> np.ndarray:
    return rng.uniform(low, high, 3).astype(np.float32)


def _background(rng: np.random.Generator, n: int) -> np.ndarray:
    """A linear gradient between two random light colours in a random direction (n x n x 3)."""
    start, end = _colour(rng, BACKGROUND_MIN, 255.0), _colour(rng, BACKGROUND_MIN, 255.0)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    xs, ys = _grid(n)
    t = ((xs - n / 2) * math.cos(angle) + (ys - n / 2) * math.sin(angle)) / n + 0.5
    t = np.clip(t, 0.0, 1.0)[..., None]
    return start * (1.0 - t) + end * t


def _distractor(rng: np.random.Generator, n: int, centre: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """A blotchy rectangular patch near the object (mask, colours): it hides part of it."""
    side = radius * rng.uniform(0.6, 1.1)
    direction = rng.uniform(0.0, 2.0 * math.pi)
    distance = radius * rng.uniform(0.6, 1.3)
    cx, cy = centre[0] + distance * math.cos(direction), centre[1] + distance * math.sin(direction)
    x0, x1 = int(np.clip(cx - side / 2, 0, n)), int(np.clip(cx + side / 2, 0, n))
    y0, y1 = int(np.clip(cy - side / 2, 0, n)), int(np.clip(cy + side / 2, 0, n))
    mask = np.zeros((n, n), dtype=np.float32)
    mask[y0:y1, x0:x1] = 1.0
    cells = int(rng.integers(2, 5))
    blotches = Image.fromarray(rng.uniform(0, 255, (cells, cells, 3)).astype(np.uint8)).resize((n, n), Image.Resampling.BILINEAR)
    return mask, np.asarray(blotches, dtype=np.float32)


def render(class_name: str, rng: np.random.Generator, image_size: int = 64) -> Image.Image:
    """One RGB image of `class_name`, every random choice drawn from `rng`."""
    n = image_size * SUPERSAMPLE
    background = _background(rng, n)
    colour = _colour(rng, 0.0, INK_MAX)
    radius = rng.uniform(0.12, 0.36) * n
    margin = radius * 0.8  # at most a fifth of the object leaves the frame
    centre = rng.uniform(margin, n - margin, 2)
    if class_name in ("stripes", "checkerboard", "dots", "zigzag"):
        radius = rng.uniform(0.22, 0.42) * n
        mask = _texture_mask(class_name, rng, n, centre, radius)
    else:
        mask = _shape_mask(class_name, rng, n, centre, radius)
    pixels = background * (1.0 - mask[..., None]) + colour * mask[..., None]
    if rng.random() < 0.7:
        patch, blotches = _distractor(rng, n, centre, radius)
        pixels = pixels * (1.0 - patch[..., None]) + blotches * patch[..., None]
    pixels = (pixels[0::2, 0::2] + pixels[1::2, 0::2] + pixels[0::2, 1::2] + pixels[1::2, 1::2]) * 0.25  # 2x2 box filter
    image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
    if rng.random() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.9) * image_size / 64.0))
    noise = rng.normal(0.0, rng.uniform(2.0, 14.0), (image_size, image_size, 3))
    noisy = np.asarray(image, dtype=np.float32) + noise
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))


def image_rng(seed: int, split: str, class_index: int, index: int) -> np.random.Generator:
    """The random stream of one image: independent of how many or in what order images are generated."""
    return np.random.default_rng(np.random.SeedSequence([GENERATOR_VERSION, seed, SPLITS[split], class_index, index]))


# -- the dataset on disk -------------------------------------------------------------------------


def _metadata(seed: int, image_size: int, train_per_class: int, val_per_class: int) -> dict:
    return {
        "name": DATASET_NAME,
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "image_size": image_size,
        "train_per_class": train_per_class,
        "val_per_class": val_per_class,
        "classes": list(CLASSES),
    }


def _check_arguments(size: int, seed: int, image_size: int, val_fraction: float) -> None:
    def integer(value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    if not integer(size) or not 1 <= size <= MAX_PER_CLASS:
        raise SpecError(f"size (training images per class) must be an integer from 1 to {MAX_PER_CLASS}, not {size!r}")
    if not integer(seed) or seed < 0:
        raise SpecError(f"seed must be a non-negative integer, not {seed!r}")
    if not integer(image_size) or not 8 <= image_size <= MAX_IMAGE_SIZE:
        raise SpecError(f"image_size must be an integer from 8 to {MAX_IMAGE_SIZE} pixels, not {image_size!r}")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, int | float) or not 0.0 < val_fraction <= 1.0:
        raise SpecError(f"val_fraction must be in (0, 1] (validation images per class / training images per class), not {val_fraction!r}")


def _read_metadata(out: Path) -> dict | None:
    try:
        meta = json.loads((out / METADATA_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("name") == DATASET_NAME else None


def _is_complete(out: Path, meta: dict) -> bool:
    """Every expected image is present (a cheap listing, not a content check)."""
    if not (out / LABELS_FILE).is_file():
        return False
    for split, count in (("train", meta["train_per_class"]), ("val", meta["val_per_class"])):
        for name in CLASSES:
            folder = out / split / name
            if not folder.is_dir() or sum(1 for entry in os.scandir(folder) if entry.name.endswith(".png")) != count:
                return False
    return True


def _existing(out: Path, wanted: dict) -> bool:
    """True when `out` already holds this dataset; False when `out` is free; SpecError otherwise."""
    if not out.exists():
        return False
    if not out.is_dir():
        raise SpecError(f"{out} exists and is not a directory; choose another output folder for the demo data")
    if not any(os.scandir(out)):
        return False
    meta = _read_metadata(out)
    if meta is None:
        raise SpecError(f"{out} is a non-empty folder that is not a demo dataset; choose an empty or new folder (nothing was changed)")
    differences = [f"{key} {meta.get(key)!r} (wanted {value!r})" for key, value in wanted.items() if meta.get(key) != value]
    if differences:
        raise SpecError(f"{out} holds a demo dataset with other parameters: {'; '.join(differences)}; choose another folder or delete it")
    if not _is_complete(out, meta):
        raise SpecError(f"{out} holds an incomplete or modified demo dataset; delete it and generate again")
    return True


def _write_split(root: Path, split: str, count: int, seed: int, image_size: int, done: int, total: int, progress: Progress | None) -> int:
    for class_index, name in enumerate(CLASSES):
        folder = root / split / name
        folder.mkdir(parents=True)
        for index in range(count):
            image = render(name, image_rng(seed, split, class_index, index), image_size)
            # compress_level fixed and no metadata: the bytes depend only on the pixels.
            image.save(folder / f"{index:05d}.png", format="PNG", compress_level=6)
            done += 1
            if progress is not None:
                progress(done, total)
    return done


def _move_into_place(staging: Path, out: Path) -> None:
    if out.is_dir():
        out.rmdir()  # empty (checked before generating); a concurrent writer makes this fail loudly
    os.rename(staging, out)


def generate_demo_data(
    out: str | os.PathLike,
    size: int = 300,
    seed: int = 0,
    image_size: int = 64,
    val_fraction: float = 0.2,
    progress: Progress | None = None,
) -> dict:
    """Write the demo dataset to `out` (or reuse an identical one there) and return its summary.

    `size` training images per class and max(1, round(size * val_fraction)) validation images per
    class, `image_size` x `image_size` RGB PNGs. Generation happens in a hidden folder beside `out`
    that is renamed into place when complete, so `out` is either absent or whole. `progress`, when
    given, is called with (images written, images in all).
    """
    _check_arguments(size, seed, image_size, val_fraction)
    out = Path(out).resolve()  # '.' has no name to put the hidden folder beside: it went inside, and the error blamed the folder
    val_per_class = max(1, round(size * val_fraction))
    meta = _metadata(seed, image_size, size, val_per_class)
    started = time.perf_counter()
    if not _existing(out, meta):
        _generate(out, meta, progress)
        reused = False
    else:
        reused = True
    total = len(CLASSES) * (size + val_per_class)
    return {**meta, "path": str(out), "images": total, "reused": reused, "seconds": round(time.perf_counter() - started, 3)}


def _check_room(folder: Path, images: int, image_size: int) -> None:
    """Refuse a dataset the disk cannot hold before writing any of it (a typo in --size once meant days and terabytes)."""
    needed, free = images * 3 * image_size**2, shutil.disk_usage(folder).free  # PNG keeps about 3/4 of raw RGB of these textures
    if needed > free:
        raise SpecError(f"{images:,} images of {image_size} px would take up to {needed / 1e9:,.1f} GB, more than the "
                        f"{free / 1e9:,.1f} GB free in {folder}; lower --size or --image-size")


def _generate(out: Path, meta: dict, progress: Progress | None) -> None:
    total = len(CLASSES) * (meta["train_per_class"] + meta["val_per_class"])
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _check_room(out.parent, total, meta["image_size"])
        remove_left_by_dead_writers(out, ".partial")  # a killed run's half-written dataset
        staging = out.parent / f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.partial"
        staging.mkdir()
    except OSError as error:
        raise SpecError(f"cannot create the demo dataset beside {out}: {error.strerror or error}") from None
    try:
        done = _write_split(staging, "train", meta["train_per_class"], meta["seed"], meta["image_size"], 0, total, progress)
        _write_split(staging, "val", meta["val_per_class"], meta["seed"], meta["image_size"], done, total, progress)
        (staging / LABELS_FILE).write_text("".join(f"{name}\n" for name in CLASSES), encoding="utf-8")
        # Written last: its presence marks a complete dataset.
        (staging / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        try:
            _move_into_place(staging, out)
        except OSError:
            # Another process may have finished the same dataset first; that one is as good as ours.
            if not _existing(out, meta):
                raise
    except OSError as error:
        raise SpecError(f"cannot write the demo dataset to {out}: {error.strerror or error}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already after a successful rename
