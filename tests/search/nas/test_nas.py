"""Platform-aware NAS: space encoding, reward, controllers, storage, resume, workers and bad input."""

import csv
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from effx_serve.cli import main
from effx_serve.core.errors import UserError
from search.nas import job as nas_job
from search.nas import storage
from search.nas import worker as nas
from search.nas.rl import PolicyGradient
from search.nas.space import B0_POINT, X_B0_POINT, SearchSpace, point_hash
from search.nas.worker import SearchConfig, WorkerSettings
from search.reward import Reward
from tests.helpers import ROOT, ended
from training.arch.presets import load_spec
from training.demo_data import generate_demo_data
from training.errors import SpecError

STUB = "tests.search.nas.nas_stubs:StubEvaluator"
SMALL = {"width": 0.25, "depth": 0.34, "resolution": 32, "num_classes": 10}  # specs that count and decode fast


def stub_config(**changes) -> SearchConfig:
    return SearchConfig(**({"evaluator": STUB, "population": 4, "sample_size": 2, "hardware_id": "cpu-test", **SMALL} | changes))


def settings_for(out: Path, **changes) -> WorkerSettings:
    return WorkerSettings(**({"storage": None, "journal": out / "trials.journal", "work_dir": out, "budget_trials": 8} | changes))


def run_search(out: Path, config: SearchConfig | None = None, workers: int = 1, resume: bool = False, **changes) -> dict:
    return nas_job.run(config or stub_config(), settings_for(out, **changes), out, workers, resume, say=lambda line: None, progress=False)


@pytest.fixture
def stub_log(tmp_path, monkeypatch):
    log = tmp_path / "evaluations.log"
    monkeypatch.setenv("EFFX_STUB_LOG", str(log))
    return log


def evaluated(log: Path, part: int = 1) -> list:
    """Trial numbers (part 2: point hashes) the stub evaluator trained; its spec names are trial-<number>-<hash>."""
    names = [line.split()[1].split("-") for line in log.read_text().splitlines()] if log.exists() else []
    return [int(name[1]) if part == 1 else name[2] for name in names]


# --- the space -------------------------------------------------------------------------------------------------------


def test_points_encode_to_params_and_back():
    space, rng = SearchSpace(), random.Random(1)
    for point in [B0_POINT, X_B0_POINT, *(space.sample(rng) for _ in range(50))]:
        params = space.to_params(point)
        assert len(params) == len(space.decisions()) == 3 + 7 * 7
        assert space.from_params(params) == point and point_hash(space.from_params(params)) == point_hash(point)


def test_a_space_file_narrows_the_paper_space(tmp_path):
    path = tmp_path / "space.json"
    path.write_text(json.dumps({"stage": {"kernel": [3], "width": [1, 1.25]}, "global": {"space_to_batch": [False]}}))
    space = SearchSpace.load(path)
    choices = dict(space.stage_choices)
    assert choices["kernel"] == (3,) and choices["width"] == (1.0, 1.25) and choices["block"] == ("mbconv", "fused")
    assert dict(space.global_choices)["space_to_batch"] == (False,)
    assert space.size() == SearchSpace().size() // (2**7 * 3**7 // 2**7) // 2
    rng = random.Random(0)
    assert all(space.contains(space.sample(rng)) for _ in range(20))
    assert space.contains(X_B0_POINT) is False  # X-B0 has kernel-5 stages
    assert SearchSpace.from_dict(space.to_dict()) == space


@pytest.mark.parametrize("content, message", [
    ({"stage": {"kernel": [3, 7]}}, "stage 'kernel': unknown choice 7"),
    ({"stage": {"colour": ["red"]}}, "unknown stage decision 'colour'"),
    ({"global": {"space_to_depth": [1]}}, "unknown choice 1"),  # 1 is not True: a file says what it means
    ({"stage": {"se": []}}, "non-empty list"),
    ({"stages": 8}, "expected an object with 'stage' and/or 'global'"),
])
def test_bad_space_files_name_the_cause(tmp_path, content, message):
    path = tmp_path / "space.json"
    path.write_text(json.dumps(content))
    with pytest.raises(SpecError, match=message):
        SearchSpace.load(path)


def test_unreadable_space_files(tmp_path):
    with pytest.raises(SpecError, match="cannot be read"):
        SearchSpace.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(SpecError, match="is not JSON"):
        SearchSpace.load(tmp_path / "bad.json")


