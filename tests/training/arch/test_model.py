import pytest
import torch
from torch import nn

from training.arch.layers import Conv2dSame, SpaceToBatchStage, tf_same_padding
from training.arch.model import MBConvBlock, build_model, count_parameters
from training.arch.plan import expand
from training.arch.presets import PRESETS, get_preset
from training.arch.spec import spec_from_stage_strings

torch.manual_seed(0)


def tiny(name="efficientnet-x-b0", **changes):
    """Low width and depth, 10 classes: fast enough for shape tests on 2 cores."""
    return get_preset(name, width=0.25, depth=0.5, num_classes=10, **changes)


@pytest.mark.parametrize("name", ["efficientnet-b0", "efficientnet-x-b0", "efficientnet-x-tpu-b1", "efficientnet-x-gpu-b3"])
def test_torch_parameters_equal_the_plan(name):
    assert count_parameters(build_model(PRESETS[name])) == expand(PRESETS[name]).params


@pytest.mark.parametrize("resolution", [32, 64, 65, 97, 229, 241])
@pytest.mark.parametrize("name", ["efficientnet-b0", "efficientnet-x-b0"])
def test_forward_shapes_at_odd_and_even_resolutions(name, resolution):
    spec = tiny(name, resolution=resolution)
    model = build_model(spec).eval()
    plan = expand(spec)
    with torch.no_grad():
        x = torch.randn(2, 3, resolution, resolution)
        features = model.stages(model.stem(x))
        logits = model(x)
    assert features.shape[-1] == plan.final_size == features.shape[-2]
    assert features.shape[1] == plan.stages[-1].blocks[-1].out_channels
    assert logits.shape == (2, 10)


def test_x_b0_modules_have_the_reference_structure():
    model = build_model(PRESETS["efficientnet-x-b0"]).eval()
    block0 = model.stages[0][0].body
    s2d_conv, dw_conv = block0[0][0], block0[1][0]
    assert (s2d_conv.in_channels, s2d_conv.out_channels, s2d_conv.kernel_size, s2d_conv.stride) == (32, 128, (2, 2), (2, 2))
    assert dw_conv.groups == 128 and dw_conv.kernel_size == (2, 2)
    se = block0[2]
    assert (se.reduce.in_channels, se.reduce.out_channels, se.expand.out_channels) == (128, 32, 128)
    assert isinstance(block0[0][2], nn.ReLU)
    fused = model.stages[1][0].body[0][0]
    assert (fused.in_channels, fused.out_channels, fused.kernel_size, fused.stride) == (64, 96, (3, 3), (1, 1))
    assert isinstance(model.stages[1][0].body[0][2], nn.SiLU)
    bn = model.stem[1]
    assert bn.eps == 1e-3 and bn.momentum == 0.01
    with torch.no_grad():
        out = model.stages[0](model.stem(torch.randn(1, 3, 224, 224)))
    assert out.shape == (1, 64, 56, 56)


def test_tf_same_padding_puts_the_odd_pixel_at_the_end():
    assert tf_same_padding(224, 3, 2) == (0, 1)
    assert tf_same_padding(225, 3, 2) == (1, 1)
    assert tf_same_padding(56, 2, 1) == (0, 1)
    assert tf_same_padding(56, 5, 1) == (2, 2)
    conv = Conv2dSame(1, 1, 2, 1)
    nn.init.ones_(conv.weight)
    x = torch.zeros(1, 1, 3, 3)
    x[0, 0, 2, 2] = 1.0  # bottom-right pixel: only the window starting on it sees the zero padding
    out = conv(x)
    assert out.shape == (1, 1, 3, 3)
    assert out[0, 0, 2, 2] == 1.0 and out[0, 0, 1, 1] == 1.0 and out[0, 0, 0, 0] == 0.0


