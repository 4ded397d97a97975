"""The architecture spec: stage strings plus global parameters, and the reference's scaling rules.

A `ModelSpec` is the one serialisable description of a network that everything else speaks:
the builder, the counters, the roofline, search and scaling. Stages are kept *unscaled*, in the
reference grammar; width and depth multipliers are applied when the spec is expanded into blocks
(`training.arch.plan`), exactly as the reference does it.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

from training.arch.grammar import ACTIVATIONS, StageArgs, format_stage, parse_stage
from training.errors import SpecError

SCHEMA_VERSION = 1
# Far beyond any useful model, low enough that an absurd spec is refused rather than overflowing or hanging.
MAX_MULTIPLIER = 16.0
MAX_RESOLUTION = 4096
MAX_CLASSES = 100_000  # ImageNet-21k has 21,841; past this a number is a typo whose classifier would not fit in memory
MAX_FILTERS = 16_384


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Width scaling with the reference's rounding: nearest multiple of `divisor`, never 10% below."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth: float) -> int:
    """Depth scaling with the reference's rounding: always up."""
    return int(math.ceil(depth * repeats))


@dataclass(frozen=True)
class ModelSpec:
    """A whole network: unscaled stages and the global parameters that scale and finish them."""

    stages: tuple[StageArgs, ...]
    width: float = 1.0
    depth: float = 1.0
    resolution: int = 224
    dropout: float = 0.2
    drop_connect: float = 0.2
    se_coefficient: float = 1.0
    activation: str = "swish"
    num_classes: int = 1000
    stem_filters: int = 32
    head_filters: int = 1280
    depth_divisor: int = 8
    bn_momentum: float = 0.01  # PyTorch convention; the reference's 0.99 in TF terms
    bn_epsilon: float = 1e-3
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.stages, tuple):
            object.__setattr__(self, "stages", tuple(self.stages))
        problem = _global_problem(self)
        if problem:
            raise SpecError(f"model '{self.name}': {problem}")
        _check_regions(self.stages)

    # --- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "stages"}
        data["stages"] = [format_stage(stage) for stage in self.stages]
        data["schema_version"] = SCHEMA_VERSION
        return data

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Any) -> ModelSpec:
        if not isinstance(data, dict):
            raise SpecError(f"a model spec must be a JSON object, got {type(data).__name__}")
        data = dict(data)
        version = data.pop("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise SpecError(f"spec schema_version {version} is not supported (this version reads {SCHEMA_VERSION})")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise SpecError(f"unknown spec field(s) {', '.join(unknown)} (known: {', '.join(known)})")
        if "stages" not in data:
            raise SpecError("spec has no 'stages' list")
        stages = data.pop("stages")
        if not isinstance(stages, list) or not stages:
            raise SpecError("spec field 'stages' must be a non-empty list of stage strings")
        for key, value in data.items():
            data[key] = _coerce(key, value, known[key].type)
        return cls(stages=tuple(parse_stage(s) for s in stages), **data)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise SpecError(f"spec is not valid JSON: {error}") from None
        return cls.from_dict(data)

    # --- derived -------------------------------------------------------------------------
    def with_(self, **changes: Any) -> ModelSpec:
        """A copy with some global parameters changed (validated again)."""
        return replace(self, **changes)

    def arch_hash(self) -> str:
        """A stable id of what decides inference cost: stages and global shape parameters.

        Leaves out the name, the resolution (latency records key it separately) and training-only
        parameters (dropout, drop_connect, BN settings), so renaming or retraining keeps the hash.
        """
        keep = ("width", "depth", "se_coefficient", "activation", "num_classes", "stem_filters", "head_filters", "depth_divisor")
        data = {key: getattr(self, key) for key in keep}
        data["stages"] = [format_stage(stage) for stage in self.stages]
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def filters(self, count: int) -> int:
        return round_filters(count, self.width, self.depth_divisor)

    def repeats(self, count: int) -> int:
        return round_repeats(count, self.depth)


_FIELD_TYPES = {"int": int, "float": float, "str": str}


def _coerce(key: str, value: Any, type_name: str) -> Any:
    kind = _FIELD_TYPES[type_name]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise SpecError(f"spec field '{key}' must be {type_name}, got {json.dumps(value)}")
    return value


def _global_problem(spec: ModelSpec) -> str | None:
    rules = [
        (len(spec.stages) >= 1, "needs at least one stage"),
        (all(isinstance(s, StageArgs) for s in spec.stages), "stages must be StageArgs"),
        (0 < spec.width <= MAX_MULTIPLIER, f"width must be in (0, {MAX_MULTIPLIER}], got {spec.width}"),
        (0 < spec.depth <= MAX_MULTIPLIER, f"depth must be in (0, {MAX_MULTIPLIER}], got {spec.depth}"),
        (8 <= spec.resolution <= MAX_RESOLUTION, f"resolution must be in [8, {MAX_RESOLUTION}], got {spec.resolution}"),
        (0 <= spec.dropout < 1, f"dropout must be in [0, 1), got {spec.dropout}"),
        (0 <= spec.drop_connect < 1, f"drop_connect must be in [0, 1), got {spec.drop_connect}"),
        (0 < spec.se_coefficient <= MAX_MULTIPLIER, f"se_coefficient must be in (0, {MAX_MULTIPLIER}], got {spec.se_coefficient}"),
        (spec.activation in ACTIVATIONS, f"activation must be one of {', '.join(ACTIVATIONS)}, got {spec.activation!r}"),
        (1 <= spec.num_classes <= MAX_CLASSES, f"num_classes must be in [1, {MAX_CLASSES}], got {spec.num_classes}"),
        (1 <= min(spec.stem_filters, spec.head_filters) and max(spec.stem_filters, spec.head_filters) <= MAX_FILTERS,
         f"stem_filters and head_filters must be in [1, {MAX_FILTERS}]"),
        (1 <= spec.depth_divisor <= MAX_FILTERS, f"depth_divisor must be in [1, {MAX_FILTERS}], got {spec.depth_divisor}"),
        (0 < spec.bn_momentum < 1, f"bn_momentum must be in (0, 1) (PyTorch convention), got {spec.bn_momentum}"),
        (spec.bn_epsilon > 0, f"bn_epsilon must be positive, got {spec.bn_epsilon}"),
    ]
    return next((message for ok, message in rules if not ok), None)


def _check_regions(stages: tuple[StageArgs, ...]) -> None:
    """The space-to-depth region: one `d1` stage, optionally followed by contiguous `d2` stages."""
    previous = 0
    for index, stage in enumerate(stages):
        where = f"stage {index + 1} '{format_stage(stage)}'"
        if stage.space_to_depth == 1:
            if any(s.space_to_depth == 1 for s in stages[:index]):
                raise SpecError(f"{where}: a second d1; a model has one space-to-depth region")
            if stage.stride != 1:
                raise SpecError(f"{where}: d1 needs stride s11 (its learned 2x2 space-to-depth conv downsamples)")
        if stage.space_to_depth == 2 and previous == 0:
            raise SpecError(f"{where}: d2 without d1 just before it; a space-to-depth region starts with d1")
        if previous == 2 and stages[index - 1].stride == 2 and stage.space_to_depth:
            raise SpecError(f"{where}: the space-to-depth region already ended at the stride-2 d2 stage before it")
        previous = stage.space_to_depth


def spec_from_stage_strings(stages: list[str], **globals_: Any) -> ModelSpec:
    return ModelSpec(stages=tuple(parse_stage(s) for s in stages), **globals_)
