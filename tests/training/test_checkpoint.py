import json
import pickle
import random

import numpy as np
import pytest
import torch

from effx_serve.core import fs
from training import rng
from training.arch.model import build_model
from training.arch.spec import spec_from_stage_strings
from training.checkpoint import (
    check_compatible,
    flatten_optimizer,
    json_path,
    load_weights,
    optimizer_param_names,
    read_checkpoint,
    restore_optimizer,
    save_checkpoint,
)
from training.errors import SpecError
from training.optim import TFRMSprop


def tiny_spec(**changes):
    base = dict(width=0.5, resolution=16, num_classes=4, head_filters=64)
    return spec_from_stage_strings(["r1_k3_s11_e1_i32_o16_se0.25", "r1_k3_s22_e4_i16_o24_se0.25"], **{**base, **changes})


def state(seed=0):
    torch.manual_seed(seed)
    model = build_model(tiny_spec())
    return {f"model/{k}": v for k, v in model.state_dict().items()} | {f"ema/{k}": v * 2 for k, v in model.state_dict().items()}


def meta(epoch, **extra):
    return dict(epoch=epoch, spec=tiny_spec().to_dict(), data_fingerprint="abc", **extra)


def assert_same(tensors, expected):
    assert tensors.keys() == expected.keys()
    assert all(torch.equal(tensors[k], expected[k]) for k in expected)


def test_round_trip(tmp_path):
    tensors = state()
    path = save_checkpoint(tmp_path, "last", meta(3, history=[{"loss": 1.5}]), tensors)
    assert path == tmp_path / "checkpoint-last.json"
    record = json.loads(path.read_text())
    assert record["weights"]["file"] == "checkpoint-last.e0003.safetensors" and len(record["weights"]["sha256"]) == 64
    assert record["format_version"] == 1 and record["torch_version"] == torch.__version__ and record["kind"] == "last"
    loaded = read_checkpoint(path)
    assert loaded.meta["epoch"] == 3 and loaded.meta["history"] == [{"loss": 1.5}]
    assert loaded.spec == tiny_spec()
    assert_same(loaded.tensors, tensors)
    assert loaded.section("ema").keys() == build_model(tiny_spec()).state_dict().keys()


def test_non_finite_metrics_are_saved_as_null(tmp_path):
    path = save_checkpoint(tmp_path, "best", meta(1, metrics={"loss": float("nan"), "top1": 0.5}), state())
    assert read_checkpoint(path).meta["metrics"] == {"loss": None, "top1": 0.5}


def test_channels_last_tensors_are_saved(tmp_path):
    weight = torch.randn(4, 3, 3, 3).to(memory_format=torch.channels_last)
    save_checkpoint(tmp_path, "last", meta(1), {"model/w": weight})
    assert torch.equal(read_checkpoint(json_path(tmp_path, "last")).tensors["model/w"], weight)


def test_a_new_save_replaces_the_old_tensor_file(tmp_path):
    save_checkpoint(tmp_path, "last", meta(1), state(0))
    save_checkpoint(tmp_path, "last", meta(2), state(1))
    save_checkpoint(tmp_path, "best", meta(2), state(1))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "best.e0002.safetensors", "best.json", "checkpoint-last.e0002.safetensors", "checkpoint-last.json"]
    # Saving the same epoch again never overwrites the tensor file the published JSON names.
    save_checkpoint(tmp_path, "last", meta(2), state(2))
    assert read_checkpoint(json_path(tmp_path, "last")).meta["weights"]["file"] == "checkpoint-last.e0002.1.safetensors"
    assert_same(read_checkpoint(json_path(tmp_path, "last")).tensors, state(2))


