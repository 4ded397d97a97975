"""Image datasets and transforms for training, without torchvision.

Layout of a dataset root (the ImageFolder layout; any such tree works, real or generated)::

    ROOT/labels.txt              optional: one class-directory name per line, in class-index order
    ROOT/train/<class>/*.png     also .jpg, .jpeg, .webp; sub-folders of a class are searched too
    ROOT/val/<class>/...

Class order: labels.txt when present, else the sorted directory names of ROOT/train (else of the
split itself when there is no train split). Every split must hold exactly those class directories, so
a class index means the same class in every split. Hidden files and folders (".*") are ignored.

Images are decoded by `effx_serve.core.preprocess` (format checks, EXIF orientation, every colour mode to
RGB) and normalised by it, so training sees pixels exactly as the server will; `eval_transform` *is*
the server's `to_input`. That module is torch-free and depends on nothing else of ours.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from effx_serve.core import preprocess
from effx_serve.core.errors import UserError
from effx_serve.core.fs import write_atomic
from training.errors import SpecError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp"})
LABELS_FILE = "labels.txt"
TRAIN_SPLIT = "train"
Transform = Callable[[Image.Image], torch.Tensor]


def _visible(name: str) -> bool:
    return not name.startswith(".")


def _class_dirs(split_dir: Path) -> list[str]:
    return sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir() and _visible(entry.name))


def read_labels(root: Path) -> list[str] | None:
    """Class names from ROOT/labels.txt (blank lines skipped), or None when there is no such file."""
    path = Path(root) / LABELS_FILE
    if not path.is_file():
        return None
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as error:
        raise SpecError(f"cannot read {path} ({error}); it must be UTF-8 text, one class name per line") from None
    names = [name for name in names if name]
    if not names:
        raise SpecError(f"{path} names no classes; write one class-directory name per line or delete it")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise SpecError(f"{path} names {', '.join(duplicates)} more than once; each class goes on one line")
    return names


def write_labels(folder: Path, classes: list[str]) -> None:
    """labels.txt (one class per line, in index order) beside a trained model's checkpoints: build-repo ships it with the model."""
    write_atomic(folder / LABELS_FILE, "".join(f"{name}\n" for name in classes))


def class_names(root: str | os.PathLike, split: str = TRAIN_SPLIT) -> list[str]:
    """The dataset's classes in index order (labels.txt, else the train split's folders, else `split`'s)."""
    root = _existing_root(root)
    labels = read_labels(root)
    if labels is not None:
        return labels
    reference = root / TRAIN_SPLIT if (root / TRAIN_SPLIT).is_dir() else _split_dir(root, split)
    names = _class_dirs(reference)
    if not names:
        raise SpecError(f"{reference} has no class directories; put each class's images in {reference}/<class>/")
    return names


def _existing_root(root: str | os.PathLike) -> Path:
    path = Path(root)
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        raise SpecError(f"dataset root {path} {what}; give the folder that holds train/ and val/ (or generate the demo data)")
    return path


def _split_dir(root: Path, split: str) -> Path:
    path = root / split
    if not path.is_dir():
        present = _class_dirs(root)
        hint = f" (found: {', '.join(present)})" if present else ""
        raise SpecError(f"dataset split {path} does not exist{hint}; expected {root}/{split}/<class>/<images>")
    return path


def _check_split_classes(split_dir: Path, classes: list[str], labelled: bool) -> None:
    present = set(_class_dirs(split_dir))
    missing = [name for name in classes if name not in present]
    if missing:
        source = LABELS_FILE if labelled else f"{TRAIN_SPLIT}/"
        raise SpecError(f"class {missing[0]!r} (from {source}) has no directory {split_dir / missing[0]}; every split needs every class")
    extra = sorted(present - set(classes))
    if extra:
        source = f"{split_dir.parent / LABELS_FILE}" if labelled else f"{split_dir.parent / TRAIN_SPLIT}"
        raise SpecError(f"directory {split_dir / extra[0]} is not a class in {source}; add it there or remove the directory")


