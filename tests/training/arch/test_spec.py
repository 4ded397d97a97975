import json
import re

import pytest

from training.arch.grammar import parse_stage
from training.arch.plan import expand, total_stride
from training.arch.presets import FAMILIES, PRESETS, get_preset, load_spec, preset_names
from training.arch.spec import ModelSpec, round_filters, round_repeats, spec_from_stage_strings
from training.errors import SpecError


def test_there_are_32_presets_8_per_family():
    assert len(PRESETS) == 32
    for family in FAMILIES:
        assert preset_names(family) == [f"{family}-b{i}" for i in range(8)]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_survives_json_round_trip(name):
    spec = PRESETS[name]
    again = ModelSpec.from_json(spec.to_json())
    assert again == spec and again.name == name
    assert again.to_json() == spec.to_json()


def test_reference_rounding_worked_by_hand():
    assert round_filters(32, 1.0) == 32
    assert round_filters(32, 1.1) == 32  # 35.2 -> int(39.2)//8*8 = 32, not below 0.9*35.2
    assert round_filters(40, 1.2) == 48  # 48.0
    assert round_filters(16, 1.05) == 16  # 16.8 -> 16
    assert round_filters(112, 1.4) == 160  # 156.8 -> 160
    assert round_filters(24, 0.3) == 8  # never below the divisor
    assert round_filters(20, 1.0) == 24  # 20 -> int(24)//8*8 = 24
    assert round_filters(36, 1.0) == 40
    assert round_repeats(2, 1.1) == 3 and round_repeats(4, 3.1) == 13 and round_repeats(1, 1.0) == 1


def test_any_number_of_classes_and_resolution():
    spec = get_preset("efficientnet-x-b0", num_classes=10, resolution=241)
    assert spec.num_classes == 10 and spec.resolution == 241
    assert expand(spec).params == expand(PRESETS["efficientnet-x-b0"]).params - 1280 * 990 - 990


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(width=0), "width must be in (0, 16.0]"),
        (dict(width=1e308), "width must be in (0, 16.0]"),
        (dict(depth=float("inf")), "depth must be in (0, 16.0]"),
        (dict(depth=float("nan")), "depth must be in (0, 16.0]"),
        (dict(num_classes=0), "num_classes must be in [1, 100000]"),
        (dict(num_classes=100_000_000_000), "num_classes must be in [1, 100000]"),
        (dict(se_coefficient=1e308), "se_coefficient must be in (0, 16.0]"),
        (dict(se_coefficient=float("nan")), "se_coefficient must be in (0, 16.0]"),
        (dict(head_filters=10**9), "stem_filters and head_filters must be in [1, 16384]"),
        (dict(depth_divisor=0), "depth_divisor must be in [1, 16384]"),
        (dict(activation="gelu"), "activation must be one of relu, swish"),
        (dict(dropout=1.0), "dropout must be in [0, 1)"),
        (dict(resolution=4), "resolution must be in [8, 4096]"),
    ],
)
def test_bad_global_parameters(changes, message):
    with pytest.raises(SpecError, match=re.escape(message)):
        get_preset("efficientnet-b0", **changes)


def test_d2_without_d1_is_refused():
    with pytest.raises(SpecError, match="d2 without d1"):
        spec_from_stage_strings(["r1_k3_s11_e1_i32_o16", "r2_k3_s22_e6_i16_o24_f1_d2"])


def test_two_space_to_depth_regions_are_refused():
    with pytest.raises(SpecError, match="a second d1"):
        spec_from_stage_strings(["r1_k3_s11_e1_i32_o16_d1", "r2_k3_s11_e6_i16_o24_d1"])


def test_d1_with_stride_two_is_refused():
    with pytest.raises(SpecError, match="d1 needs stride s11"):
        spec_from_stage_strings(["r1_k3_s22_e1_i32_o16_d1"])


def test_d2_after_the_region_ended_is_refused():
    with pytest.raises(SpecError, match="already ended"):
        spec_from_stage_strings(["r1_k3_s11_e1_i32_o16_d1", "r1_k3_s22_e6_i16_o24_d2", "r1_k3_s11_e6_i24_o24_d2"])


def test_resolution_below_the_total_stride_is_refused():
    spec = PRESETS["efficientnet-x-b0"]
    assert total_stride(spec) == 32 == total_stride(PRESETS["efficientnet-b0"])
    with pytest.raises(SpecError, match="below the network's total stride 32"):
        expand(spec, 31)
    assert expand(spec, 32).final_size == 1


@pytest.mark.parametrize(
    "data, message",
    [
        ([], "must be a JSON object"),
        ({"stages": []}, "non-empty list"),
        ({"width": 1.0}, "no 'stages'"),
        ({"stages": ["r1_k3_s11_e1_i32_o16"], "colour": "red"}, "unknown spec field(s) colour"),
        ({"stages": ["r1_k3_s11_e1_i32_o16"], "resolution": "224"}, "'resolution' must be int"),
        ({"stages": ["r1_k3_s11_e1_i32_o16"], "schema_version": 9}, "schema_version 9"),
        ({"stages": ["r1_k3_s11_e1_i32_o16_q"]}, "unknown key 'q'"),
    ],
)
def test_bad_spec_json(data, message):
    with pytest.raises(SpecError) as error:
        ModelSpec.from_dict(data)
    assert message in str(error.value)


def test_invalid_json_text():
    with pytest.raises(SpecError, match="not valid JSON"):
        ModelSpec.from_json("{stages: ")


def test_int_is_accepted_where_a_float_is_expected():
    spec = ModelSpec.from_dict({"stages": ["r1_k3_s11_e1_i32_o16"], "width": 1})
    assert spec.width == 1.0 and isinstance(spec.width, float)


def test_unknown_model_lists_the_closest_names():
    with pytest.raises(SpecError) as error:
        get_preset("efficientnet-x-gpu-b8")
    assert "unknown model 'efficientnet-x-gpu-b8'" in str(error.value)
    assert "efficientnet-x-gpu-b" in str(error.value).split("closest:")[1]


def test_load_spec_from_preset_file_and_inline_json(tmp_path):
    spec = get_preset("efficientnet-x-b1", num_classes=7)
    path = tmp_path / "arch.json"
    path.write_text(spec.to_json())
    assert load_spec(str(path)) == spec
    assert load_spec(spec.to_json(indent=None)) == spec
    assert load_spec("efficientnet-x-b1") == PRESETS["efficientnet-x-b1"]
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(str(tmp_path / "missing.json"))
    path.write_text(json.dumps({"stages": ["r1_k3_s11_e1_i32_o16_zz1"]}))
    with pytest.raises(SpecError, match=f"{path}: stage .* unknown key 'zz'"):
        load_spec(str(path))


def test_stage_objects_are_validated_too():
    with pytest.raises(SpecError, match="repeats"):
        ModelSpec(stages=(parse_stage("r1_k3_s11_e1_i32_o16").__class__(0, 3, 1, 1, 32, 16),))
