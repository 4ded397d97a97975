import math

import pytest
import torch
from torch import nn

from training.optim import LrSchedule, TFRMSprop, build_optimizer, param_groups, set_lr
from training.recipe import Recipe


def one_parameter(values):
    return nn.Parameter(torch.tensor(values, dtype=torch.float64))


def test_tf_rmsprop_matches_a_hand_computed_two_steps():
    w = one_parameter([1.0, -2.0])
    opt = TFRMSprop([w], lr=0.1, decay=0.9, momentum=0.9, eps=1e-3)
    # Step 1 by hand: ms starts at 1 (not 0), eps inside the sqrt, momentum on the lr-scaled update.
    g1 = [0.5, 0.1]
    ms = [0.9 * 1 + 0.1 * g * g for g in g1]
    mom = [0.1 * g / math.sqrt(m + 1e-3) for g, m in zip(g1, ms, strict=True)]
    expected = [1.0 - mom[0], -2.0 - mom[1]]
    w.grad = torch.tensor(g1, dtype=torch.float64)
    opt.step()
    assert w.detach().tolist() == pytest.approx(expected, rel=1e-12)
    # Step 2 at a new lr: the old lr stays inside the momentum buffer (TensorFlow's behaviour).
    set_lr(opt, 0.05)
    g2 = [-0.2, 0.3]
    ms = [0.9 * m + 0.1 * g * g for g, m in zip(g2, ms, strict=True)]
    mom = [0.9 * b + 0.05 * g / math.sqrt(m + 1e-3) for b, g, m in zip(mom, g2, ms, strict=True)]
    expected = [e - b for e, b in zip(expected, mom, strict=True)]
    w.grad = torch.tensor(g2, dtype=torch.float64)
    opt.step()
    assert w.detach().tolist() == pytest.approx(expected, rel=1e-12)
    assert opt.state[w]["square_avg"].tolist() == pytest.approx(ms, rel=1e-12)


def test_tf_rmsprop_differs_from_torch_rmsprop():
    """Torch's (zeros, eps outside the sqrt) makes a first step of about lr * sign(g) / sqrt(1 - decay)."""
    ours, theirs = one_parameter([0.0]), one_parameter([0.0])
    ours.grad, theirs.grad = torch.tensor([1e-3], dtype=torch.float64), torch.tensor([1e-3], dtype=torch.float64)
    TFRMSprop([ours], lr=0.1, momentum=0.0).step()
    torch.optim.RMSprop([theirs], lr=0.1, alpha=0.9, eps=1e-3).step()
    assert abs(ours.item()) == pytest.approx(0.1 * 1e-3 / math.sqrt(0.9 + 1e-7 + 1e-3), rel=1e-6)
    assert abs(theirs.item()) > 100 * abs(ours.item())


def test_weight_decay_is_l2_added_to_the_gradient_and_momentum_zero_works():
    w = one_parameter([2.0])
    w.grad = torch.tensor([0.0], dtype=torch.float64)
    TFRMSprop([w], lr=0.1, momentum=0.0, weight_decay=0.5).step()
    g = 0.5 * 2.0
    assert w.item() == pytest.approx(2.0 - 0.1 * g / math.sqrt(0.9 + 0.1 * g * g + 1e-3), rel=1e-12)


def test_weight_decay_skips_batchnorm_and_biases():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    decay, no_decay = param_groups(model, 1e-5)
    assert decay["weight_decay"] == 1e-5 and no_decay["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 3, 3, 3]), torch.Size([2, 4])]
    assert [p.shape for p in no_decay["params"]] == [torch.Size([4]), torch.Size([4]), torch.Size([2])]


def test_build_optimizer_kinds():
    model = nn.Linear(3, 2)
    rms, schedule = build_optimizer(model, Recipe(), steps_per_epoch=10)
    assert isinstance(rms, TFRMSprop) and rms.param_groups[0]["eps"] == 1e-3 and rms.param_groups[0]["lr"] == schedule(0)
    sgd, _ = build_optimizer(model, Recipe(optimizer="sgd"), steps_per_epoch=10)
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["nesterov"] and sgd.param_groups[0]["momentum"] == 0.9
    adamw, _ = build_optimizer(model, Recipe.small_data(), steps_per_epoch=10)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["betas"] == (0.9, 0.999)
    assert [g["weight_decay"] for g in adamw.param_groups] == [0.05, 0.0]  # decoupled decay, weights only


def test_exponential_schedule_at_warmup_end_and_decay_points():
    recipe = Recipe(batch_size=512, schedule="exponential", epochs=20, warmup_epochs=2)
    schedule = LrSchedule.from_recipe(recipe, steps_per_epoch=100)
    peak = 0.016 * 2
    assert schedule(0) == pytest.approx(peak / 200)
    assert schedule(99) == pytest.approx(peak / 2)
    assert schedule(199) == pytest.approx(peak)  # the last warm-up step reaches the peak
    assert schedule(200) == pytest.approx(peak)  # decay counts from step 0: 200 < 240, no drop yet
    assert schedule(239) == pytest.approx(peak)
    assert schedule(240) == pytest.approx(peak * 0.97)  # staircase: a 3% drop every 2.4 epochs
    assert schedule(479) == pytest.approx(peak * 0.97)
    assert schedule(480) == pytest.approx(peak * 0.97**2)
    assert schedule(1999) == pytest.approx(peak * 0.97**8)


def test_reference_warmup_ends_below_the_peak_as_in_the_reference():
    schedule = LrSchedule.from_recipe(Recipe.reference(), steps_per_epoch=100)
    assert schedule(499) == pytest.approx(0.128)
    assert schedule(500) == pytest.approx(0.128 * 0.97**2)  # 5 epochs = 2 decays of 2.4 epochs


def test_cosine_schedule():
    schedule = LrSchedule.from_recipe(Recipe(batch_size=256, epochs=10, warmup_epochs=2), steps_per_epoch=100)
    assert schedule(199) == pytest.approx(0.016)
    assert schedule(200) == pytest.approx(0.016)
    assert schedule(600) == pytest.approx(0.008)  # half way through the decay
    assert schedule(999) == pytest.approx(0.016 * 0.5 * (1 + math.cos(math.pi * 799 / 800)))
    assert schedule(5000) == pytest.approx(0.0)
    assert all(schedule(s) >= schedule(s + 1) for s in range(200, 1000))


def test_no_warmup_starts_at_the_peak():
    schedule = LrSchedule.from_recipe(Recipe(batch_size=256, warmup_epochs=0, epochs=3), steps_per_epoch=7)
    assert schedule(0) == pytest.approx(0.016)
    with pytest.raises(ValueError):
        LrSchedule.from_recipe(Recipe(), steps_per_epoch=0)