def _images_in(class_dir: Path) -> list[Path]:
    """Image files under `class_dir`, recursively, in a stable order (sorted relative paths)."""
    found: list[Path] = []
    for folder, dirs, files in os.walk(class_dir):
        dirs[:] = sorted(name for name in dirs if _visible(name))
        found.extend(Path(folder) / name for name in files if _visible(name) and Path(name).suffix.lower() in IMAGE_SUFFIXES)
    return sorted(found, key=lambda path: path.relative_to(class_dir).as_posix())


def load_image(path: str | os.PathLike) -> Image.Image:
    """Decode one file into an upright RGB image, as the server would decode its bytes."""
    path = Path(path)
    try:
        data = path.read_bytes()
        return preprocess.to_rgb(preprocess.decode_image(data))
    except OSError as error:
        raise SpecError(f"cannot read image {path}: {error.strerror or error}") from None
    except UserError as error:
        raise SpecError(f"bad image {path}: {error}; replace or delete the file") from None


class ImageFolder(Dataset):
    """ROOT/<split>/<class>/<image> as (float32 CHW tensor, class index) pairs.

    Files are listed once, here; they are decoded lazily in `__getitem__`, where an unreadable file
    raises SpecError naming it (checking every image up front would read the whole dataset).
    """

    def __init__(self, root: str | os.PathLike, split: str, transform: Transform):
        self.root = _existing_root(root)
        self.split = split
        self.transform = transform
        split_dir = _split_dir(self.root, split)
        labels = read_labels(self.root)
        self.classes: list[str] = labels if labels is not None else class_names(self.root, split)
        _check_split_classes(split_dir, self.classes, labelled=labels is not None)
        self.samples: list[tuple[Path, int]] = []
        for index, name in enumerate(self.classes):
            images = _images_in(split_dir / name)
            if not images:
                suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
                raise SpecError(f"class directory {split_dir / name} has no images ({suffixes}); add some or remove the class")
            self.samples.extend((path, index) for path in images)
        if len(self.classes) < 2:  # every model would score 100%: nothing to train, rank or search by
            raise SpecError(f"the dataset {self.root} has {len(self.classes)} class ({', '.join(self.classes)}); a classifier needs at least two")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return self.transform(load_image(path)), label

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def check_images(self, skip_bad: bool = False) -> list[Path]:
        """Decode every image once. A bad one stops with its path, or (`skip_bad`) is dropped and returned."""
        bad = []
        for path, _ in self.samples:
            try:
                load_image(path)
            except SpecError:
                if not skip_bad:
                    raise
                bad.append(path)
        dropped = set(bad)
        self.samples = [(path, label) for path, label in self.samples if path not in dropped]
        if not self.samples:
            raise SpecError(f"{self.root / self.split}: no readable images left after skipping {len(bad)} bad ones")
        return bad


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array)


@dataclass(frozen=True)
class EvalTransform:
    """`effx_serve.core.preprocess.to_input` as a tensor: the exact serving preprocessing."""

    resolution: int
    crop_fraction: float = preprocess.DEFAULT_CROP_FRACTION

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return _to_tensor(preprocess.to_input(image, self.resolution, self.crop_fraction))


@dataclass(frozen=True)
class TrainTransform:
    """Random resized crop (Inception-style) + horizontal flip, then the serving normalisation.

    Randomness comes from torch's global generator: seeding torch makes a run reproducible, and
    DataLoader gives each worker its own seed derived from it. (A torch.Generator held here would be
    copied into every worker with the same state, so all workers would draw the same crops.)
    """

    resolution: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = preprocess.to_rgb(image)
        box = random_crop_box(image.size, self.scale, self.ratio)
        image = image.resize((self.resolution, self.resolution), preprocess.RESAMPLE, box=box)
        if self.hflip > 0 and _uniform() < self.hflip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return _to_tensor(preprocess.normalize(image))


