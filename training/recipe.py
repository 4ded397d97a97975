"""The training recipe: the reference EfficientNet recipe's parts, with defaults for small data sets.

The reference (tensorflow/tpu, models/official/efficientnet) trains for ~350 epochs on ImageNet with
RMSProp (decay 0.9, momentum 0.9, eps 1e-3), lr 0.016 per 256 images, 5 warm-up epochs, exponential
decay 0.97 every 2.4 epochs, weight decay 1e-5, label smoothing 0.1 and an EMA of the weights.
`Recipe.reference()` is that recipe. The plain `Recipe()` keeps the same optimizer and regularisers but
is sized for what this project trains on one machine (a few thousand images, tens of epochs):

- `schedule="cosine"`: 0.97 every 2.4 epochs only reaches 0.78x the peak after 20 epochs, so a short run
  would end at a high learning rate; a cosine decay reaches zero at the last step whatever the length.
- `warmup_epochs=2`, `epochs=30`, `batch_size=64`.
- `ema_decay=0.9998` with the decay warm-up (see `training.ema`), so the average covers the late part
  of a run even when the run has far fewer steps than the 1/(1-decay) = 5000 the decay alone implies.

`batch_size` is the global batch (all processes together); `lr = base_lr * batch_size / 256`, the linear
scaling rule of the reference, so changing the number of GPUs changes neither the batch nor the lr.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from training.errors import SpecError

MAX_EPOCHS = 100_000

OPTIMIZERS = ("rmsprop", "sgd", "adamw")
SCHEDULES = ("exponential", "cosine")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
CHANNELS_LAST = ("auto", "on", "off")
# Recipe fields that may differ between a checkpoint and the run resuming it: they do not change what a
# training step computes (epochs only moves the end; workers only how data is loaded).
RESUMABLE_CHANGES = frozenset({"epochs", "num_workers"})


@dataclass(frozen=True)
class Recipe:
    """How to train: optimizer, schedule, regularisation, precision and reproducibility settings."""

    optimizer: str = "rmsprop"  # "rmsprop" (TensorFlow's, as the reference), "sgd" (Nesterov) or "adamw" (small data)
    base_lr: float = 0.016  # per 256 images
    batch_size: int = 64  # global: split evenly over the processes
    momentum: float = 0.9
    rmsprop_decay: float = 0.9
    rmsprop_eps: float = 1e-3
    weight_decay: float = 1e-5  # on conv and dense weights only: L2 for rmsprop/sgd, decoupled for adamw (~0.05)
    warmup_epochs: float = 2.0
    schedule: str = "cosine"
    lr_decay_rate: float = 0.97  # exponential schedule: factor per lr_decay_epochs (staircase)
    lr_decay_epochs: float = 2.4
    label_smoothing: float = 0.1
    ema_decay: float = 0.9998  # 0 makes the EMA a copy of the model
    ema_warmup: bool = True  # decay min(ema_decay, (1 + step) / (10 + step)), as TF's num_updates
    epochs: int = 30
    precision: str = "auto"  # auto: bf16 (fp16 where bf16 is missing) autocast on CUDA, fp32 on CPU
    channels_last: str = "auto"  # auto: on CUDA only
    seed: int = 0
    num_workers: int = 4
    zero_init_residual: bool = False  # every residual block starts as the identity (EfficientNet.zero_init_residual)

    def __post_init__(self) -> None:
        problem = _problem(self)
        if problem:
            raise SpecError(f"recipe: {problem}")

    @property
    def lr(self) -> float:
        """Peak learning rate after the linear scaling rule."""
        return self.base_lr * self.batch_size / 256

    @classmethod
    def small_data(cls, **changes: Any) -> Recipe:
        """For a few thousand images and a few epochs (the demo, proxy training): AdamW at lr 0.01 per batch of 64.

        The reference's RMSProp at lr 0.016/256 learns too slowly to rank models in under ten epochs;
        AdamW with decoupled weight decay and the same warm-up + cosine reaches several times chance in that time.
        """
        base = dict(optimizer="adamw", base_lr=0.04, weight_decay=0.05, warmup_epochs=1.0)
        return cls(**{**base, **changes})

    @classmethod
    def reference(cls, **changes: Any) -> Recipe:
        """The reference ImageNet recipe (batch 2048 as on a TPU v3-32 slice, EMA 0.9999, 350 epochs)."""
        base = dict(batch_size=2048, warmup_epochs=5.0, schedule="exponential", ema_decay=0.9999, epochs=350)
        return cls(**{**base, **changes})

    def with_(self, **changes: Any) -> Recipe:
        return replace(self, **changes)

    # --- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Any) -> Recipe:
        """A recipe from a JSON object; missing keys take the defaults, anything else wrong is a SpecError."""
        if not isinstance(data, dict):
            raise SpecError(f"a recipe must be a JSON object, got {type(data).__name__}")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise SpecError(f"unknown recipe field(s) {', '.join(unknown)} (known: {', '.join(known)})")
        return cls(**{key: _coerce(key, value, known[key].type) for key, value in data.items()})

    @classmethod
    def from_json(cls, text: str) -> Recipe:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise SpecError(f"recipe is not valid JSON: {error}") from None
        return cls.from_dict(data)

    def differences(self, other: Recipe, ignore: frozenset[str] = frozenset()) -> list[str]:
        """`field: mine -> other` for every field that differs (those in `ignore` left out)."""
        return [
            f"{f.name}: {getattr(self, f.name)!r} -> {getattr(other, f.name)!r}"
            for f in fields(self)
            if f.name not in ignore and getattr(self, f.name) != getattr(other, f.name)
        ]


_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def _coerce(key: str, value: Any, type_name: str) -> Any:
    kind = _TYPES[type_name]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise SpecError(f"recipe field '{key}' must be {type_name}, got {json.dumps(value)}")
    return value


def _finite(value: float) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _problem(r: Recipe) -> str | None:
    numbers = ("base_lr", "momentum", "rmsprop_decay", "rmsprop_eps", "weight_decay", "warmup_epochs",
               "lr_decay_rate", "lr_decay_epochs", "label_smoothing", "ema_decay")
    for name in numbers:
        if not _finite(getattr(r, name)):
            return f"{name} must be a finite number, got {getattr(r, name)!r}"
    for name in ("batch_size", "epochs", "seed", "num_workers"):
        value = getattr(r, name)
        if not isinstance(value, int) or isinstance(value, bool):
            return f"{name} must be an integer, got {value!r}"
    for name in ("ema_warmup", "zero_init_residual"):
        if not isinstance(getattr(r, name), bool):
            return f"{name} must be true or false, got {getattr(r, name)!r}"
    rules = [
        (r.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {r.optimizer!r}"),
        (r.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}, got {r.schedule!r}"),
        (r.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}, got {r.precision!r}"),
        (r.channels_last in CHANNELS_LAST, f"channels_last must be one of {', '.join(CHANNELS_LAST)}, got {r.channels_last!r}"),
        (0 < r.base_lr <= 10, f"base_lr must be in (0, 10], got {r.base_lr}"),
        (1 <= r.batch_size <= 1 << 20, f"batch_size must be in [1, {1 << 20}], got {r.batch_size}"),
        (0 <= r.momentum < 1, f"momentum must be in [0, 1), got {r.momentum}"),
        (0 < r.rmsprop_decay < 1, f"rmsprop_decay must be in (0, 1), got {r.rmsprop_decay}"),
        (0 < r.rmsprop_eps <= 1, f"rmsprop_eps must be in (0, 1], got {r.rmsprop_eps}"),
        (0 <= r.weight_decay < 1, f"weight_decay must be in [0, 1), got {r.weight_decay}"),
        (1 <= r.epochs <= MAX_EPOCHS, f"epochs must be in [1, {MAX_EPOCHS}], got {r.epochs}"),
        (0 <= r.warmup_epochs <= r.epochs, f"warmup_epochs must be in [0, epochs={r.epochs}], got {r.warmup_epochs}"),
        (0 < r.lr_decay_rate <= 1, f"lr_decay_rate must be in (0, 1], got {r.lr_decay_rate}"),
        (r.lr_decay_epochs > 0, f"lr_decay_epochs must be positive, got {r.lr_decay_epochs}"),
        (0 <= r.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {r.label_smoothing}"),
        (0 <= r.ema_decay < 1, f"ema_decay must be in [0, 1), got {r.ema_decay}"),
        (0 <= r.seed < 2**63, f"seed must be in [0, 2**63), got {r.seed}"),
        (0 <= r.num_workers <= 256, f"num_workers must be in [0, 256], got {r.num_workers}"),
    ]
    return next((message for ok, message in rules if not ok), None)


def resolve(recipe_file: str | None, resumed: dict | None, changes: dict[str, Any]) -> Recipe:
    """The recipe of a run: from `recipe_file`, else the resumed checkpoint's own, else the default, with `changes`
    (the command's flags; None means not given) on top. A run shortened below its warm-up keeps a proportionate one."""
    if recipe_file:
        try:
            recipe = Recipe.from_json(Path(recipe_file).read_text(encoding="utf-8"))
        except OSError as error:
            raise SpecError(f"--recipe {recipe_file} cannot be read: {error.strerror}") from None
        except UnicodeDecodeError:
            raise SpecError(f"--recipe {recipe_file} is not UTF-8 text (a JSON recipe is)") from None
    else:
        recipe = Recipe.from_dict(resumed.get("recipe")) if resumed else Recipe()
    changes = {key: value for key, value in changes.items() if value is not None}
    if not changes:
        return recipe
    if recipe.warmup_epochs > changes.get("epochs", recipe.epochs):
        changes["warmup_epochs"] = changes["epochs"] / 3
    return recipe.with_(**changes)
