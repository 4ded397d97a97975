"""The stage-string grammar of the reference EfficientNet builders.

One stage is one string of `_`-separated keys, e.g. ``r2_k3_s22_e6_i16_o24_se0.25_f1_d2_a1``:

    r  repeats (before depth scaling)      k  kernel size
    s  stride, two equal digits (s11, s22)  e  expansion ratio
    i  input filters (before width scaling) o  output filters (before width scaling)
    se squeeze-and-excite ratio (0 < se <= 1; absent = no SE)
    f1 fused MBConv                         d1/d2 space-to-depth region start / continuation
    a0/a1 block activation ReLU / swish (absent = the model's global activation)
    b2 space-to-batch with block 2 around the stage (ours; see docs/model.md)
    noskip  no residual

`parse_stage` and `format_stage` are inverse: ``format_stage(parse_stage(s))`` is the canonical
spelling of ``s`` and ``parse_stage(format_stage(b)) == b`` for every valid ``b``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import SimpleNamespace

from training.errors import SpecError

ACTIVATIONS = ("relu", "swish")
_KEY_VALUE = re.compile(r"^([a-z]+)(.*)$")
# Canonical order of keys when printing; also the set of known keys.
_KEY_ORDER = ("r", "k", "s", "e", "i", "o", "se", "f", "d", "a", "b", "noskip")


@dataclass(frozen=True)
class StageArgs:
    """One stage of blocks, before width/depth scaling."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    in_filters: int
    out_filters: int
    se_ratio: float | None = None
    fused: bool = False
    space_to_depth: int = 0  # 0 none, 1 starts the region (learned 2x2 s2d conv), 2 continues it
    activation: str | None = None  # None: the model's global activation
    space_to_batch: int = 0  # 0 none, else the block size of the space-to-batch reshape
    skip: bool = True

    def __post_init__(self) -> None:
        problem = stage_problem(self)
        if problem:
            raise SpecError(f"stage '{format_stage(self)}': {problem}")


def _number(stage: str, key: str, text: str, kind: type):
    try:
        return kind(text)
    except ValueError:
        raise SpecError(
            f"stage '{stage}': key '{key}' needs {'an integer' if kind is int else 'a number'}, got '{text}'"
        ) from None


def parse_stage(stage: str) -> StageArgs:
    """Decode one stage string into `StageArgs` (raises `SpecError` naming the key and stage)."""
    if not isinstance(stage, str):
        raise SpecError(f"a stage must be a string such as 'r1_k3_s11_e1_i32_o16', got {stage!r}")
    if not stage.strip():
        raise SpecError("empty stage string")
    values: dict[str, str] = {}
    for op in stage.strip().split("_"):
        match = _KEY_VALUE.match(op)
        if not match:
            raise SpecError(f"stage '{stage}': cannot read '{op}' (keys look like r2, k3, s22, se0.25)")
        key, value = match.groups()
        if key not in _KEY_ORDER:  # 'sefoo' is key 'se' with a bad value, not an unknown key
            key = next((k for k in sorted(_KEY_ORDER, key=len, reverse=True) if op.startswith(k) and k != op), key)
            value = op[len(key):]
        if key not in _KEY_ORDER:
            raise SpecError(f"stage '{stage}': unknown key '{key}' (known: {', '.join(_KEY_ORDER)})")
        if key in values:
            raise SpecError(f"stage '{stage}': key '{key}' appears twice")
        if key == "noskip" and value:
            raise SpecError(f"stage '{stage}': key 'noskip' takes no value")
        if key != "noskip" and not value:
            raise SpecError(f"stage '{stage}': key '{key}' needs a value")
        values[key] = value
    for key in ("r", "k", "s", "e", "i", "o"):
        if key not in values:
            raise SpecError(f"stage '{stage}': missing required key '{key}'")
    stride_text = values["s"]
    if len(stride_text) != 2 or not stride_text.isdigit():
        raise SpecError(f"stage '{stage}': key 's' needs two digits such as s11 or s22, got 's{stride_text}'")
    if stride_text[0] != stride_text[1]:
        raise SpecError(f"stage '{stage}': key 's' must be square (s11 or s22), got 's{stride_text}'")
    flags = {}
    for key, allowed in (("f", ("0", "1")), ("d", ("0", "1", "2")), ("a", ("0", "1"))):
        if key in values and values[key] not in allowed:
            raise SpecError(f"stage '{stage}': key '{key}' takes {' or '.join(key + a for a in allowed)}, got '{key}{values[key]}'")
        flags[key] = values.get(key)
    se_ratio = _number(stage, "se", values["se"], float) if "se" in values else None
    fields = dict(
        repeats=_number(stage, "r", values["r"], int),
        kernel=_number(stage, "k", values["k"], int),
        stride=int(stride_text[0]),
        expand=_number(stage, "e", values["e"], int),
        in_filters=_number(stage, "i", values["i"], int),
        out_filters=_number(stage, "o", values["o"], int),
        se_ratio=se_ratio,
        fused=flags["f"] == "1",
        space_to_depth=int(flags["d"] or 0),
        activation=None if flags["a"] is None else ACTIVATIONS[int(flags["a"])],
        space_to_batch=_number(stage, "b", values["b"], int) if "b" in values else 0,
        skip="noskip" not in values,
    )
    problem = stage_problem(SimpleNamespace(**fields))
    if problem:
        raise SpecError(f"stage '{stage}': {problem}")
    return StageArgs(**fields)