@pytest.mark.parametrize("fail_on", ["tensors", "json"])
def test_a_failure_mid_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch, fail_on):
    first = state(0)
    save_checkpoint(tmp_path, "last", meta(1), first)
    real = fs._write_all

    def half_then_die(handle, data):
        is_json = data[:1] == b"{"
        if is_json == (fail_on == "json"):
            handle.write(data[: len(data) // 2])
            raise KeyboardInterrupt("killed")
        real(handle, data)

    monkeypatch.setattr(fs, "_write_all", half_then_die)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, "last", meta(2), state(1))
    monkeypatch.setattr(fs, "_write_all", real)
    loaded = read_checkpoint(json_path(tmp_path, "last"))
    assert loaded.meta["epoch"] == 1
    assert_same(loaded.tensors, first)
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file was removed
    # A later successful save cleans up what the killed one left behind.
    save_checkpoint(tmp_path, "last", meta(3), state(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-last.e0003.safetensors", "checkpoint-last.json"]


def test_a_kill_between_the_two_renames_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    first = state(0)
    save_checkpoint(tmp_path, "last", meta(1), first)
    real = fs.os.replace

    def die_on_json(src, dst):
        if str(dst).endswith(".json"):
            raise SystemExit("killed")
        real(src, dst)

    monkeypatch.setattr(fs.os, "replace", die_on_json)
    with pytest.raises(SystemExit):
        save_checkpoint(tmp_path, "last", meta(2), state(1))
    monkeypatch.setattr(fs.os, "replace", real)
    assert (tmp_path / "checkpoint-last.e0002.safetensors").exists()  # the new tensors landed...
    assert_same(read_checkpoint(json_path(tmp_path, "last")).tensors, first)  # ...but the old pair is intact


def test_sha_mismatch_is_detected(tmp_path):
    path = save_checkpoint(tmp_path, "last", meta(1), state())
    tensor_file = tmp_path / json.loads(path.read_text())["weights"]["file"]
    data = bytearray(tensor_file.read_bytes())
    data[-1] ^= 0xFF
    tensor_file.write_bytes(bytes(data))
    with pytest.raises(SpecError, match="do not match the sha256 recorded in checkpoint-last.json"):
        read_checkpoint(path)


def test_missing_truncated_and_foreign_files(tmp_path):
    with pytest.raises(SpecError, match="no checkpoint at"):
        read_checkpoint(tmp_path / "checkpoint-last.json")
    path = save_checkpoint(tmp_path, "last", meta(1), state())
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.raises(SpecError, match="is not valid JSON"):
        read_checkpoint(path)
    record = json.loads(text)
    path.write_text(json.dumps(dict(record, format_version=99)))
    with pytest.raises(SpecError, match="format version 99"):
        read_checkpoint(path)
    path.write_text(json.dumps(dict(record, weights=dict(record["weights"], file="../elsewhere.safetensors"))))
    with pytest.raises(SpecError, match="not a plain file name"):
        read_checkpoint(path)
    (tmp_path / record["weights"]["file"]).unlink()
    path.write_text(text)
    with pytest.raises(SpecError, match="which is missing"):
        read_checkpoint(path)
    with pytest.raises(SpecError, match="is a directory"):
        read_checkpoint(tmp_path)


def test_loading_never_unpickles(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, "final", meta(2), state())

    def forbidden(*args, **kwargs):
        raise AssertionError("unpickling is not allowed")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    assert read_checkpoint(json_path(tmp_path, "final")).meta["epoch"] == 2
    spec, weights = load_weights(tmp_path)
    model = build_model(spec)
    model.load_state_dict(weights)


def test_load_weights_picks_final_then_last_and_ema_by_default(tmp_path):
    tensors = state()
    save_checkpoint(tmp_path, "last", meta(1), tensors)
    spec, weights = load_weights(tmp_path)
    assert spec == tiny_spec()
    assert_same(weights, {k[len("ema/"):]: v for k, v in tensors.items() if k.startswith("ema/")})
    final = state(5)
    save_checkpoint(tmp_path, "final", meta(2), final)
    _, weights = load_weights(tmp_path, which="model")
    assert_same(weights, {k[len("model/"):]: v for k, v in final.items() if k.startswith("model/")})
    _, weights = load_weights(tmp_path / "checkpoint-last.json", which="model")
    assert_same(weights, {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")})
    with pytest.raises(SpecError, match="'ema' or 'model'"):
        load_weights(tmp_path, which="raw")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpecError, match="holds no checkpoint"):
        load_weights(tmp_path / "empty")
    with pytest.raises(SpecError, match="no checkpoint at"):
        load_weights(tmp_path / "nothing-here.json")


def test_spec_and_data_mismatch(tmp_path):
    path = save_checkpoint(tmp_path, "last", meta(1), state())
    checkpoint = read_checkpoint(path)
    check_compatible(checkpoint, tiny_spec(), "abc")
    check_compatible(checkpoint, tiny_spec(name="renamed"), "abc")  # the name is not part of the model
    with pytest.raises(SpecError, match=r"different model \(num_classes: 4 -> 5\)"):
        check_compatible(checkpoint, tiny_spec(num_classes=5), "abc")
    with pytest.raises(SpecError, match="data set changed .* --allow-data-change"):
        check_compatible(checkpoint, tiny_spec(), "xyz")
    check_compatible(checkpoint, tiny_spec(), "xyz", allow_data_change=True)


def test_optimizer_state_round_trip_continues_identically(tmp_path):
    torch.manual_seed(0)
    spec = tiny_spec(dropout=0.0, drop_connect=0.0)  # no random draws: both copies must step alike
    model = build_model(spec)
    optimizer = TFRMSprop(model.parameters(), lr=0.01, weight_decay=1e-5)
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])

    def step(m, opt):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(m(x), y).backward()
        opt.step()

    step(model, optimizer)
    names = optimizer_param_names(optimizer, model)
    tensors, saved = flatten_optimizer(optimizer, names)
    assert "stem.0.weight/square_avg" in tensors and "fc.bias/momentum_buffer" in tensors
    prefixed = {f"optimizer/{k}": v for k, v in tensors.items()} | {f"model/{k}": v for k, v in model.state_dict().items()}
    path = save_checkpoint(tmp_path, "last", meta(1, optimizer=saved), prefixed)
    loaded = read_checkpoint(path)
    twin = build_model(spec)
    twin.load_state_dict(loaded.section("model"))
    twin_optimizer = TFRMSprop(twin.parameters(), lr=0.5)
    restore_optimizer(twin_optimizer, optimizer_param_names(twin_optimizer, twin), loaded.section("optimizer"), loaded.meta["optimizer"])
    assert twin_optimizer.param_groups[0]["lr"] == 0.01
    step(model, optimizer)
    step(twin, twin_optimizer)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), twin.state_dict().values(), strict=True))
    sgd = torch.optim.SGD(twin.parameters(), lr=0.1)
    with pytest.raises(SpecError, match="holds TFRMSprop state but the recipe builds SGD"):
        restore_optimizer(sgd, optimizer_param_names(sgd, twin), loaded.section("optimizer"), loaded.meta["optimizer"])


def test_rng_states_round_trip_through_json():
    rng.seed_everything(7)
    torch.rand(3), random.random(), np.random.rand()
    state = json.loads(json.dumps(rng.capture()))
    first = (torch.rand(3), random.random(), np.random.rand(), np.random.randn())
    rng.seed_everything(99)
    rng.restore(state)
    again = (torch.rand(3), random.random(), np.random.rand(), np.random.randn())
    assert torch.equal(first[0], again[0]) and first[1:] == again[1:]
    with pytest.raises(SpecError, match="RNG state is malformed"):
        rng.restore(dict(state, torch="not base64!"))