# --- the reward ------------------------------------------------------------------------------------------------------


def test_reward_arithmetic():
    soft = Reward(target_ms=10.0)
    assert soft(0.8, 10.0) == pytest.approx(0.8)
    assert soft(0.8, 20.0) == pytest.approx(0.8 * 2**-0.07)
    assert soft(0.8, 5.0) == pytest.approx(0.8 * 0.5**-0.07)  # faster than T earns a little
    hard = Reward(target_ms=10.0, alpha=0.0, beta=-1.0)  # MnasNet's hard constraint
    assert hard(0.8, 5.0) == pytest.approx(0.8) and hard(0.8, 20.0) == pytest.approx(0.4)
    assert math.isclose(Reward(4.0, -0.5, -0.5)(1.0, 1.0), 2.0)


@pytest.mark.parametrize("kwargs, message", [
    ({"target_ms": 0}, "target T must be a positive"),
    ({"target_ms": float("nan")}, "target T must be a positive"),
    ({"target_ms": 1.0, "alpha": 0.5}, "alpha must be in"),
    ({"target_ms": 1.0, "beta": -11}, "beta must be in"),
])
def test_bad_rewards_are_refused(kwargs, message):
    with pytest.raises(SpecError, match=message):
        Reward(**kwargs)


# --- controllers -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("update", ["reinforce", "ppo"])
def test_the_policy_gradient_learns_the_rewarded_choice(update):
    import torch

    learner = PolicyGradient([2, 3], seed=0, update=update, lr=0.05)
    generator = torch.Generator().manual_seed(0)
    for _ in range(150):
        actions, log_prob = learner.sample(generator)
        learner.learn(actions, 1.0 if actions[0] == 1 else 0.0, log_prob)
    assert learner.probabilities()[0][1] > 0.9


@pytest.mark.parametrize("controller", ["rl", "evolution", "nsga2", "tpe"])
def test_every_controller_runs_a_few_trials(tmp_path, stub_log, controller):
    out = tmp_path / controller
    result = run_search(out, stub_config(controller=controller), budget_trials=10)
    records = result["records"]
    assert [r["number"] for r in records] == list(range(10)) and {r["state"] for r in records} == {"complete"}
    assert [r["role"] for r in records[:2]] == ["baseline:efficientnet-b0", "baseline:efficientnet-x-b0"]
    assert len({r["hash"] for r in records}) >= 8  # controllers propose new points
    assert sorted(evaluated(stub_log)) == [r["number"] for r in records if r["duplicate_of"] is None]
    for r in records:
        assert r["reward"] == pytest.approx(Reward(result["config"]["target_ms"])(r["accuracy"], r["latency_ms"]))
    best = max(records, key=lambda r: r["reward"])
    assert result["best"]["number"] == best["number"]
    spec = load_spec(str(out / "best-spec.json"))  # ready for `effx-serve lacs --base`
    assert spec.arch_hash() == stub_config().spec(best["point"]).arch_hash()
    front = json.loads((out / "pareto.json").read_text())["front"]
    assert front and all(not (o["accuracy"] >= f["accuracy"] and o["latency_ms"] < f["latency_ms"]) for f in front for o in records)
    assert (out / "trials.csv").read_text().count("\n") == 11 and (out / "pareto.png").stat().st_size > 0


def test_the_rl_controller_replays_its_history(tmp_path):
    """A restarted RL worker rebuilds the same policy from the study (it learns in completion order)."""
    from search.nas.rl import PolicyGradientSampler

    out = tmp_path / "rl"
    run_search(out, stub_config(controller="rl"), budget_trials=8)
    study, config = nas.load_study(settings_for(out))
    first, second = (PolicyGradientSampler(config.search_space(), config.seed) for _ in range(2))
    assert first.catch_up(study) == second.catch_up(study) == 8
    assert first.learner.probabilities() == second.learner.probabilities()


def test_a_point_evaluated_before_is_reused_not_retrained(tmp_path, stub_log):
    # A space of two points: most trials must repeat one.
    fixed = {name: [options[0]] for name, options in SearchSpace().stage_choices}
    space = SearchSpace.from_dict({"stage": fixed, "global": {"space_to_depth": [False], "space_to_batch": [False]}})
    assert space.size() == 2  # the global activation is the only decision
    result = run_search(tmp_path / "s", stub_config(space=space.to_dict(), controller="evolution", baselines=False), budget_trials=6)
    records = result["records"]
    reused = [r for r in records if r["duplicate_of"] is not None]
    assert len(evaluated(stub_log)) == len({r["hash"] for r in records}) <= 2 and len(reused) >= 4
    for r in reused:
        assert (r["accuracy"], r["latency_ms"]) == (records[r["duplicate_of"]]["accuracy"], records[r["duplicate_of"]]["latency_ms"])
    assert len(result["pareto_front"]) <= 2


