"""What a search or LACS trains when the user does not say: a candidate scale that fits the data and the hardware, and
the run time it implies, estimated before anything starts.

A full-size candidate (width 1, depth 1, 224 px) takes about a second per training image on 2 CPU cores, so a search
at that scale on a CPU runs for days. On a CPU the default is the demo's scale (half width, a third of the depth, the
images' own size reduced by a quarter); on an accelerator, full width and depth at the images' size. The estimate
times a few real training steps of one candidate on this machine, so it holds on any hardware.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from training.arch.spec import ModelSpec
from training.errors import SpecError

CPU_WIDTH, CPU_DEPTH = 0.5, 0.34
CPU_RESOLUTION_FRACTION = 0.75  # the demo's 48 px from 64 px images: small objects still resolve
MIN_RESOLUTION, MAX_RESOLUTION = 32, 224
SAMPLED_IMAGES = 32  # image headers read to find the dataset's typical size
WARN_SECONDS = 3600.0
TIMED_RESOLUTION = 128  # the largest input an estimate's steps are timed at


@dataclass(frozen=True)
class Scale:
    width: float
    depth: float
    resolution: int
    reason: str  # said beside the chosen values


def typical_image_size(data: str | Path, split: str = "train") -> tuple[int, bool]:
    """(median shorter side of the first training images, whether their sizes differ): read from headers only."""
    from PIL import Image

    from training.data import ImageFolder

    samples = ImageFolder(data, split, transform=None).samples  # lists and checks the classes; decodes nothing
    sides = []
    for path, _ in samples[:: max(1, len(samples) // SAMPLED_IMAGES)][:SAMPLED_IMAGES]:  # spread over the classes
        try:
            with Image.open(path) as image:
                sides.append(min(image.size))
        except OSError:  # a bad file is reported by name when training reaches it
            continue
    if not sides:
        raise SpecError(f"{data}: none of the sampled training images can be opened")
    return int(statistics.median(sides)), len(set(sides)) > 1


def image_counts(data: str | Path) -> tuple[int, int]:
    """(training images, validation images) of an ImageFolder dataset: listed, not decoded."""
    from training.data import ImageFolder

    return len(ImageFolder(data, "train", transform=None).samples), len(ImageFolder(data, "val", transform=None).samples)


def round_resolution(pixels: float) -> int:
    """The nearest multiple of 8 px within the candidate resolutions' bounds."""
    return int(min(MAX_RESOLUTION, max(MIN_RESOLUTION, 8 * round(pixels / 8))))


def default_scale(image_size: int, hardware_class: str) -> Scale:
    """The candidate scale for images of `image_size` px on a `hardware_class` ("cpu", "gpu" or "tpu") machine."""
    if hardware_class == "cpu":
        return Scale(CPU_WIDTH, CPU_DEPTH, round_resolution(CPU_RESOLUTION_FRACTION * image_size),
                     f"the CPU default for {image_size} px images")
    return Scale(1.0, 1.0, round_resolution(image_size), f"the {hardware_class.upper()} default for {image_size} px images")


def fill_scale(given: dict[str, float | int | None], data: str | Path, hardware_class: str) -> tuple[dict, list[str]]:
    """`given` (width, depth, resolution; None where not given) completed from the data's image size and this hardware,
    and the lines that say what was chosen. Nothing is read when all three are given."""
    missing = [name for name, value in given.items() if value is None]
    if not missing:
        return dict(given), []
    size, mixed = typical_image_size(data)
    said = [f"note: the training images have mixed sizes; their median shorter side, {size} px, sets the default scale"] if mixed else []
    scale = default_scale(size, hardware_class)
    chosen = {name: getattr(scale, name) if value is None else value for name, value in given.items()}
    said.append(f"candidate scale: {', '.join(f'{name} {chosen[name]:g}' for name in missing)} "
                f"({scale.reason}; set --{' --'.join(missing)} to change)")
    return chosen, said


def seconds_per_image(spec: ModelSpec, batch_size: int = 16, steps: int = 3) -> float:
    """Training seconds per image of `spec` on this machine: a few timed forward + backward + update steps (after one warm-up).
    Above TIMED_RESOLUTION px the steps run at that resolution and the time scales with the pixels, as a convolutional
    network's work does: timing a 4096 px model itself would take minutes before the estimate could warn of anything."""
    import torch
    import torch.nn.functional as F

    from training.arch.model import build_model

    pixels = (spec.resolution / TIMED_RESOLUTION) ** 2 if spec.resolution > TIMED_RESOLUTION else 1.0
    spec = spec.with_(resolution=min(spec.resolution, TIMED_RESOLUTION))
    model = build_model(spec)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images = torch.randn(batch_size, 3, spec.resolution, spec.resolution)
    labels = torch.zeros(batch_size, dtype=torch.long)
    times = []
    for step in range(steps + 1):
        started = time.perf_counter()
        optimizer.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
        if step:  # the first step allocates and picks kernels
            times.append(time.perf_counter() - started)
    return statistics.median(times) / batch_size * pixels


def check_one_batch(train_images: int, stride: int, batch_size: int, fix: str) -> None:
    """Refuse, before anything is timed or trained, a proxy whose training subset holds less than one batch (`fix`: the
    flags that would mend it, as the command names them)."""
    used = len(range(0, train_images, stride))
    if used < batch_size:
        subset = f" (every {stride}th of {train_images})" if stride > 1 else ""
        raise SpecError(f"the proxy would train on {used} images{subset}, fewer than one batch of {batch_size}; {fix}")


def estimate_seconds(spec: ModelSpec, train_images: int, val_images: int, epochs: int, runs: int) -> float:
    """The run time of `runs` proxy trainings of models like `spec`: epochs over the training images plus one evaluation
    of two models (raw and EMA: a forward pass, about a third of a training step) per epoch."""
    per_image = seconds_per_image(spec)
    return runs * epochs * per_image * (train_images + 2 * val_images / 3)


def describe_estimate(seconds: float, shorten: str = "a smaller scale, fewer epochs or --subset-stride") -> str:
    text = f"about {seconds / 3600:.0f} h" if seconds >= 7200 else f"about {seconds / 60:.0f} min" if seconds >= 90 else f"about {seconds:.0f} s"
    if seconds > WARN_SECONDS:
        text += f" (long: {shorten} shortens it)"
    return text
