"""Counts against the reference (facts file section 5) and the X-B0 structure."""

import json

import pytest

from effx_serve.cli import main
from training.arch.plan import expand
from training.arch.presets import PRESETS

REFERENCE = {  # name: (params, GMACs, blocks)
    "efficientnet-b0": (5_288_548, 0.386, 16),
    "efficientnet-b1": (7_794_184, 0.687, 23),
    "efficientnet-b2": (9_109_994, 0.994, 23),
    "efficientnet-b3": (12_233_232, 1.827, 26),
    "efficientnet-b4": (19_341_616, 4.394, 32),
    "efficientnet-b5": (30_389_784, 10.266, 39),
    "efficientnet-b6": (43_040_704, 19.068, 45),
    "efficientnet-b7": (66_347_960, 37.746, 55),
    "efficientnet-x-b0": (7_584_104, 0.920, 16),
    "efficientnet-x-b1": (9_571_024, 1.606, 23),
    "efficientnet-x-b4": (21_144_322, 10.522, 32),
    "efficientnet-x-b7": (73_156_704, 91.787, 55),
    "efficientnet-x-gpu-b3": (16_807_232, 4.262, 29),
    "efficientnet-x-tpu-b3": (15_768_856, 4.207, 29),
}


@pytest.mark.parametrize("name", REFERENCE)
def test_params_exact_macs_within_one_percent_blocks_exact(name):
    params, gmacs, blocks = REFERENCE[name]
    plan = expand(PRESETS[name])
    assert plan.params == params
    assert plan.macs / 1e9 == pytest.approx(gmacs, rel=0.01)
    assert len(plan.blocks) == blocks


def test_x_b0_structure():
    plan = expand(PRESETS["efficientnet-x-b0"])
    layers = {layer.name: layer for layer in plan.layers()}
    sizes = [plan.stem_size] + [stage.out_size for stage in plan.stages]
    assert sizes == [112, 56, 56, 28, 14, 14, 7, 7]  # EfficientNet's 112x112 stage is gone

    b0, b1 = plan.blocks[:2]
    assert (b0.s2d_channels, b0.kernel, b0.mid_channels, b0.se_channels, b0.out_channels) == (128, 2, 128, 32, 64)
    assert (layers["blocks.0.s2d"].in_channels, layers["blocks.0.s2d"].kernel, layers["blocks.0.s2d"].stride) == (32, 2, 2)
    assert layers["blocks.0.dw"].kernel == 2 and b0.out_size == 56 and b0.activation == "relu"
    assert sum(v.params + v.bn_params for k, v in layers.items() if k.startswith("blocks.0.")) == 34_080

    assert b1.fused and b1.stride == 1 and b1.kernel == 3 and b1.activation == "swish"
    assert (b1.in_channels, b1.mid_channels, b1.se_channels, b1.out_channels) == (64, 96, 16, 24)
    assert sum(v.params + v.bn_params for k, v in layers.items() if k.startswith("blocks.1.")) == 61_024

    assert layers["stem"].params + layers["stem"].bn_params == 928
    assert layers["head"].params + layers["head"].bn_params == 412_160
    assert layers["fc"].params == 1_281_000
    assert [b.activation for b in plan.blocks[3:]] == ["swish"] * 2 + ["relu"] * 11


def test_extra_stage_one_repeats_keep_kernel_two_and_get_a_residual():
    plan = expand(PRESETS["efficientnet-x-b4"])  # depth 1.8: stage 1 has 2 blocks
    first, second = plan.stages[0].blocks
    assert first.s2d_channels and not first.residual
    assert second.s2d_channels == 0 and second.kernel == 2 and second.residual
    assert second.in_channels == second.out_channels == 4 * 24


def test_drop_connect_grows_linearly_with_block_index():
    plan = expand(PRESETS["efficientnet-b0"])
    assert [b.drop_path for b in plan.blocks] == pytest.approx([0.2 * i / 16 for i in range(16)])


def test_models_json_lists_every_preset_with_its_counts(capsys):
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 32
    by_name = {row["name"]: row for row in rows}
    for name, (params, gmacs, blocks) in REFERENCE.items():
        row = by_name[name]
        assert {"name", "resolution", "params", "macs", "blocks"} <= set(row)
        assert row["params"] == params and row["blocks"] == blocks
        assert row["macs"] / 1e9 == pytest.approx(gmacs, rel=0.01)
        assert row["resolution"] == PRESETS[name].resolution


def test_models_family_and_resolution_filter(capsys):
    assert main(["models", "--family", "efficientnet-x-tpu", "--resolution", "128", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == [f"efficientnet-x-tpu-b{i}" for i in range(8)]
    assert {r["resolution"] for r in rows} == {128}
    assert rows[0]["macs"] < expand(PRESETS["efficientnet-x-tpu-b0"]).macs


def test_models_table_is_readable(capsys):
    assert main(["models", "--family", "efficientnet"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["model", "res", "params", "GMACs", "blocks", "width", "depth"]
    assert out[1].split()[:3] == ["efficientnet-b0", "224", "5,288,548"]
