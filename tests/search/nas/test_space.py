import random

import pytest

from search.nas.space import B0_POINT, X_B0_POINT, SearchSpace, decode, point_hash, random_specs
from training.arch.plan import expand
from training.arch.presets import PRESETS
from training.errors import SpecError


@pytest.mark.parametrize("point, name", [(B0_POINT, "efficientnet-b0"), (X_B0_POINT, "efficientnet-x-b0")])
def test_the_reference_base_models_are_points_of_the_space(point, name):
    reference = PRESETS[name]
    assert decode(point, se_coefficient=reference.se_coefficient).arch_hash() == reference.arch_hash()


def test_samples_and_mutations_decode_to_buildable_specs():
    space, rng = SearchSpace(), random.Random(0)
    for _ in range(100):
        point = space.sample(rng)
        child = space.mutate(point, rng)
        assert child != point and point_hash(child) != point_hash(point)
        for spec in (decode(point), decode(child)):
            assert expand(spec, 64).params > 0


def test_point_hash_is_stable_and_ignores_key_order():
    reordered = {key: X_B0_POINT[key] for key in reversed(list(X_B0_POINT))}
    assert point_hash(reordered) == point_hash(X_B0_POINT)
    assert point_hash(B0_POINT) == point_hash(dict(B0_POINT)) != point_hash(X_B0_POINT)


def test_decisions_reach_the_spec():
    point = {**B0_POINT, "space_to_batch": True, "stages": [dict(s) for s in B0_POINT["stages"]]}
    point["stages"][3] |= {"block": "fused", "kernel": 5, "width": 1.25, "repeats": 1, "activation": "relu"}
    spec = decode(point)
    stage = spec.stages[3]
    assert stage.fused and stage.kernel == 5 and stage.out_filters == 104 and stage.repeats == 4 and stage.activation == "relu"
    assert spec.stages[4].in_filters == 104 and spec.stages[1].space_to_batch == 2


@pytest.mark.parametrize("change, message", [
    ({"space_to_depth": "yes"}, "'space_to_depth' = 'yes' is not one of"),
    ({"colour": 1}, "unknown choice 'colour'"),
    ({"stages": []}, "needs 7 stages"),
])
def test_bad_points_are_clear_errors(change, message):
    with pytest.raises(SpecError, match=message):
        decode({**B0_POINT, **change})
    bad_stage = {**B0_POINT, "stages": [{**B0_POINT["stages"][0], "kernel": 7}, *B0_POINT["stages"][1:]]}
    with pytest.raises(SpecError, match="stage 1: 'kernel' = 7"):
        decode(bad_stage)


def test_random_specs_are_reproducible():
    first, second = random_specs(5, seed=7), random_specs(5, seed=7)
    assert [s.arch_hash() for s in first] == [s.arch_hash() for s in second]
    assert len({s.arch_hash() for s in first}) == 5