def format_stage(args: StageArgs) -> str:
    """Print a stage in the canonical key order."""
    parts = [
        f"r{args.repeats}",
        f"k{args.kernel}",
        f"s{args.stride}{args.stride}",
        f"e{args.expand}",
        f"i{args.in_filters}",
        f"o{args.out_filters}",
    ]
    if args.se_ratio is not None:
        parts.append(f"se{args.se_ratio!r}")
    if args.fused:
        parts.append("f1")
    if args.space_to_depth:
        parts.append(f"d{args.space_to_depth}")
    if args.activation is not None:
        parts.append(f"a{ACTIVATIONS.index(args.activation)}")
    if args.space_to_batch:
        parts.append(f"b{args.space_to_batch}")
    if not args.skip:
        parts.append("noskip")
    return "_".join(parts)


def stage_problem(args) -> str | None:
    """Why these stage values are impossible, or None when they are fine."""
    rules = [
        (1 <= args.repeats <= 64, f"key 'r' (repeats) must be in 1..64, got {args.repeats}"),
        (1 <= args.kernel <= 15, f"key 'k' (kernel) must be in 1..15, got {args.kernel}"),
        (args.stride in (1, 2), f"key 's' (stride) must be s11 or s22, got stride {args.stride}"),
        (1 <= args.expand <= 16, f"key 'e' (expansion) must be in 1..16, got {args.expand}"),
        (1 <= args.in_filters <= 8192, f"key 'i' (input filters) must be in 1..8192, got {args.in_filters}"),
        (1 <= args.out_filters <= 8192, f"key 'o' (output filters) must be in 1..8192, got {args.out_filters}"),
        (
            args.se_ratio is None or 0 < args.se_ratio <= 1,
            f"key 'se' must be in (0, 1], got {args.se_ratio} (leave it out for no squeeze-and-excite)",
        ),
        (args.space_to_depth in (0, 1, 2), f"key 'd' takes d1 or d2, got d{args.space_to_depth}"),
        (args.activation in (None, *ACTIVATIONS), f"key 'a' takes a0 (ReLU) or a1 (swish), got {args.activation!r}"),
        (
            args.space_to_batch == 0 or 2 <= args.space_to_batch <= 8,
            f"key 'b' (space-to-batch block) must be in 2..8, got b{args.space_to_batch}",
        ),
        (
            not (args.space_to_batch and args.space_to_depth),
            "space-to-batch (b) and space-to-depth (d) cannot share a stage",
        ),
    ]
    return next((message for ok, message in rules if not ok), None)
