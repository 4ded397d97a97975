import json
import re

import pytest

from training.errors import SpecError
from training.recipe import RESUMABLE_CHANGES, Recipe


def test_defaults_are_the_reference_parts_sized_for_small_data():
    recipe = Recipe()
    assert (recipe.optimizer, recipe.base_lr, recipe.momentum, recipe.rmsprop_decay, recipe.rmsprop_eps) == ("rmsprop", 0.016, 0.9, 0.9, 1e-3)
    assert (recipe.weight_decay, recipe.label_smoothing, recipe.ema_decay) == (1e-5, 0.1, 0.9998)
    assert (recipe.lr_decay_rate, recipe.lr_decay_epochs) == (0.97, 2.4)
    assert recipe.precision == "auto" and recipe.channels_last == "auto"


def test_lr_follows_the_linear_scaling_rule():
    assert Recipe(batch_size=256).lr == pytest.approx(0.016)
    assert Recipe(batch_size=64).lr == pytest.approx(0.004)
    assert Recipe(batch_size=1024, base_lr=0.1).lr == pytest.approx(0.4)


def test_reference_recipe():
    recipe = Recipe.reference()
    assert (recipe.schedule, recipe.warmup_epochs, recipe.epochs, recipe.ema_decay) == ("exponential", 5.0, 350, 0.9999)
    assert recipe.lr == pytest.approx(0.128)
    assert Recipe.reference(epochs=10).epochs == 10


def test_dict_and_json_round_trip():
    recipe = Recipe(optimizer="sgd", schedule="exponential", epochs=7, seed=3, ema_warmup=False, zero_init_residual=True)
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    assert Recipe.from_json(recipe.to_json()) == recipe
    assert json.loads(recipe.to_json())["optimizer"] == "sgd"


def test_missing_keys_take_defaults_and_ints_are_accepted_as_floats():
    recipe = Recipe.from_dict({"epochs": 3, "base_lr": 1})
    assert recipe.epochs == 3 and recipe.base_lr == 1.0 and isinstance(recipe.base_lr, float)
    assert recipe.batch_size == Recipe().batch_size


@pytest.mark.parametrize(
    "data, message",
    [
        ({"epoch": 3}, "unknown recipe field(s) epoch"),
        ({"batch_size": "64"}, "recipe field 'batch_size' must be int, got \"64\""),
        ({"epochs": 2.5}, "recipe field 'epochs' must be int, got 2.5"),
        ({"epochs": True}, "recipe field 'epochs' must be int, got true"),
        ({"ema_warmup": 1}, "recipe field 'ema_warmup' must be bool, got 1"),
        ({"zero_init_residual": "yes"}, "recipe field 'zero_init_residual' must be bool"),
        ({"optimizer": 3}, "recipe field 'optimizer' must be str"),
        ({"optimizer": "adam"}, "optimizer must be one of rmsprop, sgd"),
        ({"schedule": "step"}, "schedule must be one of exponential, cosine"),
        ({"precision": "fp8"}, "precision must be one of auto, fp32, bf16, fp16"),
        ({"channels_last": "yes"}, "channels_last must be one of auto, on, off"),
        ({"momentum": 1.0}, "momentum must be in [0, 1)"),
        ({"ema_decay": 1}, "ema_decay must be in [0, 1)"),
        ({"base_lr": 0}, "base_lr must be in (0, 10]"),
        ({"base_lr": float("nan")}, "base_lr must be a finite number"),
        ({"batch_size": 0}, "batch_size must be in [1,"),
        ({"epochs": 0}, "epochs must be in [1, 100000]"),
        ({"epochs": 2, "warmup_epochs": 3}, "warmup_epochs must be in [0, epochs=2]"),
        ({"label_smoothing": 1.0}, "label_smoothing must be in [0, 1)"),
        ({"num_workers": -1}, "num_workers must be in [0, 256]"),
        ({"lr_decay_rate": 1.5}, "lr_decay_rate must be in (0, 1]"),
    ],
)
def test_bad_recipes_are_one_line_spec_errors(data, message):
    with pytest.raises(SpecError, match=re.escape(message)) as error:
        Recipe.from_dict(data)
    assert "\n" not in str(error.value)


def test_not_an_object():
    with pytest.raises(SpecError, match="must be a JSON object"):
        Recipe.from_dict([1, 2])
    with pytest.raises(SpecError, match="not valid JSON"):
        Recipe.from_json("{epochs: 3")


def test_construction_validates_too():
    with pytest.raises(SpecError, match="recipe: rmsprop_eps"):
        Recipe(rmsprop_eps=0.0)
    with pytest.raises(SpecError, match="momentum"):
        Recipe().with_(momentum=-0.1)


def test_differences_ignore_what_a_resume_may_change():
    old, new = Recipe(epochs=10, num_workers=0), Recipe(epochs=20, num_workers=8, base_lr=0.032)
    assert old.differences(new, ignore=RESUMABLE_CHANGES) == ["base_lr: 0.016 -> 0.032"]
    assert len(old.differences(new)) == 3
