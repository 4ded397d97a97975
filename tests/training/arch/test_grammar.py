import pytest
from hypothesis import given
from hypothesis import strategies as st

from training.arch.grammar import StageArgs, format_stage, parse_stage
from training.arch.presets import EFFICIENTNET_STAGES, EFFICIENTNET_X_STAGES
from training.errors import SpecError


@pytest.mark.parametrize("text", EFFICIENTNET_STAGES + EFFICIENTNET_X_STAGES)
def test_reference_stage_strings_round_trip_exactly(text):
    assert format_stage(parse_stage(text)) == text


def test_fields_of_a_fused_space_to_depth_stage():
    stage = parse_stage("r2_k3_s22_e6_i16_o24_se0.25_f1_d2_a1")
    assert stage == StageArgs(repeats=2, kernel=3, stride=2, expand=6, in_filters=16, out_filters=24,
                              se_ratio=0.25, fused=True, space_to_depth=2, activation="swish")


def test_keys_in_any_order_print_canonically():
    assert format_stage(parse_stage("noskip_a0_se0.5_o8_i8_e1_s11_k5_r3")) == "r3_k5_s11_e1_i8_o8_se0.5_a0_noskip"


def test_space_to_batch_key():
    stage = parse_stage("r1_k3_s22_e4_i16_o24_b2")
    assert stage.space_to_batch == 2
    assert format_stage(stage).endswith("_b2")


stages = st.builds(
    StageArgs,
    repeats=st.integers(1, 9),
    kernel=st.integers(1, 7),
    stride=st.sampled_from([1, 2]),
    expand=st.integers(1, 8),
    in_filters=st.integers(1, 512),
    out_filters=st.integers(1, 512),
    se_ratio=st.one_of(st.none(), st.floats(min_value=0.001, max_value=1.0)),
    fused=st.booleans(),
    space_to_depth=st.just(0),
    activation=st.sampled_from([None, "relu", "swish"]),
    space_to_batch=st.sampled_from([0, 2, 3]),
    skip=st.booleans(),
)


@given(stages)
def test_any_valid_stage_survives_print_and_parse(stage):
    assert parse_stage(format_stage(stage)) == stage


@pytest.mark.parametrize(
    "text, message",
    [
        ("r1_k3_s11_e1_i32_o16_x5", "unknown key 'x'"),
        ("r1_k3_s11_e1_i32", "missing required key 'o'"),
        ("r1_k3_s11_e1_i32_o16_r2", "key 'r' appears twice"),
        ("r1.5_k3_s11_e1_i32_o16", "key 'r' needs an integer, got '1.5'"),
        ("r1_k3_s11_e1_i32_o16_sefoo", "key 'se' needs a number, got 'foo'"),
        ("r1_k3_s2_e1_i32_o16", "key 's' needs two digits"),
        ("r1_k3_s12_e1_i32_o16", "must be square"),
        ("r1_k3_s33_e1_i32_o16", "must be s11 or s22"),
        ("r0_k3_s11_e1_i32_o16", "key 'r' (repeats) must be in 1..64, got 0"),
        ("r99999999_k3_s11_e1_i32_o16", "must be in 1..64"),
        ("r1_k99999_s11_e1_i32_o16", "key 'k' (kernel) must be in 1..15"),
        ("r1_k3_s11_e0_i32_o16", "key 'e' (expansion) must be in 1..16"),
        ("r1_k3_s11_e1_i32_o16_se1.5", "key 'se' must be in (0, 1]"),
        ("r1_k3_s11_e1_i32_o16_d3", "key 'd' takes d0 or d1 or d2"),
        ("r1_k3_s11_e1_i32_o16_a2", "key 'a' takes a0 or a1"),
        ("r1_k3_s11_e1_i32_o16_b1", "key 'b' (space-to-batch block) must be in 2..8"),
        ("r1_k3_s11_e1_i32_o16_b99999", "must be in 2..8"),
        ("r1_k3_s11_e1_i32_o16_b2_d1", "cannot share a stage"),
        ("r1_k3_s11_e1_i32_o16_noskip1", "'noskip' takes no value"),
        ("r1_s11_e1_i32_o16_k", "key 'k' needs a value"),
        ("r1__k3", "cannot read ''"),
        ("", "empty stage string"),
    ],
)
def test_malformed_stages_name_the_key_and_the_stage(text, message):
    with pytest.raises(SpecError) as error:
        parse_stage(text)
    assert message in str(error.value)
    if text:
        assert f"'{text}'" in str(error.value)
