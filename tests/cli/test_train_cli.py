"""`effx-serve demo-data` and `effx-serve train` end to end on a tiny generated dataset."""

import json

import pytest
import torch

from effx_serve.cli import main
from training.arch.spec import spec_from_stage_strings
from training.checkpoint import load_weights

TINY = spec_from_stage_strings(["r1_k3_s11_e1_i32_o16_se0.25", "r1_k3_s22_e4_i16_o24_se0.25"], width=0.5, resolution=32,
                               num_classes=10, head_filters=64, bn_momentum=0.1, name="tiny")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def demo(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo-data", "--out", str(out), "--size", "12", "--image-size", "32", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 10 * (12 + 2) and not summary["reused"]
    return out


def test_train_writes_labels_checkpoints_and_metrics_then_resumes(demo, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--arch", TINY.to_json(), "--data", str(demo), "--out", str(out), "--epochs", "1", "--batch-size", "16",
            "--workers", "0", "--json"]
    assert main(argv) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["epochs"] == 1 and 0 <= metrics["ema_top1"] <= metrics["ema_top5"] <= 1
    assert (out / "labels.txt").read_text().split() == ["circle", "square", "triangle", "star", "cross", "ring", "stripes",
                                                         "checkerboard", "dots", "zigzag"]
    spec, state = load_weights(out)
    assert spec.num_classes == 10 and spec.arch_hash() == TINY.arch_hash() and state
    # Training into the same folder again needs --resume; with it, one more epoch and no --arch needed.
    assert main(argv) == 2 and "--resume" in capsys.readouterr().err
    assert main(["train", "--data", str(demo), "--out", str(out), "--epochs", "2", "--resume", "--workers", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["epochs"] == 2


def test_train_says_what_the_run_will_take_before_it_starts_and_warns_when_long(demo, tmp_path, capsys, monkeypatch):
    argv = ["train", "--arch", TINY.to_json(), "--data", str(demo), "--out", str(tmp_path / "run"), "--epochs", "1", "--workers", "0"]
    assert main(argv) == 0
    assert "estimated time: about " in capsys.readouterr().err
    monkeypatch.setattr("search.defaults.seconds_per_image", lambda spec: 100.0)
    assert main([*argv[:6], str(tmp_path / "long"), "--epochs", "1", "--workers", "0", "--max-steps-per-epoch", "1"]) == 0
    assert "(long: fewer --epochs, a lower --resolution or --max-steps-per-epoch shortens it)" in capsys.readouterr().err


def test_a_corrupt_image_stops_with_its_path_or_is_skipped_by_flag(demo, tmp_path, capsys):
    bad = demo / "train" / "circle" / "00000.png"
    bad.write_bytes(b"not a png")
    argv = ["train", "--arch", TINY.to_json(), "--data", str(demo), "--epochs", "1", "--workers", "0", "--max-steps-per-epoch", "1", "--json"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 2
    assert "00000.png" in capsys.readouterr().err
    assert main([*argv, "--out", str(tmp_path / "b"), "--skip-bad-images"]) == 0
    assert "skipped 1 unreadable image(s) in train" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["train", "--data", "{data}", "--out", "{tmp}/x"], "--arch is required"),
    (["train", "--arch", "efficientnet-b9", "--data", "{data}", "--out", "{tmp}/x"], "efficientnet-b9"),
    (["train", "--arch", "efficientnet-b0", "--data", "{tmp}/missing", "--out", "{tmp}/x"], "missing"),
    (["train", "--arch", "efficientnet-b0", "--data", "{data}", "--out", "{tmp}/x", "--recipe", "{tmp}/none.json"], "cannot be read"),
    (["train", "--arch", "efficientnet-b0", "--data", "{data}", "--out", "{tmp}/x", "--recipe", "{tmp}/binary.json"], "is not UTF-8 text"),
    (["train", "--arch", "efficientnet-b0", "--data", "{data}", "--out", "{tmp}/binary.json"], "is (or is inside) a file"),
    (["train", "--arch", "efficientnet-b0", "--data", "{data}", "--out", "{tmp}/binary.json/run"], "is (or is inside) a file"),
])
def test_train_bad_input(argv, message, demo, tmp_path, capsys):
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00{}")
    argv = [a.format(data=demo, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_resume_from_a_corrupt_checkpoint_is_a_clear_error(demo, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint-last.json").write_text("{ half a file")
    for arch in ([], ["--arch", TINY.to_json()]):
        assert main(["train", *arch, "--data", str(demo), "--out", str(out), "--resume", "--workers", "0"]) == 2
        assert "not valid JSON" in capsys.readouterr().err


def test_a_second_training_run_into_a_folder_in_use_is_refused(demo, tmp_path, capsys):
    # Two runs on one --out used to race past the "already holds a run" check and overwrite each other's checkpoints.
    from effx_serve.core.fs import held

    out = tmp_path / "run"
    with held(out, "training run"):  # as a run in another process holds it
        assert main(["train", "--arch", TINY.to_json(), "--data", str(demo), "--out", str(out), "--epochs", "1", "--workers", "0"]) == 2
    assert "is in use by another training run" in capsys.readouterr().err
