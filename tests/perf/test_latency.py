import numpy as np
import pytest

from effx_serve.core.errors import UserError
from effx_serve.perf.latency_store import LatencyKey, LatencyRecord, LatencyStore
from effx_serve.perf.profiler import Protocol, Timing, get_or_measure, profile_onnx, time_calls
from training.arch.presets import PRESETS, get_preset

KEY = LatencyKey(PRESETS["efficientnet-x-b0"].arch_hash(), "tpu-v3", "tensorflow", "bf16", 128, 224)
QUICK = Protocol(warmup_runs=2, warmup_seconds=0.0, min_runs=5, min_seconds=0.0)


def record(provenance="measured", p50=1.0, key=KEY):
    return LatencyRecord(key, provenance, p50, p50 * 1.1, p50 * 1.2, 50, 0.05, model="efficientnet-x-b0", details={"threads": 2})


def test_arch_hash_ignores_name_resolution_and_training_settings():
    spec = PRESETS["efficientnet-x-b0"]
    assert spec.arch_hash() == spec.with_(name="other", resolution=128, dropout=0.0).arch_hash()
    assert spec.arch_hash() != spec.with_(num_classes=10).arch_hash() != PRESETS["efficientnet-b0"].arch_hash()


def test_store_round_trip_and_persistence(tmp_path):
    path = tmp_path / "latency.sqlite"
    with LatencyStore(path) as store:
        store.put(record())
        store.put(record("published", 2.0))
    with LatencyStore(path) as store:
        assert store.get(KEY).provenance == "measured"  # measured is preferred
        assert store.get(KEY, provenance="published").p50_ms == 2.0
        assert store.get(KEY).details == {"threads": 2}
        assert len(store.find(KEY)) == 2 and store.find(hardware_id="nvidia-v100") == []
        store.put(record("measured", 3.0))  # a re-measurement replaces the old one
        assert [r.p50_ms for r in store.find(KEY, provenance="measured")] == [3.0]


def test_bad_records_are_refused():
    with pytest.raises(UserError, match="provenance must be one of"):
        record("guessed")
    with pytest.raises(UserError, match="p50 <= p90 <= p99"):
        LatencyRecord(KEY, "measured", 2.0, 1.0, 3.0, 10, 0.1)


def test_a_corrupt_store_is_a_clear_error(tmp_path):
    path = tmp_path / "latency.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(UserError, match="cannot be opened"):
        LatencyStore(path)


def test_timing_statistics_on_known_samples():
    timing = Timing.from_samples([ms / 1e3 for ms in range(1, 101)])
    assert timing.p50_ms == pytest.approx(50.5) and timing.p90_ms == pytest.approx(90.1) and timing.p99_ms == pytest.approx(99.01)
    assert timing.runs == 100 and timing.spread == pytest.approx((75.25 - 25.75) / 50.5)


def test_protocol_warms_up_then_times_at_least_min_runs():
    calls = []
    timing = time_calls(lambda: calls.append(1), Protocol(warmup_runs=3, warmup_seconds=0.0, min_runs=7, min_seconds=0.0, rounds=1, measurements=1))
    assert len(calls) == 10 and timing.runs == 7


def test_p50_is_the_quietest_rounds_median_and_the_tail_keeps_the_noise(monkeypatch):
    """Round 2 of 3 is disturbed (10x slower): p50 ignores it, p99 shows it."""
    from effx_serve.perf import profiler

    durations = iter([0.0] * 2 + [0.001] * 4 + [0.010] * 4 + [0.002] * 4)  # warm-up, then three rounds of 4
    clock = [0.0]
    monkeypatch.setattr(profiler.time, "perf_counter", lambda: clock[0])

    def call():
        clock[0] += next(durations)

    timing = time_calls(call, Protocol(warmup_runs=2, warmup_seconds=0.0, min_runs=12, min_seconds=0.0, rounds=3, measurements=1))
    assert timing.runs == 12 and timing.p50_ms == pytest.approx(1.0)
    assert timing.p99_ms == pytest.approx(10.0) and timing.mean_ms == pytest.approx(13 / 3)


def _timed(monkeypatch, durations_ms: list[float], **protocol):
    """time_calls on a fake clock: warm-up of one call, then one call per round of each measurement."""
    from effx_serve.perf import profiler

    durations, clock, calls = iter([0.0] + [ms / 1e3 for ms in durations_ms]), [0.0], []
    monkeypatch.setattr(profiler.time, "perf_counter", lambda: clock[0])

    def call():
        calls.append(1)
        clock[0] += next(durations)

    settings = {"warmup_runs": 1, "warmup_seconds": 0.0, "min_runs": 1, "min_seconds": 0.0, "rounds": 1} | protocol
    return time_calls(call, Protocol(**settings)), len(calls) - 1


def test_two_measurements_that_agree_settle_the_p50(monkeypatch):
    timing, timed = _timed(monkeypatch, [1.0, 1.05])
    assert timed == 2 and timing.settled and timing.p50_ms == pytest.approx(1.0) and timing.p50_measurements == pytest.approx((1.0, 1.05))


def test_measurements_that_differ_by_more_than_10_percent_are_repeated(monkeypatch):
    """A neighbour's burst moves the second measurement by 40%: a third is taken, and it agrees with the first."""
    timing, timed = _timed(monkeypatch, [1.0, 1.4, 1.02, 9.9])
    assert timed == 3 and timing.settled and timing.p50_ms == pytest.approx(1.0)
    assert timing.p50_measurements == pytest.approx((1.0, 1.4, 1.02))


