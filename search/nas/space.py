"""The factorized, accelerator-aware search space of the paper (Section 3), over EfficientNet-B0's 7 stages.

Per stage: block type (MBConv or fused MBConv), kernel, expansion, SE ratio, activation, repeats (base - 1,
base, base + 1) and a width multiplier on the stage's output filters; globally: space-to-depth in stage 1
(the X-B0 region: `d1` on stage 1, `d2` on stage 2) and space-to-batch (`b2` on the first stage after the
space-to-depth region). A point is a plain dict of choices; `decode` turns it into a `ModelSpec`, so
everything downstream (builder, counters, roofline, profiler) speaks the one spec format.
EfficientNet-B0 and EfficientNet-X-B0 are points of the space (`B0_POINT`, `X_B0_POINT`).
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from effx_serve.core.fs import read_json
from training.arch.grammar import StageArgs, parse_stage
from training.arch.presets import EFFICIENTNET_STAGES, EFFICIENTNET_X_STAGES
from training.arch.spec import ModelSpec, round_filters
from training.errors import SpecError

STAGE_CHOICES: dict[str, tuple] = {
    "block": ("mbconv", "fused"),
    "kernel": (3, 5),
    "expand": (1, 4, 6),
    "se": (0.0, 0.25, 0.5),
    "activation": ("relu", "swish"),
    "repeats": (-1, 0, 1),
    "width": (0.75, 1.0, 1.25),
}
GLOBAL_CHOICES: dict[str, tuple] = {
    "activation": ("swish", "relu"),  # stem and head, and every stage that matches it
    "space_to_depth": (False, True),
    "space_to_batch": (False, True),
}
BASE_STAGES = tuple(parse_stage(s) for s in EFFICIENTNET_STAGES)
STEM_FILTERS = 32


@dataclass(frozen=True)
class SearchSpace:
    """The choices per stage and global; the defaults are the paper's. A narrower space is a subset."""

    stage_choices: tuple[tuple[str, tuple], ...] = tuple(STAGE_CHOICES.items())
    global_choices: tuple[tuple[str, tuple], ...] = tuple(GLOBAL_CHOICES.items())
    stages: int = len(BASE_STAGES)

    def sample(self, rng: random.Random) -> dict:
        point = {name: rng.choice(options) for name, options in self.global_choices}
        point["stages"] = [{name: rng.choice(options) for name, options in self.stage_choices} for _ in range(self.stages)]
        return point

    def mutate(self, point: dict, rng: random.Random, rate: float | None = None) -> dict:
        """Re-draw each decision with probability `rate` (default: one decision on average); always changes one."""
        decisions = [(None, name, options) for name, options in self.global_choices]
        decisions += [(i, name, options) for i in range(self.stages) for name, options in self.stage_choices]
        rate = 1.0 / len(decisions) if rate is None else rate
        child = {**point, "stages": [dict(stage) for stage in point["stages"]]}
        forced = rng.randrange(len(decisions))
        for index, (stage, name, options) in enumerate(decisions):
            if index == forced or rng.random() < rate:
                target = child if stage is None else child["stages"][stage]
                target[name] = rng.choice([o for o in options if o != target[name]] or options)
        return child

    def validate(self, point: dict) -> None:
        """A clear SpecError for a point with an unknown key or a choice outside the space."""
        if not isinstance(point, dict) or not isinstance(point.get("stages"), list):
            raise SpecError("a search-space point is an object with a 'stages' list")
        globals_ = dict(self.global_choices)
        for name, value in point.items():
            if name != "stages" and (name not in globals_ or not _one_of(value, globals_[name])):
                raise SpecError(_choice_error(name, value, globals_.get(name)))
        if len(point["stages"]) != self.stages:
            raise SpecError(f"a point needs {self.stages} stages, got {len(point['stages'])}")
        per_stage = dict(self.stage_choices)
        for i, stage in enumerate(point["stages"], 1):
            for name in per_stage.keys() | stage.keys():
                if name not in per_stage or not _one_of(stage.get(name), per_stage[name]):
                    raise SpecError(f"stage {i}: " + _choice_error(name, stage.get(name), per_stage.get(name)))

    def contains(self, point: dict) -> bool:
        try:
            self.validate(point)
        except SpecError:
            return False
        return True

    def decisions(self) -> list[tuple[str, tuple]]:
        """Every decision as (name, options) in the order a controller makes them: globals, then stage by stage."""
        names = list(self.global_choices)
        names += [(f"stage{i}.{name}", options) for i in range(1, self.stages + 1) for name, options in self.stage_choices]
        return names

    def to_params(self, point: dict) -> dict[str, Any]:
        """The point as flat {decision name: choice} (what Optuna stores as a trial's params)."""
        params = {name: point[name] for name, _ in self.global_choices}
        for i, stage in enumerate(point["stages"], 1):
            params |= {f"stage{i}.{name}": stage[name] for name, _ in self.stage_choices}
        return params

    def from_params(self, params: dict[str, Any]) -> dict:
        point: dict = {name: params[name] for name, _ in self.global_choices}
        point["stages"] = [{name: params[f"stage{i}.{name}"] for name, _ in self.stage_choices} for i in range(1, self.stages + 1)]
        self.validate(point)
        return point

    def size(self) -> int:
        """The number of distinct points."""
        count = 1
        for _, options in self.decisions():
            count *= len(options)
        return count

    def to_dict(self) -> dict:
        return {"global": {name: list(options) for name, options in self.global_choices},
                "stage": {name: list(options) for name, options in self.stage_choices}}

    @classmethod
    def from_dict(cls, data: Any, source: str = "search space") -> SearchSpace:
        """A space narrowed from the paper's: {"stage": {decision: [choices]}, "global": {...}}; left-out decisions keep every choice."""
        if not isinstance(data, dict) or not set(data) <= {"stage", "global"}:
            raise SpecError(f"{source}: expected an object with 'stage' and/or 'global', got {_brief(data)}")
        chosen = {}
        for part, paper in (("global", GLOBAL_CHOICES), ("stage", STAGE_CHOICES)):
            given = data.get(part, {})
            if not isinstance(given, dict):
                raise SpecError(f"{source}: '{part}' must be an object of decision -> list of choices")
            for name, values in given.items():
                if name not in paper:
                    raise SpecError(f"{source}: unknown {part} decision '{name}' (known: {', '.join(paper)})")
                if not isinstance(values, list) or not values:
                    raise SpecError(f"{source}: {part} '{name}' must be a non-empty list of choices")
                for value in values:
                    if not _one_of(value, paper[name]):
                        raise SpecError(f"{source}: {part} '{name}': unknown choice {value!r} (the paper's: {', '.join(map(repr, paper[name]))})")
            chosen[part] = tuple((name, tuple(o for o in options if any(_one_of(v, (o,)) for v in given.get(name, options))))
                                 for name, options in paper.items())
        return cls(stage_choices=chosen["stage"], global_choices=chosen["global"])

    @classmethod
    def load(cls, path: str | Path) -> SearchSpace:
        return cls.from_dict(read_json(path, "search space file", SpecError), f"search space file {path}")


