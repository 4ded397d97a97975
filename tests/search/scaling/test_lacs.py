import json
import math

import pytest

from search.noise import Margin, Spread, means_difference_std, pooled_std
from search.scaling.lacs import (
    DEFAULT_PHIS,
    Coefficients,
    best,
    coefficient_grid,
    family,
    member_row,
    refine,
    reward,
    scale,
    search,
)
from tests.helpers import ROOT
from training.arch.presets import PRESETS, get_preset
from training.errors import SpecError

X_B0 = PRESETS["efficientnet-x-b0"]


def test_grid_obeys_the_constraint_and_the_step():
    grid = coefficient_grid(step=0.1, tolerance=0.1)
    assert grid and all(min(c.astuple()) >= 1.0 and abs(c.cost - 2.0) <= 0.1 for c in grid)
    assert all(math.isclose(round(v * 10), v * 10, abs_tol=1e-9) for c in grid for v in c.astuple())
    assert Coefficients(1.2, 1.1, 1.2) in grid or Coefficients(1.2, 1.1, 1.1) not in grid  # membership is by the constraint
    finer = coefficient_grid(step=0.05)
    assert len(finer) > len(grid)
    with pytest.raises(SpecError, match="grid step"):
        coefficient_grid(step=0)
    with pytest.raises(SpecError, match=r"grid step must be in \[0.01, 0.5\]"):
        coefficient_grid(step=1e-7)
    with pytest.raises(SpecError, match="no \\(alpha, beta, gamma\\)"):
        coefficient_grid(step=0.5, tolerance=0.01, target=1.3)


def test_refine_stays_near_the_centre_on_the_constraint():
    centre = Coefficients(1.2, 1.1, 1.15)
    around = refine(centre, step=0.025)
    assert around and all(abs(c.cost - 2.0) <= 0.05 for c in around)
    assert all(abs(a - b) <= 0.05 + 1e-9 for c in around for a, b in zip(c.astuple(), centre.astuple(), strict=True))


def test_scale_by_hand():
    # phi = 0.97 with the paper's GPU coefficients: depth 1.28^0.97 = 1.2706, width 1.17^0.97 = 1.1645, resolution 224 * 1.07^0.97 = 239.0
    member = scale(X_B0, Coefficients(1.28, 1.17, 1.07), 0.97, "x-gpu-b2")
    assert (member.depth, member.width, member.resolution, member.name) == (1.27, 1.16, 239, "x-gpu-b2")
    assert scale(X_B0, Coefficients(1.28, 1.17, 1.07), 0.0) .with_(name=X_B0.name) == X_B0


def test_family_rows_by_hand():
    members = family(X_B0, Coefficients(1.2, 1.1, 1.15), prefix="demo")
    assert [m.name for m in members] == [f"demo-b{i}" for i in range(8)]
    rows = [member_row(m, phi) for m, phi in zip(members, DEFAULT_PHIS, strict=True)]
    # phi 6.48: depth 1.2^6.48 = 3.26, width 1.1^6.48 = 1.85, resolution 224 * 1.15^6.48 = 554
    assert (rows[-1]["depth"], rows[-1]["width"], rows[-1]["resolution"]) == (3.26, 1.85, 554)
    assert rows[0]["blocks"] == 16 and rows[0]["params"] == 7_584_104
    assert all(a["macs"] < b["macs"] and a["blocks"] <= b["blocks"] for a, b in zip(rows, rows[1:], strict=False))
    assert set(rows[0]) >= {"name", "depth", "width", "resolution", "blocks", "params", "macs"}


@pytest.mark.parametrize("text, message", [("1.2,1.1", "three numbers"), ("a,b,c", "three numbers"), ("0.9,1.1,1.1", "alpha must be"),
                                           ("1.2,nan,1.1", "beta must be")])
def test_bad_coefficients(text, message):
    with pytest.raises(SpecError, match=message):
        Coefficients.parse(text)


