"""Named presets: EfficientNet-B0..B7 and the EfficientNet-X families of the reference code.

Family tables are (width, depth, resolution, dropout, se_coefficient), from the reference builders
(tensorflow/tpu models/official/efficientnet), in the corrected width-first order.
"""

from __future__ import annotations

import difflib

from training.arch.grammar import parse_stage
from training.arch.spec import ModelSpec
from training.errors import SpecError

EFFICIENTNET_STAGES = (
    "r1_k3_s11_e1_i32_o16_se0.25",
    "r2_k3_s22_e6_i16_o24_se0.25",
    "r2_k5_s22_e6_i24_o40_se0.25",
    "r3_k3_s22_e6_i40_o80_se0.25",
    "r3_k5_s11_e6_i80_o112_se0.25",
    "r4_k5_s22_e6_i112_o192_se0.25",
    "r1_k3_s11_e6_i192_o320_se0.25",
)

EFFICIENTNET_X_STAGES = (
    "r1_k3_s11_e1_i32_o16_se0.25_d1_a0",
    "r2_k3_s22_e6_i16_o24_se0.25_f1_d2_a1",
    "r2_k5_s22_e6_i24_o40_se0.25_f1_a1",
    "r3_k3_s22_e6_i40_o80_se0.25_a0",
    "r3_k5_s11_e6_i80_o112_se0.25_a0",
    "r4_k5_s22_e6_i112_o192_se0.25_a0",
    "r1_k3_s11_e6_i192_o320_se0.25_a0",
)

_EFFICIENTNET = {
    "b0": (1.0, 1.0, 224, 0.2),
    "b1": (1.0, 1.1, 240, 0.2),
    "b2": (1.1, 1.2, 260, 0.3),
    "b3": (1.2, 1.4, 300, 0.3),
    "b4": (1.4, 1.8, 380, 0.4),
    "b5": (1.6, 2.2, 456, 0.4),
    "b6": (1.8, 2.6, 528, 0.5),
    "b7": (2.0, 3.1, 600, 0.5),
}
# se_coefficient of the X families, per member.
_X_SE = {"b0": 4, "b1": 2}
# The LACS tables (width, depth, resolution); b0 is the searched base, shared with efficientnet-x.
_X_TPU = {
    "b1": (1.05, 1.09, 229),
    "b2": (1.13, 1.29, 244),
    "b3": (1.27, 1.62, 263),
    "b4": (1.54, 2.38, 299),
    "b5": (1.96, 2.76, 332),
    "b6": (2.75, 3.01, 328),
    "b7": (3.26, 3.44, 350),
}
_X_GPU = {
    "b1": (1.05, 1.09, 229),
    "b2": (1.13, 1.24, 237),
    "b3": (1.31, 1.63, 255),
    "b4": (1.63, 2.4, 282),
    "b5": (1.94, 3.29, 306),
    "b6": (2.25, 4.28, 328),
    "b7": (2.58, 5.46, 350),
}

FAMILIES = ("efficientnet", "efficientnet-x", "efficientnet-x-tpu", "efficientnet-x-gpu")


def _table(family: str) -> dict[str, tuple[float, float, int, float]]:
    if family == "efficientnet":
        return _EFFICIENTNET
    lacs = {"efficientnet-x": {}, "efficientnet-x-tpu": _X_TPU, "efficientnet-x-gpu": _X_GPU}[family]
    return {
        member: (*lacs.get(member, (w, d, r)), dropout)
        for member, (w, d, r, dropout) in _EFFICIENTNET.items()
    }


def _build_presets() -> dict[str, ModelSpec]:
    presets = {}
    for family in FAMILIES:
        x = family != "efficientnet"
        stages = tuple(parse_stage(s) for s in (EFFICIENTNET_X_STAGES if x else EFFICIENTNET_STAGES))
        for member, (width, depth, resolution, dropout) in _table(family).items():
            name = f"{family}-{member}"
            presets[name] = ModelSpec(
                stages=stages,
                width=width,
                depth=depth,
                resolution=resolution,
                dropout=dropout,
                se_coefficient=float(_X_SE.get(member, 1)) if x else 1.0,
                activation="relu" if x else "swish",
                name=name,
            )
    return presets


PRESETS: dict[str, ModelSpec] = _build_presets()


def preset_names(family: str | None = None) -> list[str]:
    if family is not None and family not in FAMILIES:
        raise SpecError(f"unknown family '{family}' (known: {', '.join(FAMILIES)})")
    return [name for name in PRESETS if family is None or name.rsplit("-", 1)[0] == family]


def get_preset(name: str, **overrides) -> ModelSpec:
    """A named preset, optionally with global parameters changed (e.g. num_classes, resolution)."""
    key = name.strip().lower()
    if key not in PRESETS:
        close = difflib.get_close_matches(key, PRESETS, n=4, cutoff=0.5)
        hint = f"; closest: {', '.join(close)}" if close else f"; known families: {', '.join(FAMILIES)} (b0..b7)"
        raise SpecError(f"unknown model '{name}'{hint}")
    spec = PRESETS[key]
    return spec.with_(**overrides) if overrides else spec


def load_spec(ref: str) -> ModelSpec:
    """A preset name, a path to a spec JSON file, or inline spec JSON."""
    from pathlib import Path

    text = ref.strip()
    if text[:1] in ("{", "[", '"'):
        return ModelSpec.from_json(text)
    if text.endswith(".json") or "/" in text:
        path = Path(text)
        if path.is_dir():
            raise SpecError(f"spec file {path} is a directory")
        try:
            return ModelSpec.from_json(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SpecError(f"spec file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as error:
            raise SpecError(f"spec file {path} cannot be read: {getattr(error, 'strerror', None) or error}") from None
        except SpecError as error:
            raise SpecError(f"{path}: {error}") from None
    return get_preset(text)