def _uniform(low: float = 0.0, high: float = 1.0) -> float:
    return low + (high - low) * torch.rand(()).item()


def _randint(low: int, high: int) -> int:
    """Uniform integer in [low, high]."""
    return int(torch.randint(low, high + 1, ()).item())


def random_crop_box(size: tuple[int, int], scale: tuple[float, float], ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    """A (left, top, right, bottom) box covering a random area fraction in `scale` with aspect in `ratio`.

    Tries a few random draws; when none fits inside the image (very elongated images), falls back to
    the largest centred box whose aspect is within `ratio`.
    """
    width, height = size
    area = width * height
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * _uniform(*scale)
        aspect = math.exp(_uniform(log_low, log_high))
        crop_w = round(math.sqrt(target * aspect))
        crop_h = round(math.sqrt(target / aspect))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            left = _randint(0, width - crop_w)
            top = _randint(0, height - crop_h)
            return left, top, left + crop_w, top + crop_h
    aspect = width / height
    if aspect < ratio[0]:
        crop_w, crop_h = width, max(1, round(width / ratio[0]))
    elif aspect > ratio[1]:
        crop_w, crop_h = max(1, round(height * ratio[1])), height
    else:
        crop_w, crop_h = width, height
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    return left, top, left + crop_w, top + crop_h


def _check_resolution(resolution: int, crop_fraction: float = preprocess.DEFAULT_CROP_FRACTION) -> None:
    try:
        preprocess.check_arguments(resolution, crop_fraction)
    except UserError as error:
        raise SpecError(str(error)) from None


def train_transform(
    resolution: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: float = 0.5,
) -> TrainTransform:
    """Augmenting transform for training: random resized crop to `resolution`, flip with probability `hflip`."""
    _check_resolution(resolution)
    low, high = (float(value) for value in scale)
    if not (0.0 < low <= high <= 1.0):
        raise SpecError(f"scale must be (low, high) with 0 < low <= high <= 1, not {scale!r}")
    ratio_low, ratio_high = (float(value) for value in ratio)
    if not (0.0 < ratio_low <= ratio_high and math.isfinite(ratio_high)):
        raise SpecError(f"ratio must be (low, high) with 0 < low <= high, not {ratio!r}")
    if not (0.0 <= float(hflip) <= 1.0):
        raise SpecError(f"hflip is a probability in [0, 1], not {hflip!r}")
    return TrainTransform(int(resolution), (low, high), (ratio_low, ratio_high), float(hflip))


def eval_transform(resolution: int, crop_fraction: float = preprocess.DEFAULT_CROP_FRACTION) -> EvalTransform:
    """Deterministic transform for evaluation: identical to what the server feeds the model."""
    _check_resolution(resolution, crop_fraction)
    return EvalTransform(int(resolution), float(crop_fraction))


def dataset_fingerprint(root: str | os.PathLike) -> str:
    """sha256 (hex) of the class list and every image's relative path and size, over all splits.

    Sizes, not contents: hashing the bytes of an ImageNet-sized tree takes many minutes, while paths
    and sizes change whenever files are added, removed, renamed or re-encoded. Modification times are
    left out on purpose: copying a dataset to another machine changes them but not the data.
    """
    root = _existing_root(root)
    digest = hashlib.sha256(b"effx-dataset-v1\n")
    labels = read_labels(root)
    if labels is None:
        labels = _class_dirs(root / TRAIN_SPLIT) if (root / TRAIN_SPLIT).is_dir() else []
    for name in labels:
        digest.update(f"class\t{name}\n".encode())
    for split in _class_dirs(root):
        for path in _images_in(root / split):
            relative = path.relative_to(root).as_posix()
            digest.update(f"file\t{relative}\t{path.stat().st_size}\n".encode())
    return digest.hexdigest()