def test_reward_arithmetic():
    assert reward(0.8, 10.0, 10.0) == pytest.approx(0.8)
    assert reward(0.8, 20.0, 10.0) == pytest.approx(0.8 * 2**-0.07)  # twice as slow: about 5% less reward
    assert reward(0.8, 5.0, 10.0, w_below=0.0, w_above=-1.0) == pytest.approx(0.8)  # hard constraint, met
    assert reward(0.8, 20.0, 10.0, w_below=0.0, w_above=-1.0) == pytest.approx(0.4)
    with pytest.raises(SpecError, match="positive"):
        reward(0.8, 0.0, 10.0)


def test_search_ranks_by_reward_and_reports_the_accuracy_only_winner():
    """Synthetic evaluators: accuracy grows with every dimension, latency grows fastest with resolution.
    The accuracy-only winner takes the most resolution; LACS trades it for depth, as the paper found."""
    def accuracy_of(spec):
        return 0.5 + 0.1 * math.log(spec.depth) + 0.1 * math.log(spec.width) + 0.3 * math.log(spec.resolution / 224)

    def latency_of(spec):
        return 10.0 * spec.depth * spec.width**2 * (spec.resolution / 224) ** 6

    seen = []
    trials = search(X_B0, accuracy_of, latency_of, target_ms=15.0, grid=coefficient_grid(0.1), fine_step=0.05, top_k=2,
                    w=-0.5, progress=seen.append)
    assert len(seen) == len(trials) and {t.stage for t in trials} == {"coarse", "fine"}
    assert len({t.coefficients for t in trials}) == len(trials)  # nothing evaluated twice
    lacs, accuracy_only = best(trials), best(trials, "accuracy")
    assert lacs.reward == max(t.reward for t in trials)
    assert accuracy_only.accuracy == max(t.accuracy for t in trials)
    assert lacs.coefficients.gamma < accuracy_only.coefficients.gamma and lacs.latency_ms < accuracy_only.latency_ms


def test_family_command(capsys):
    from effx_serve.cli import main

    assert main(["family", "--base", "efficientnet-x-b0", "--coefficients", "1.28,1.17,1.07", "--phis", "0,0.97", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["depth"], r["width"], r["resolution"]) for r in rows] == [
        ("efficientnet-x-b0-b0", 1.0, 1.0, 224), ("efficientnet-x-b0-b1", 1.27, 1.16, 239)]
    assert main(["family", "--base", "efficientnet-x-b0", "--coefficients", "1.28,1.17"]) == 2
    assert "three numbers" in capsys.readouterr().err


def test_lacs_job_writes_trials_winners_and_both_families(tmp_path):
    from search.scaling.job import LacsSettings, run
    from training.arch.family_file import read_family

    calls = []

    def accuracy_of(spec):
        calls.append(spec.name)
        return 0.5 + 0.1 * math.log(spec.depth) + 0.3 * math.log(spec.resolution / 224)

    def latency_of(spec):
        return 10.0 * spec.depth * spec.width**2 * (spec.resolution / 224) ** 6

    settings = LacsSettings(grid_step=0.25, tolerance=0.25, fine_step=None, w=-0.5, phis=(0.0, 1.0, 2.0))
    result = run(X_B0, tmp_path / "lacs", accuracy_of, latency_of, "cpu-test", settings, say=lambda line: None)
    saved = json.loads((tmp_path / "lacs" / "lacs.json").read_text())
    assert saved["lacs"] == result["lacs"] and len(saved["trials"]) == len(calls) == len(coefficient_grid(0.25, tolerance=0.25))
    assert saved["target_ms"] == pytest.approx(latency_of(scale(X_B0, Coefficients(1.2, 1.1, 1.15), 1.0)))
    family_file = read_family(tmp_path / "lacs" / "family.json")
    members = family_file["members"]
    assert [m["phi"] for m in members] == [0.0, 1.0, 2.0] and members[0]["spec"]["resolution"] == 224
    assert all(a["expected_latency_ms"] < b["expected_latency_ms"] for a, b in zip(members, members[1:], strict=False))
    assert tuple(family_file["coefficients"]) == tuple(saved["lacs"]["coefficients"])
    assert len(family_file["accuracy_only"]["members"]) == 3