def test_drop_connect_only_in_training():
    spec = tiny("efficientnet-b0", resolution=64).with_(drop_connect=0.9, dropout=0.0)
    model = build_model(spec)
    x = torch.randn(4, 3, 64, 64)
    model.eval()  # features, not logits: the classifier starts at zero, so every logit is 0 before training
    with torch.no_grad():
        assert torch.equal(model.features(x), model.features(x))
    model.train()
    torch.manual_seed(1)
    with torch.no_grad():
        a = model.features(x)
        b = model.features(x)
    assert not torch.equal(a, b)


def test_initialisation_follows_the_reference_except_a_zero_classifier():
    model = build_model(get_preset("efficientnet-b0", num_classes=100))
    head_conv = model.head[0]
    expected = (2.0 / (1 * 1 * head_conv.out_channels)) ** 0.5
    assert head_conv.weight.std().item() == pytest.approx(expected, rel=0.05)
    assert torch.count_nonzero(model.fc.weight) == 0
    assert torch.count_nonzero(model.fc.bias) == 0


def test_zero_init_residual_makes_every_residual_block_the_identity_and_leaves_the_rest():
    model = build_model(get_preset("efficientnet-x-b0", width=0.5, depth=0.34, resolution=48, num_classes=10)).eval()
    model.zero_init_residual()
    blocks = [m for m in model.modules() if isinstance(m, MBConvBlock)]
    residual, plain = [b for b in blocks if b.residual], [b for b in blocks if not b.residual]
    assert residual and plain
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        for block in blocks:
            channels = block.body[0][0].in_channels
            entering = torch.randn(2, channels, 12, 12)
            if block.residual:
                assert torch.equal(block(entering), entering)  # adds nothing until trained
            else:
                assert block.body[-1][1].weight.abs().min() > 0  # the reference's BN scales: ones
        assert torch.isfinite(model(x)).all()


def test_space_to_batch_with_identity_body_is_the_identity():
    for size in (8, 9):
        stage = SpaceToBatchStage(nn.Identity(), block=2, stride=1)
        x = torch.randn(3, 5, size, size)
        assert torch.equal(stage(x), x)


def test_space_to_batch_puts_interleaved_pixels_in_the_batch():
    seen = []

    class Record(nn.Module):
        def forward(self, x):
            seen.append(x.clone())
            return x

    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    SpaceToBatchStage(Record(), block=2, stride=1)(x)
    assert seen[0].shape == (4, 1, 2, 2)
    assert seen[0][0, 0].tolist() == [[0.0, 2.0], [8.0, 10.0]]  # sub-image (0, 0): even rows and columns
    assert seen[0][3, 0].tolist() == [[5.0, 7.0], [13.0, 15.0]]


def test_space_to_batch_changes_the_network_not_just_a_flag():
    stages = ["r1_k3_s11_e1_i32_o16_se0.25", "r2_k3_s22_e6_i16_o24_se0.25", "r1_k3_s22_e6_i24_o40"]
    plain = spec_from_stage_strings(stages, width=0.5, resolution=65, num_classes=5)
    s2b = spec_from_stage_strings([stages[0], stages[1] + "_b2", stages[2]], width=0.5, resolution=65, num_classes=5)
    torch.manual_seed(0)
    a = build_model(plain).eval()
    torch.manual_seed(0)
    b = build_model(s2b).eval()
    assert count_parameters(a) == count_parameters(b) == expand(s2b).params
    assert isinstance(b.stages[1], SpaceToBatchStage)
    x = torch.randn(2, 3, 65, 65)
    with torch.no_grad():
        out_a, out_b = a.stages(a.stem(x)), b.stages(b.stem(x))
    assert out_a.shape == out_b.shape == (2, expand(s2b).stages[-1].blocks[-1].out_channels, 9, 9)
    assert not torch.allclose(out_a, out_b)
    layers = [layer.kind for layer in expand(s2b).layers()]
    assert "s2b" in layers and "b2s" in layers
    assert expand(s2b).macs > expand(plain).macs  # padding 33 -> 34 adds work inside the stage