def test_measurements_that_never_agree_give_their_median_and_say_so(monkeypatch, tmp_path):
    timing, timed = _timed(monkeypatch, [1.0, 1.5, 2.5, 4.0], max_measurements=4)
    assert timed == 4 and not timing.settled and timing.p50_ms == pytest.approx(2.0)
    with LatencyStore(tmp_path / "s.sqlite") as store:
        record, _ = get_or_measure(store, KEY, "x", lambda: (timing, {}))
    assert record.details["settled"] is False and record.details["p50_measurements_ms"] == pytest.approx([1.0, 1.5, 2.5, 4.0])


def test_cached_results_are_never_measured_twice(tmp_path):
    measured = []

    def measure():
        measured.append(1)
        return Timing.from_samples([0.001, 0.002, 0.003]), {"threads": 1}

    with LatencyStore(tmp_path / "s.sqlite") as store:
        first, cached = get_or_measure(store, KEY, "x", measure)
        again, cached_again = get_or_measure(store, KEY, "x", measure)
    assert (cached, cached_again, len(measured)) == (False, True, 1)
    assert again == first and first.p50_ms == pytest.approx(2.0)


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    from training.arch.export import export_onnx
    from training.arch.model import build_model

    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export_onnx(build_model(get_preset("efficientnet-x-b0", width=0.25, depth=0.5, num_classes=10)), path, 64)
    return path


def test_profile_a_tiny_model(tiny_onnx):
    timing, settings = profile_onnx(tiny_onnx, batch=2, resolution=64, threads=1, protocol=QUICK)
    assert timing.runs >= 5 and 0 < timing.p50_ms <= timing.p90_ms <= timing.p99_ms
    assert settings["intra_op_threads"] == 1 and settings["provider"] == "CPUExecutionProvider"


def test_profiler_bad_input(tmp_path, tiny_onnx):
    with pytest.raises(UserError, match="does not exist"):
        profile_onnx(tmp_path / "nope.onnx", 1, 64, protocol=QUICK)
    garbage = tmp_path / "bad.onnx"
    garbage.write_bytes(np.random.default_rng(0).bytes(256))
    with pytest.raises(UserError, match="cannot be loaded"):
        profile_onnx(garbage, 1, 64, protocol=QUICK)
    with pytest.raises(UserError, match="TensorrtExecutionProvider is not available"):
        profile_onnx(tiny_onnx, 1, 64, provider="TensorrtExecutionProvider", protocol=QUICK)
    with pytest.raises(UserError, match="batch must be a whole number of at least 1"):
        profile_onnx(tiny_onnx, 0, 64, protocol=QUICK)
    with pytest.raises(UserError, match="takes 64x64 images, not 96x96"):
        profile_onnx(tiny_onnx, 1, 96, protocol=QUICK)


def test_profile_a_torch_module():
    from effx_serve.perf.profiler import profile_torch
    from training.arch.model import build_model

    model = build_model(get_preset("efficientnet-x-b0", width=0.25, depth=0.5, num_classes=10))
    timing, settings = profile_torch(model, batch=2, resolution=64, threads=1, protocol=QUICK)
    assert timing.runs >= 5 and 0 < timing.p50_ms <= timing.p99_ms
    assert settings == settings | {"device": "cpu", "mode": "eager", "torch_threads": 1}
    with pytest.raises(UserError, match="fp32, fp16 or bf16"):
        profile_torch(model, 1, 64, precision="int8", protocol=QUICK)
    with pytest.raises(UserError, match="batch must be"):
        profile_torch(model, 0, 64, protocol=QUICK)
    with pytest.raises(UserError, match="unknown torch mode 'graph'"):
        profile_torch(model, 1, 64, mode="graph", protocol=QUICK)
    with pytest.raises(UserError, match="captured on a CUDA device; this machine's device is cpu"):
        profile_torch(model, 1, 64, mode="cudagraph", protocol=QUICK)



def test_find_accepts_only_known_columns(tmp_path):
    with LatencyStore(tmp_path / "s.sqlite") as store:
        with pytest.raises(UserError, match="no column bogus"):
            store.find(bogus="1; DROP TABLE latency")


def test_published_table3_records():
    from effx_serve.perf.published import TABLE3_MS, ensure_published

    with LatencyStore() as store:
        assert ensure_published(store) == ensure_published(store) == 2 * len(TABLE3_MS)  # idempotent
        x_b0 = store.find(model="efficientnet-x-b0", provenance="published")
        b7 = store.find(model="efficientnet-b7", hardware_id="nvidia-v100")
    assert {(r.key.hardware_id, r.p50_ms) for r in x_b0} == {("tpu-v3", 8.71), ("nvidia-v100", 22.5)}
    assert x_b0[0].key.arch_hash == PRESETS["efficientnet-x-b0"].arch_hash() and x_b0[0].key.resolution == 224
    assert b7[0].p50_ms == 1471.3 and "not stated" in b7[0].details["batch"]


def test_a_profile_interrupted_midway_leaves_the_store_consistent(tmp_path):
    path = tmp_path / "s.sqlite"
    other = LatencyKey(KEY.arch_hash, KEY.hardware_id, KEY.runtime, KEY.precision, 1, KEY.resolution)

    def interrupted():
        raise KeyboardInterrupt

    with LatencyStore(path) as store:
        store.put(record())
        with pytest.raises(KeyboardInterrupt):
            get_or_measure(store, other, "x", interrupted)
    with LatencyStore(path) as store:  # reopens cleanly: the finished record is there, no partial one
        assert [r.key for r in store.find()] == [KEY]
        first, cached = get_or_measure(store, other, "x", lambda: (Timing.from_samples([0.001, 0.002]), {}))
        assert not cached and store.get(other) == first