def test_read_family_bad_files(tmp_path):
    from training.arch.family_file import read_family

    with pytest.raises(SpecError, match="cannot be read"):
        read_family(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(SpecError, match="not JSON"):
        read_family(tmp_path / "bad.json")
    (tmp_path / "old.json").write_text(json.dumps({"members": []}))
    with pytest.raises(SpecError, match="not a version-1 family"):
        read_family(tmp_path / "old.json")


def _noisy_accuracy(noise):
    """A proxy whose top-1 rises with depth and resolution, plus a seed-dependent wobble of `noise`."""
    def accuracy_of(spec, seed=0):
        return 0.5 + 0.1 * math.log(spec.depth) + 0.3 * math.log(spec.resolution / 224) + noise * (-1) ** seed * (seed % 3)

    accuracy_of.spread = lambda spec, repeats: Spread(tuple(accuracy_of(spec, seed) for seed in range(repeats)))
    return accuracy_of


def _latency(spec):
    return 10.0 * spec.depth * spec.width**2 * (spec.resolution / 224) ** 6


@pytest.mark.parametrize(("noise", "inside"), [(0.5, True), (1e-6, False)])
def test_each_lacs_decision_is_judged_against_the_seed_noise(tmp_path, noise, inside):
    from search.scaling.job import LacsSettings, run

    settings = LacsSettings(grid_step=0.25, tolerance=0.25, fine_step=None, w=-0.5, phis=(0.0, 1.0), noise_repeats=3)
    lines = []
    result = run(X_B0, tmp_path / "lacs", _noisy_accuracy(noise), _latency, "cpu-test", settings, say=lines.append)
    for key in ("lacs", "accuracy_only"):
        decision = result[key]["decision"]
        assert decision["margin"]["inside_noise"] is inside and decision["margin"]["noise_std"] > 0
        # With that much noise every first draw is level with the leader: as many finalists as allowed (4). Their
        # margins are far inside it, too small for seeds up to max_repeats (6) to part: a tie, called on 3 seeds. Without
        # noise the two best are clear of the rest and of each other.
        assert [len(f["accuracy"]["samples"]) for f in decision["finalists"]] == ([3] * 4 if inside else [3, 3])
        assert decision["seeds"] == 3
    assert result["accuracy_noise_std"] > 0 and all(t["accuracy_std"] == result["accuracy_noise_std"] for t in result["trials"])
    verdict = "inside the seed noise" if inside else "more than the seed noise"
    assert sum(verdict in line for line in lines if "winner" in line) == 2, lines
    assert sum("would not part them: a tie, called now" in line for line in lines) == (2 if inside else 0), lines
    assert not any("a seed more each" in line for line in lines), lines
    assert sum("finalist(s) as well" in line for line in lines) == (2 if inside else 0), lines


@pytest.mark.parametrize("noise", [0.5, 0.05])
def test_a_replay_of_a_lacs_runs_recorded_draws_takes_the_runs_decisions(tmp_path, noise):
    """benchmarks/race_replay.py measures a change to the race on a run's own draws; under the race that ran, it must
    come to the run's decisions on the run's seeds."""
    import importlib.util

    from search.scaling.job import LacsSettings, run

    spec = importlib.util.spec_from_file_location("race_replay", ROOT / "benchmarks" / "race_replay.py")
    race_replay = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(race_replay)
    settings = LacsSettings(grid_step=0.25, tolerance=0.25, fine_step=None, w=-0.5, phis=(0.0, 1.0), noise_repeats=2, max_repeats=5)
    result = run(X_B0, tmp_path / "lacs", _noisy_accuracy(noise), _latency, "cpu-test", settings, say=lambda line: None)
    figures = race_replay.replay(json.loads((tmp_path / "lacs" / "lacs.json").read_text()), say=lambda line: None)
    for by, key in (("reward", "lacs"), ("accuracy", "accuracy_only")):
        assert figures[by]["winner"] == figures[by]["run_winner"] == result[key]["coefficients"]
        assert figures[by]["seeds"] == figures[by]["run_seeds"] == result[key]["decision"]["seeds"]
    assert figures["proxy_runs"] == figures["run_proxy_runs"] > 0


def test_without_repeats_the_noise_is_said_to_be_unknown(tmp_path):
    from search.scaling.job import LacsSettings, run

    settings = LacsSettings(grid_step=0.25, tolerance=0.25, fine_step=None, w=-0.5, phis=(0.0, 1.0), noise_repeats=1)
    lines = []
    result = run(X_B0, tmp_path / "lacs", _noisy_accuracy(0.1), _latency, "cpu-test", settings, say=lines.append)
    assert result["accuracy_noise_std"] is None and result["lacs"]["decision"]["margin"]["inside_noise"] is None
    assert any("seed noise unknown" in line for line in lines)
    # Each trial says what it built at phi = 1, so triplets that round to the same network can be seen as such.
    assert sum(" blocks, " in line and " px, " in line for line in lines) == len(result["trials"])


def test_finalists_are_ranked_by_their_mean_over_seeds(tmp_path):
    from search.scaling.job import decide
    from search.scaling.lacs import Trial

    a, b = Coefficients(1.2, 1.1, 1.15), Coefficients(1.5, 1.05, 1.05)
    trials = [Trial(a, 0.60, 1.0, 0.60, "coarse"), Trial(b, 0.50, 1.0, 0.50, "coarse")]  # a wins on its one seed...
    means = {a.astuple(): (0.60, 0.40, 0.41), b.astuple(): (0.50, 0.52, 0.51)}  # ...but b is better on average

    def spread_of(spec, repeats):
        key = next(k for k in means if scale(X_B0, Coefficients(*k), 1.0) == spec)
        return Spread(means[key][:repeats])

    decision = decide(trials, "accuracy", X_B0, spread_of, 3, lambda latency_ms: 1.0)
    assert decision.winner.coefficients == b and decision.runner_up.coefficients == a
    assert decision.margin.value == pytest.approx(0.51 - 0.47)


def _racing_case(samples: dict):
    """Two triplets and a spread_of that hands out the first `repeats` of each one's samples, counting the calls."""
    from search.scaling.lacs import Trial

    a, b = Coefficients(1.2, 1.1, 1.15), Coefficients(1.5, 1.05, 1.05)
    trials = [Trial(a, samples[a.astuple()][0], 1.0, samples[a.astuple()][0], "coarse"),
              Trial(b, samples[b.astuple()][0], 1.0, samples[b.astuple()][0], "coarse")]
    asked = []

    def spread_of(spec, repeats):
        key = next(k for k in samples if scale(X_B0, Coefficients(*k), 1.0) == spec)
        asked.append(repeats)
        return Spread(samples[key][:repeats])

    return a, b, trials, spread_of, asked


def test_a_margin_inside_the_noise_is_raced_until_it_is_signal():
    """Two and three seeds each leave a 0.02 margin inside the noise; with a fourth the means part by 0.03, beyond 2 std:
    the race stops there, before its limit of 6."""
    from search.scaling.job import decide

    samples = {(1.2, 1.1, 1.15): (0.62, 0.58, 0.60, 0.62, 0.0, 0.0), (1.5, 1.05, 1.05): (0.58, 0.58, 0.58, 0.56, 0.0, 0.0)}
    a, b, trials, spread_of, asked = _racing_case(samples)
    lines = []
    decision = decide(trials, "accuracy", X_B0, spread_of, 2, lambda ms: 1.0, max_repeats=6, say=lines.append)
    assert asked == [2, 2, 3, 3, 4, 4] and decision.seeds == 4
    assert decision.winner.coefficients == a and decision.margin.inside_noise is False
    assert decision.margin.value == pytest.approx(0.605 - 0.575)
    assert len(lines) == 2 and "a seed more each for it and the runner-up (4 of at most 6)" in lines[-1]
    assert decision.to_dict()["seeds"] == 4 and "means of 4 seeds each" in decision.describe()


def test_a_tie_is_called_once_seeds_up_to_the_limit_could_not_part_it():
    """Level means on 2 seeds: no race at all. A margin of 0.03 +- 0.04 on 2 seeds could become signal by 4 and gets a
    third seed; there it is 0.017 +- 0.027, which a fourth could not part (it would need 0.023): a tie, called before
    the limit."""
    from search.scaling.job import decide

    samples = {(1.2, 1.1, 1.15): (0.60, 0.50, 0.60, 0.50), (1.5, 1.05, 1.05): (0.50, 0.60, 0.50, 0.60)}
    _, _, trials, spread_of, asked = _racing_case(samples)
    lines = []
    decision = decide(trials, "accuracy", X_B0, spread_of, 2, lambda ms: 1.0, max_repeats=4, say=lines.append)
    assert asked == [2, 2] and decision.margin.inside_noise is True
    assert len(lines) == 1 and "seeds up to 4 each would not part them: a tie, called now" in lines[0]
    samples = {(1.2, 1.1, 1.15): (0.62, 0.54, 0.54, 0.62), (1.5, 1.05, 1.05): (0.55, 0.55, 0.55, 0.55)}
    _, _, trials, spread_of, asked = _racing_case(samples)
    decision = decide(trials, "accuracy", X_B0, spread_of, 2, lambda ms: 1.0, max_repeats=4)
    assert asked == [2, 2, 3, 3] and decision.margin.inside_noise is True
    assert decision.margin.value == pytest.approx(0.05 / 3) and not decision.margin.could_part(3, 4)
    # Without a race (the limit at the seeds already asked for), the same tie is judged on 2 seeds.
    _, _, trials, spread_of, asked = _racing_case(samples)
    assert decide(trials, "accuracy", X_B0, spread_of, 2, lambda ms: 1.0, max_repeats=2).seeds == 2 and asked == [2, 2]


def test_a_raced_reward_decision_times_the_finalists_one_more_round_per_seed():
    from search.scaling.job import decide

    samples = {(1.2, 1.1, 1.15): (0.64, 0.54, 0.56), (1.5, 1.05, 1.05): (0.55, 0.55, 0.55)}
    _, _, trials, spread_of, _ = _racing_case(samples)
    rounds = []

    def latencies_of(specs, count):
        rounds.append(count)
        return [Spread((1.0,) * count), Spread((1.01,) * count)]

    decision = decide(trials, "reward", X_B0, spread_of, 2, lambda ms: 1.0 / ms, latencies_of, max_repeats=3)
    assert rounds == [3, 1] and decision.seeds == 3
    assert all(len(spread.samples) == 4 for spread in decision.timings.values())


def _finalists_case(samples: dict):
    """A triplet per key of `samples`, its first draw the first sample, and a spread_of that hands out the first
    `repeats` of each one's samples, recording (triplet, repeats) per call."""
    from search.scaling.lacs import Trial

    trials = [Trial(Coefficients(*key), draws[0], 1.0, draws[0], "coarse") for key, draws in samples.items()]
    asked = []

    def spread_of(spec, repeats):
        key = next(k for k in samples if scale(X_B0, Coefficients(*k), 1.0) == spec)
        asked.append((key, repeats))
        return Spread(samples[key][:repeats])

    return trials, spread_of, asked


A, B, C, D = (1.2, 1.1, 1.15), (1.5, 1.05, 1.05), (1.0, 1.0, 1.4), (1.25, 1.0, 1.25)


def test_a_third_triplet_within_the_noise_of_the_leader_is_a_finalist_and_may_win():
    """The fifth demo build's case: three triplets level on first draws, the true best third. The two best first draws
    (A, B) are retrained; C's first draw is within 2 std of the leader's mean, so it is retrained too and wins on its
    mean; D, far behind, is never retrained."""
    from search.scaling.job import decide

    samples = {A: (0.62, 0.58), B: (0.60, 0.60), C: (0.57, 0.67), D: (0.40, 0.40)}
    trials, spread_of, asked = _finalists_case(samples)
    lines = []
    decision = decide(trials, "accuracy", X_B0, spread_of, 2, lambda ms: 1.0, max_repeats=2, say=lines.append)
    assert asked == [(A, 2), (B, 2), (C, 2)]
    assert decision.winner.coefficients.astuple() == C and decision.winner.accuracy == pytest.approx(0.62)
    assert [tuple(f["coefficients"]) for f in decision.to_dict()["finalists"]] == [A, B, C]
    assert set(decision.margins) == {A, B} and decision.margin.inside_noise is True
    assert any(f"{C} within the seed noise of the leader" in line for line in lines), lines
    assert "3 triplets were finalists" in decision.describe()
    # At most two finalists: the old decision between the two best first draws.
    trials, spread_of, asked = _finalists_case(samples)
    decision = decide(trials, "accuracy", X_B0, spread_of, 2, lambda ms: 1.0, max_repeats=2, max_finalists=2)
    assert asked == [(A, 2), (B, 2)] and decision.winner.coefficients.astuple() in (A, B)


def test_the_race_gives_seeds_only_to_the_leader_and_the_finalists_level_with_it():
    """A, B and C are finalists; C's mean falls clearly behind on its seeds, so only A and B race on; the race stops
    when B's fourth seed parts them."""
    from search.scaling.job import decide

    samples = {A: (0.61, 0.61, 0.62, 0.62, 0.0), B: (0.61, 0.59, 0.60, 0.58, 0.0), C: (0.60, 0.57, 0.57, 0.0, 0.0)}
    trials, spread_of, asked = _finalists_case(samples)
    lines = []
    decision = decide(trials, "accuracy", X_B0, spread_of, 3, lambda ms: 1.0, max_repeats=5, say=lines.append)
    assert asked == [(A, 3), (B, 3), (C, 3), (A, 4), (B, 4)], asked
    assert decision.winner.coefficients.astuple() == A and decision.seeds == 4 and decision.margin.inside_noise is False
    finalists = {tuple(f["coefficients"]): f for f in decision.to_dict()["finalists"]}
    assert len(finalists[C]["accuracy"]["samples"]) == 3 and finalists[C]["margin"]["inside_noise"] is False
    assert "margin" not in finalists[A]  # the winner has no margin over itself


def test_a_reward_finalist_that_joins_is_timed_with_the_others_in_the_same_rounds():
    from search.scaling.job import decide

    samples = {A: (0.62, 0.58), B: (0.60, 0.60), C: (0.57, 0.67), D: (0.40, 0.40)}
    trials, spread_of, _ = _finalists_case(samples)
    calls = []

    def latencies_of(specs, rounds):
        calls.append((len(specs), rounds))
        return [Spread((1.0,) * rounds) for _ in specs]

    decision = decide(trials, "reward", X_B0, spread_of, 2, lambda ms: 1.0 / ms, latencies_of, max_repeats=2)
    assert calls == [(2, 3), (3, 3)] and set(decision.timings) == {A, B, C}
    assert all(len(spread.samples) == 3 for spread in decision.timings.values())


def test_the_lacs_estimate_counts_the_race_at_its_limit():
    from search.scaling.job import LacsSettings, estimate_lacs

    small = get_preset("efficientnet-x-b0", width=0.25, depth=0.25, resolution=32)  # each estimate times a few training steps

    def runs(**settings):
        return estimate_lacs(small, LacsSettings(grid_step=0.25, tolerance=0.25, **settings), 100, 10, 1)[0]

    grid = runs(noise_repeats=0)
    assert grid == 6
    # Both rankings' finalists (4 each) are at most the grid's 6 triplets, each raced to the limit.
    assert runs(noise_repeats=2, max_repeats=2) == grid + 6
    assert runs(noise_repeats=2, max_repeats=5) == grid + 6 * 4
    assert runs(noise_repeats=2, max_repeats=5, max_finalists=2) == grid + 4 * 4
    assert runs(noise_repeats=1, max_repeats=5) == grid  # no noise measured, nothing to race


def test_a_finalist_at_zero_on_its_first_seed_is_still_judged_by_reward(tmp_path):
    """A first run at 0% top-1 gave reward 0 whatever the mean, and a margin with no noise; the latency factor fixes both."""
    from search.scaling.job import decide
    from search.scaling.lacs import Trial

    a, b = Coefficients(1.2, 1.1, 1.15), Coefficients(1.5, 1.05, 1.05)
    trials = [Trial(a, 0.30, 2.0, 0.15, "coarse"), Trial(b, 0.0, 1.0, 0.0, "coarse")]
    means = {a.astuple(): (0.30, 0.30), b.astuple(): (0.0, 0.40)}

    def spread_of(spec, repeats):
        return Spread(next(means[k] for k in means if scale(X_B0, Coefficients(*k), 1.0) == spec))

    decision = decide(trials, "reward", X_B0, spread_of, 2, lambda latency_ms: 1.0 / latency_ms)
    assert decision.winner.coefficients == b and decision.winner.reward == pytest.approx(0.20)
    assert decision.margin.value == pytest.approx(0.20 - 0.15)
    # Pooled seed noise 0.2; each reward is a mean of 2 seeds, scaled by its latency factor (1/1 ms, 1/2 ms).
    assert decision.margin.noise == pytest.approx(math.hypot(1.0 * 0.2 / math.sqrt(2), 0.5 * 0.2 / math.sqrt(2)))


def test_the_reward_finalists_are_timed_again_side_by_side_and_ranked_with_those_timings(tmp_path):
    """The same network at 40 and 48 px, timed minutes apart on a busy machine: the 40 px one measured slower (0.877
    against 0.758 ms in a demo build) and lost on latency alone. Timed in turn, the smaller input is faster and wins, and
    the margin carries the timings' spread beside the seeds'."""
    from search.scaling.job import decide
    from search.scaling.lacs import Trial

    small, large = Coefficients(1.25, 1.0, 1.25), Coefficients(1.0, 1.0, 1.5)
    trials = [Trial(large, 0.50, 0.758, 0.50 / 0.758, "coarse"), Trial(small, 0.50, 0.877, 0.50 / 0.877, "coarse")]
    accuracy = {large.astuple(): (0.50, 0.52), small.astuple(): (0.52, 0.50)}
    timed = {large.astuple(): (0.80, 0.84, 0.82), small.astuple(): (0.70, 0.73, 0.70)}
    calls = []

    def key(spec):
        return next(k for k in accuracy if scale(X_B0, Coefficients(*k), 1.0) == spec)

    def latencies_of(specs, rounds):
        calls.append(([key(s) for s in specs], rounds))
        return [Spread(timed[key(s)][:rounds]) for s in specs]

    decision = decide(trials, "reward", X_B0, lambda spec, repeats: Spread(accuracy[key(spec)]), 2, lambda ms: 1.0 / ms, latencies_of)
    assert calls == [([large.astuple(), small.astuple()], 3)]  # both finalists in one call, at least 3 rounds
    assert decision.winner.coefficients == small and decision.winner.latency_ms == pytest.approx(0.71)
    assert decision.margin.value == pytest.approx(0.51 / 0.71 - 0.51 / 0.82)
    seeds = math.hypot(0.01 / 0.71, 0.01 / 0.82)  # pooled seed noise 0.02 / sqrt(2); a mean of 2 draws: 0.01, times each factor
    per_round = [0.51 / a - 0.51 / b for a, b in zip(timed[small.astuple()], timed[large.astuple()], strict=True)]
    timing = Spread(tuple(per_round)).std / math.sqrt(3)
    assert decision.margin.noise == pytest.approx(math.hypot(seeds, timing), rel=1e-3)
    finalists = {tuple(f["coefficients"]): f for f in decision.to_dict()["finalists"]}
    assert finalists[small.astuple()]["latency_ms"]["samples"] == [0.70, 0.73, 0.70]
    # An accuracy ranking does not time anything.
    calls.clear()
    decide(trials, "accuracy", X_B0, lambda spec, repeats: Spread(accuracy[key(spec)]), 2, lambda ms: 1.0, latencies_of)
    assert calls == []


def test_side_by_side_timing_alternates_the_specs_every_round_and_stores_nothing(monkeypatch):
    from effx_serve.perf import measure
    from effx_serve.perf.profiler import Timing
    from search import evaluators

    order = []

    def time_spec(spec, resolution, batch, runtime, machine, protocol, onnx_path):
        order.append(spec.name)
        return Timing(len(order), 0, 0, 0, 30, 0.0), {}

    monkeypatch.setattr(measure, "time_spec", time_spec)
    latency = evaluators.MeasuredLatency(machine=None, store=None, runtime="onnxruntime")
    a, b = X_B0.with_(name="a"), X_B0.with_(name="b", resolution=240)
    spreads = latency.side_by_side([a, b], 3)
    assert order == ["a", "b"] * 3
    assert [s.samples for s in spreads] == [(1, 3, 5), (2, 4, 6)]


def test_spread_pooled_noise_and_margins():
    assert Spread((1.0,)).std is None and Spread((1.0, 3.0)).std == pytest.approx(math.sqrt(2))
    assert pooled_std([Spread((1.0, 3.0)), Spread((10.0, 10.0, 13.0))]) == pytest.approx(math.sqrt((2 + 6) / 3))
    assert pooled_std([Spread((1.0,))]) is None
    # Means of n and m seeds differ by chance with std noise * sqrt(1/n + 1/m): four seeds each halve one draw's sqrt(2).
    assert means_difference_std(0.1, 1, 1) == pytest.approx(0.1 * math.sqrt(2))
    assert means_difference_std(0.1, 4, 4) == pytest.approx(0.1 * math.sqrt(2) / 2)
    assert means_difference_std(0.1, 2, 3, scales=(2.0, 1.0)) == pytest.approx(math.hypot(0.2 / math.sqrt(2), 0.1 / math.sqrt(3)))
    assert Margin(0.05, 0.02).inside_noise is False and Margin(0.03, 0.02).inside_noise is True and Margin(0.1, None).inside_noise is None
    # From 2 seeds to 8 the noise halves: a margin of 1 std now would be 2 std (signal) there, one of 0.4 std only 0.8.
    assert Margin(0.02, 0.02).could_part(2, 8) and Margin(-0.01, 0.02).could_part(2, 8)  # exactly half of 2 std at 8 seeds
    assert not Margin(0.008, 0.02).could_part(2, 8) and not Margin(0.0, 0.02).could_part(2, 8)
    assert not Margin(0.019, 0.02).could_part(4, 4) and Margin(0.02, 0.02).could_part(4, 4)  # at the limit: 1 std is the bar
    assert Margin(0.0, None).could_part(2, 8)  # noise unknown: nothing to judge by


def test_a_family_stops_at_the_first_member_its_coefficients_make_invalid():
    """(2, 1, 1) at phi 6.48 asks for 89x the depth: LACS keeps the members before it and says why, rather than failing."""
    from search.scaling.lacs import DEFAULT_PHIS, family, valid_family

    deep = Coefficients(2.0, 1.0, 1.0)
    members, problem = valid_family(X_B0, deep, DEFAULT_PHIS, "x")
    assert 0 < len(members) < len(DEFAULT_PHIS) and "depth must be in" in problem and f"x-b{len(members)}" in problem
    with pytest.raises(SpecError, match="depth must be in"):
        family(X_B0, deep)
    assert valid_family(X_B0, Coefficients(1.2, 1.1, 1.15))[1] is None