# --- failures, budgets and bad input ---------------------------------------------------------------------------------


def test_a_failing_candidate_is_recorded_and_the_search_goes_on(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFX_STUB_FAIL", "0123")  # about a quarter of the architectures
    result = run_search(tmp_path / "s", stub_config(baselines=False), budget_trials=16)
    failed = [r for r in result["records"] if r["state"] == "failed"]
    assert failed and all("RuntimeError: stub failure on" in r["note"] for r in failed)
    assert len(result["records"]) == 16 and sum(r["state"] == "complete" for r in result["records"]) == 16 - len(failed)


def test_an_evaluator_failing_on_everything_stops_with_its_error(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFX_STUB_FAIL", "0123456789abcdef")
    with pytest.raises(UserError, match="failed on 5 candidates in a row; the last: RuntimeError: stub failure"):
        run_search(tmp_path / "s", budget_trials=50)
    assert "failed" in (tmp_path / "s" / "trials.csv").read_text()  # the outputs are still written


def test_a_full_disk_stops_the_search_without_blaming_the_candidate_and_resume_runs_it_again(tmp_path, monkeypatch, stub_log):
    # It was recorded as five failed candidates (baselines included), which then used up the budget for good.
    full = tmp_path / "disk-is-full"
    full.touch()
    monkeypatch.setenv("EFFX_STUB_DISK_FULL", str(full))
    with pytest.raises(UserError, match="trial 0 stopped: cannot write the best checkpoint: No space left on device; .* --resume"):
        run_search(tmp_path / "s", budget_trials=4)
    full.unlink()
    result = run_search(tmp_path / "s", resume=True, budget_trials=4)
    states = [r["state"] for r in result["records"]]
    assert states.count("complete") == 4 and "failed" not in states  # the stopped trial is not one of the budget's


def test_a_search_whose_every_trial_failed_says_so_and_fails(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.setenv("EFFX_STUB_FAIL", "0123456789abcdef")
    out = tmp_path / "s"
    argv = ["search", "--out", str(out), "--evaluator", STUB, "--resolution", "32", "--width", "0.25", "--budget-trials", "2"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "none of the 2 trials completed (trials.csv says why each failed)" in captured.err
    assert "pareto.png" not in captured.out or (out / "pareto.png").exists()  # only what was written is said to be


def test_cli_bad_input_gets_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    base = ["search", "--out", str(tmp_path / "s"), "--evaluator", STUB, "--resolution", "32", "--width", "0.25"]
    with pytest.raises(SystemExit) as exit_info:
        main([*base, "--budget-trials", "0"])
    assert exit_info.value.code == 2 and "--budget-trials: must be at least 1, got 0" in capsys.readouterr().err
    (tmp_path / "space.json").write_text(json.dumps({"stage": {"kernel": [9]}}))
    generate_demo_data(data := tmp_path / "data", size=2, image_size=16)  # 10 classes, a few images each
    cases = [
        ([*base], "give a budget"),
        ([*base, "--budget-trials", "3", "--space", str(tmp_path / "space.json")], "stage 'kernel': unknown choice 9"),
        ([*base, "--budget-trials", "3", "--storage", "sqlite:////no/such/dir/trials.db"], "cannot be reached"),
        ([*base, "--budget-trials", "3", "--storage", "postgresql://me:secret@127.0.0.1:9/x"], "storage postgresql://me:***@127.0.0.1:9/x"),
        ([*base, "--budget-trials", "3", "--hardware", "tpu-v3"], "measures latency on this machine"),
        ([*base, "--budget-trials", "3", "--evaluator", "tests.search.nas.nas_stubs:Nothing"], "has no callable 'Nothing'"),
        ([*base, "--budget-trials", "3", "--resume"], "no search in"),
        (["search", "--out", str(tmp_path / "d"), "--budget-trials", "3"], "--data DIR is needed"),
        ([*base, "--budget-trials", "3", "--workers", "1000"], "--workers 1000 is more than this machine's"),
        ([*base, "--budget-trials", "3", "--data", str(data), "--num-classes", "3"], "--num-classes 3, but"),
        ([*base, "--budget-trials", "3", "--data", str(data)], "fewer than one batch of 64; give more training images"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "secret" not in err and "Traceback" not in err, (argv, err)


def test_resume_keeps_the_settings_and_refuses_changes(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    base = ["search", "--out", str(tmp_path / "s"), "--evaluator", STUB, "--resolution", "32", "--width", "0.25", "--population", "4"]
    assert main([*base, "--budget-trials", "4", "--json"]) == 0
    assert main([*base, "--budget-trials", "4"]) == 2 and "pass --resume" in capsys.readouterr().err
    assert main([*base, "--budget-trials", "4", "--resume", "--controller", "rl"]) == 2
    assert "controller = 'rl' (the search has 'evolution')" in capsys.readouterr().err
    assert main(["search", "--out", str(tmp_path / "s"), "--budget-trials", "6", "--resume", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["trials"] == 6 and result["config"]["population"] == 4


def test_bad_controller_settings_are_refused_before_a_search_is_stored(tmp_path):
    out = tmp_path / "s"
    with pytest.raises(UserError, match="evolution needs 2 <= sample size <= population, got 4 and 3"):
        run_search(out, stub_config(population=3, sample_size=4))
    with pytest.raises(UserError, match="controller nsga2: "):
        run_search(out, stub_config(controller="nsga2", population=1))
    assert run_search(out, stub_config(), budget_trials=3)["trials"] == 3  # nothing half-made was left behind


def test_a_resumed_search_must_run_on_its_hardware(tmp_path):
    out = tmp_path / "s"
    run_search(out, budget_trials=2)
    with pytest.raises(UserError, match="hardware_id = 'tpu-v3' \\(the search has 'cpu-test'\\)"):
        nas_job.run(None, settings_for(out), out, resume=True, overrides={"hardware_id": "tpu-v3"}, say=lambda line: None, progress=False)


def test_the_budget_in_minutes_starts_no_trial_past_the_deadline(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFX_STUB_SLEEP", "0.3")
    started = time.time()
    result = run_search(tmp_path / "s", budget_trials=None, deadline=started + 1.5)
    assert 1 <= result["trials"] <= 6 and time.time() - started < 15


# --- storage, resume, workers ----------------------------------------------------------------------------------------


def _cli(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "effx_serve.cli", "search", "--out", str(out), "--evaluator", STUB, "--resolution", "32",
            "--width", "0.25", "--population", "4", "--budget-trials", "12", *extra]


def test_resume_after_kill_9_loses_at_most_the_trial_in_flight(tmp_path, stub_log):
    out = tmp_path / "s"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EFFX_STUB_SLEEP": "0.4"}
    process = subprocess.Popen(_cli(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while len(evaluated(stub_log)) < 4 and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = evaluated(stub_log)
    with open(out / "trials.journal", "ab") as journal:  # a write cut short by the kill
        journal.write(b'{"op_code": 5, "worker_id": "x", "trial_id": 1')
    done = subprocess.run(_cli(out, "--resume", "--stale-after", "1", "--json"), env={**env, "EFFX_STUB_SLEEP": "0"},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    records = json.loads(done.stdout)["records"]
    states = [r["state"] for r in records]
    lost = [r for r in records if r["state"] == "interrupted"]
    assert states.count("complete") == 12 and len(records) == 12 + len(lost) and len(lost) <= 1  # at most the trial in flight
    for r in lost:
        assert r["number"] == before[-1] and "no heartbeat" in r["note"]
    trained = evaluated(stub_log, part=2)
    finished_before = [h for n, h in zip(evaluated(stub_log), trained, strict=True) if n in before and n not in {r["number"] for r in lost}]
    assert len(set(finished_before)) == len(finished_before) and not set(finished_before) & set(trained[len(before):])


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal and /proc are Linux's")
def test_a_stopped_search_stops_its_workers(tmp_path, stub_log, how):
    """SIGTERM to a two-worker search (a process manager's stop, which reaches only the search, unlike a terminal's Ctrl-C):
    both workers stop and mark their trials in flight interrupted at once, the outputs are written, exit 130. Killed
    outright (Linux), its workers end too instead of searching on alone."""
    out = tmp_path / "s"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EFFX_STUB_SLEEP": "3"}
    process = subprocess.Popen([*_cli(out), "--workers", "2"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 90
    while len(evaluated(stub_log)) < 2 and time.time() < deadline:  # both workers inside a trial
        time.sleep(0.05)
    workers = {int(line.split()[0]) for line in stub_log.read_text().splitlines()}
    process.send_signal(how)
    _, err = process.communicate(timeout=30)
    assert ended(workers), "a worker outlived its search"
    if how == signal.SIGKILL:
        return
    assert process.returncode == 130 and "effx-serve: interrupted" in err, err
    records = list(csv.DictReader((out / "trials.csv").open()))
    stopped = [r for r in records if r["state"] == "interrupted"]
    assert len(stopped) == 2 and {r["note"] for r in stopped} == {"stopped by the user"}, records


def test_a_half_written_journal_line_is_dropped(tmp_path):
    path = tmp_path / "trials.journal"
    path.write_bytes(b'{"a": 1}\n{"b": 2}\n{"c":')
    assert storage.repair_journal(path) and path.read_bytes() == b'{"a": 1}\n{"b": 2}\n'
    assert not storage.repair_journal(path)


def test_two_workers_share_the_storage_and_never_run_a_trial_twice(tmp_path, stub_log, monkeypatch):
    monkeypatch.setenv("EFFX_STUB_SLEEP", "0.5")  # long enough that the second worker's start (a torch import) finds work left
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the spawned workers import the stub
    result = run_search(tmp_path / "s", workers=2, budget_trials=16)
    numbers = evaluated(stub_log)
    assert len(numbers) == len(set(numbers))  # no trial evaluated twice
    used = [r for r in result["records"] if r["state"] != "skipped"]
    assert len(used) == 16 and {r["state"] for r in used} == {"complete"}
    assert len({r["worker"] for r in used}) == 2  # both workers took trials
    assert sorted(numbers) == [r["number"] for r in used if r["duplicate_of"] is None]


def test_stale_trials_are_failed_by_any_worker(tmp_path):
    out = tmp_path / "s"
    nas.create_study(settings_for(out), stub_config(target_ms=1.0))
    study, _ = nas.load_study(settings_for(out))
    trial = study.ask()
    assert storage.fail_stale_trials(study, stale_after_s=30) == []  # alive: just started
    study._storage.set_trial_system_attr(trial._trial_id, storage.HEARTBEAT_KEY, time.time() - 100)
    started = study.get_trials()[0].datetime_start.timestamp()
    if time.time() - started > 5:  # its start is also old: heartbeat or start, whichever is later, decides
        pytest.skip("slow machine")
    time.sleep(1.2)
    assert storage.fail_stale_trials(study, stale_after_s=1) == [trial.number]
    assert study.get_trials()[0].user_attrs[storage.INTERRUPTED_KEY].startswith("no heartbeat")


# --- the real evaluator ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_real_search_trains_and_measures_candidates(tmp_path, capsys):
    """Proxy training on tiny demo data and ONNX Runtime latency on this machine: the default evaluator end to end."""
    from training.demo_data import generate_demo_data

    generate_demo_data(tmp_path / "data", size=10, image_size=32)
    out = tmp_path / "s"
    argv = ["search", "--out", str(out), "--data", str(tmp_path / "data"), "--budget-trials", "3", "--resolution", "32",
            "--width", "0.25", "--epochs", "1", "--batch-size", "16", "--noise-repeats", "2", "--max-repeats", "2"]  # no race: one more seed
    assert main(argv) == 0
    printed = capsys.readouterr()
    assert "latency target T" in printed.err and "best reward: trial" in printed.out
    assert "candidate scale: depth " in printed.err and "default for 32 px images" in printed.err  # --depth not given: this hardware's
    assert "estimated time with one worker: about" in printed.err
    result = json.loads((out / "search.json").read_text())
    assert result["states"] == {"complete": 3} and result["config"]["num_classes"] == 10
    assert result["config"]["runtime"] == "onnxruntime"  # --runtime not given: this CPU's own, stored for resumes
    for record in result["records"]:
        assert 0 <= record["accuracy"] <= 1 and record["latency_ms"] > 0
        assert record["latency_source"] == "measured (onnxruntime, batch 1)"
    folders = sorted(path.name for path in (out / "proxy").iterdir())  # one proxy-training folder per candidate and seed, resumable
    assert len(folders) == 6 and sum(name.endswith("-seed1") for name in folders) == 3  # 3 finalists (all 3 trials) x 1 more seed
    assert result["noise"]["accuracy_std"] is not None and len(result["noise"]["comparisons"]) == 2
    assert all(len(c["latency_ratio"]["samples"]) == 3 and c["latency_ratio"]["mean"] > 0 for c in result["noise"]["comparisons"])


@pytest.mark.parametrize(("noise", "case"), [("0.5", "tie"), ("0.01", "raced"), ("0.000001", "clear")])
def test_the_best_is_judged_against_the_seed_noise_of_its_finalists(tmp_path, capsys, monkeypatch, noise, case):
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.setattr("tests.search.nas.nas_stubs.NoisyStubEvaluator.NOISE", float(noise))
    out = tmp_path / "s"
    argv = ["search", "--out", str(out), "--evaluator", "tests.search.nas.nas_stubs:NoisyStubEvaluator", "--resolution", "32",
            "--width", "0.25", "--population", "4", "--budget-trials", "6", "--noise-repeats", "3", "--max-repeats", "5"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    printed = captured.out
    saved = json.loads((out / "search.json").read_text())["noise"]
    assert saved["repeats"] == 3 and saved["accuracy_std"] > 0
    roles = [f["role"] for f in saved["finalists"]]
    assert len(roles) >= 3 and sum(role.startswith("baseline:") for role in roles) == 2  # the best, the runner-up, both baselines
    # The stub's seeds move every architecture alike, so the margins stay as they are while the noise of a mean falls.
    # Far inside a large noise they are a tie that seeds up to 5 could not part: called on 3. Inside a moderate one the
    # best and the finalists it could still part from race to 5 seeds, one seed at a time. Without noise all are clear.
    samples = [len(f["samples"]) for f in saved["finalists"]]
    assert samples == [3] * len(samples) if case != "raced" else samples[0] == 5
    assert captured.err.count("a seed more each") == (2 if case == "raced" else 0)
    assert ("a tie, called now" in captured.err) is (case == "tie")
    inside = [c["inside_noise"] for c in saved["comparisons"]]
    assert inside and (all(inside) if case == "tie" else not any(inside) if case == "clear" else any(inside))
    assert "seed noise: top-1 +-" in printed and ("may be chance" in printed) is (case != "clear")
    # The finalists timed side by side: per round the best's latency over the other's, the same in every round here.
    for comparison in saved["comparisons"]:
        samples = comparison["latency_ratio"]["samples"]
        assert len(samples) == 3 and max(samples) == pytest.approx(min(samples)) and comparison["latency_ratio"]["std"] < 1e-9
    assert captured.err.count("rounds side by side") == len(saved["comparisons"])
    assert printed.count("x theirs side by side") == len(saved["comparisons"])


def test_a_trial_other_than_the_best_can_be_judged_against_the_references(tmp_path, monkeypatch):
    """benchmarks/nas.py judges the architecture it reports (the best one no reference dominates), which need not be the best
    by reward: its margins, not the best's, are the ones compared."""
    from search.nas import verdict
    from search.nas.report import TrialRecord

    monkeypatch.syspath_prepend(str(ROOT))
    config = stub_config(evaluator="tests.search.nas.nas_stubs:NoisyStubEvaluator")
    result = nas_job.run(config, settings_for(tmp_path, budget_trials=6), tmp_path, say=lambda line: None, progress=False, noise_repeats=0)
    records = [TrialRecord(**row) for row in result["records"]]
    chosen = [r for r in records if r.state == "complete" and r.role == "search" and r.number != result["best"]["number"]][0]
    printed = []
    judged = verdict.judge(records, config, tmp_path, 3, printed.append, winner=chosen)
    assert judged["finalists"][0]["number"] == chosen.number and {c["best"] for c in judged["comparisons"]} == {chosen.number}
    assert {c["other_role"] for c in judged["comparisons"]} >= {"baseline:efficientnet-b0", "baseline:efficientnet-x-b0"}
    assert any(line.startswith(f"judged (trial {chosen.number}) over efficientnet-b0") for line in printed), printed


def test_without_a_spread_the_noise_is_not_measured(tmp_path):
    result = nas_job.run(stub_config(), settings_for(tmp_path, budget_trials=4), tmp_path, say=lambda line: None, progress=False, noise_repeats=3)
    assert result["noise"] == {"repeats": 3, "accuracy_std": None, "finalists": [], "comparisons": []}