def _one_of(value, options) -> bool:
    """`value in options`, but True is not 1 and 1 is not True (a JSON file must say what it means)."""
    return any(value == option and isinstance(value, bool) == isinstance(option, bool) for option in options)


def _brief(data: Any) -> str:
    text = json.dumps(data) if isinstance(data, dict | list | str | int | float | bool) or data is None else repr(data)
    return text if len(text) <= 60 else text[:57] + "..."


def _choice_error(name: str, value, options) -> str:
    if options is None:
        return f"unknown choice '{name}'"
    return f"'{name}' = {value!r} is not one of {', '.join(map(repr, options))}"


def point_hash(point: dict) -> str:
    """A stable id of a point (key order and spelling do not matter)."""
    return hashlib.sha256(json.dumps(point, sort_keys=True).encode()).hexdigest()[:16]


def decode(point: dict, space: SearchSpace = SearchSpace(), **spec_fields) -> ModelSpec:
    """The `ModelSpec` of a point. `spec_fields` (num_classes, resolution, width, depth, ...) pass through."""
    space.validate(point)
    activation = point.get("activation", "swish")
    # A point whose stages all use the global activation leaves the keys out, so B0 decodes to its own strings.
    uniform = all(stage["activation"] == activation for stage in point["stages"])
    s2b_stage = 2 if point.get("space_to_depth") else 1
    stages = []
    in_filters = STEM_FILTERS
    for i, (base, choice) in enumerate(zip(BASE_STAGES, point["stages"], strict=True)):
        out_filters = round_filters(base.out_filters, choice["width"], 8)
        d_key = (1 if i == 0 else 2 if i == 1 else 0) if point.get("space_to_depth") else 0
        stages.append(StageArgs(
            repeats=max(1, base.repeats + choice["repeats"]),
            kernel=choice["kernel"],
            stride=base.stride,
            expand=choice["expand"],
            in_filters=in_filters,
            out_filters=out_filters,
            se_ratio=choice["se"] or None,
            fused=choice["block"] == "fused",
            space_to_depth=d_key,
            activation=None if uniform else choice["activation"],
            space_to_batch=2 if point.get("space_to_batch") and i == s2b_stage else 0,
        ))
        in_filters = out_filters
    fields = {"name": f"point-{point_hash(point)}", "activation": activation} | spec_fields
    return ModelSpec(stages=tuple(stages), **fields)


def _point_of(stage_strings: tuple[str, ...], activation: str, space_to_depth: bool) -> dict:
    stages = []
    for base, text in zip(BASE_STAGES, stage_strings, strict=True):
        args = parse_stage(text)
        stages.append({"block": "fused" if args.fused else "mbconv", "kernel": args.kernel, "expand": args.expand,
                       "se": args.se_ratio or 0.0, "activation": args.activation or activation,
                       "repeats": args.repeats - base.repeats, "width": 1.0})
    return {"activation": activation, "space_to_depth": space_to_depth, "space_to_batch": False, "stages": stages}


B0_POINT = _point_of(EFFICIENTNET_STAGES, "swish", space_to_depth=False)
X_B0_POINT = _point_of(EFFICIENTNET_X_STAGES, "relu", space_to_depth=True)


def random_specs(count: int, seed: int = 0, resolutions: tuple[int, ...] = (64, 96, 128),
                 widths: tuple[float, ...] = (0.5, 0.75, 1.0, 1.5, 2.0), depths: tuple[float, ...] = (0.75, 1.0, 1.5, 2.0, 3.0),
                 space: SearchSpace = SearchSpace(), num_classes: int = 1000) -> list[ModelSpec]:
    """`count` random points of the space at random global width, depth and resolution (for calibration).

    The width and depth ranges reach B5-B7 sizes, so a latency model fitted on them is not extrapolating
    when it predicts the large members of a family.
    """
    rng = random.Random(seed)
    specs = []
    for _ in range(count):
        point = space.sample(rng)
        specs.append(decode(point, width=rng.choice(widths), depth=rng.choice(depths), resolution=rng.choice(resolutions),
                            num_classes=num_classes))
    return specs
