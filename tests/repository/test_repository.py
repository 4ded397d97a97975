"""build-repo and check-repo on a tiny trained family: export, profile, config, manifest, atomic swap, reuse."""

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch

from effx_serve.cli import main
from effx_serve.core import atomic_dir
from effx_serve.core.errors import UserError
from effx_serve.core.fs import sha256_file
from effx_serve.perf import profiler
from effx_serve.repository import build as repo_build
from effx_serve.repository import manifest, triton_config
from effx_serve.repository.check import check_repository
from tests.helpers import build, measure_quickly, triton_or_skip
from training.checkpoint import FORMAT_VERSION

pytestmark = pytest.mark.usefixtures("quick_ceilings")


@pytest.fixture(scope="module")
def built(tiny_family, tmp_path_factory):
    """A repository built once (tests that damage it work on copies)."""
    out = tmp_path_factory.mktemp("repo") / "model_repository"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EFFX_CACHE_DIR", str(out.parent / "cache"))
        measure_quickly(mp)
        build(tiny_family, out, hardware_ids=("nvidia-h200",))
    return out


def copy_of(built, tmp_path):
    target = tmp_path / "repo"
    shutil.copytree(built, target)
    return target


# --- the built repository ----------------------------------------------------------------------


def test_layout_config_and_manifest(built):
    data = manifest.read(built)
    assert list(data["members"]) == ["tiny-f-b0", "tiny-f-b1"]
    for name, member in data["members"].items():
        assert (built / name / "1" / "model.onnx").is_file() and (built / name / "labels.txt").read_text().count("\n") == 10
        config = triton_config.parse((built / name / "config.pbtxt").read_text())
        assert config.name == name and config.backend == "onnxruntime"
        assert list(config.input[0].dims) == [3, member["resolution"], member["resolution"]]
        assert list(config.output[0].dims) == [10] and config.output[0].label_filename == "labels.txt"
        assert config.max_batch_size == 16 and config.dynamic_batching.max_queue_delay_microseconds >= triton_config.MIN_QUEUE_DELAY_US
        assert config.model_warmup[0].inputs["images"].zero_data
        measured = [r for r in member["latency"] if r["provenance"] == "measured"]
        predicted = [r for r in member["latency"] if r["provenance"] == "predicted"]
        assert [r["batch"] for r in measured] == [1, 4, 16] and all(r["p50_ms"] > 0 for r in measured)
        assert all(r["source"].startswith("side by side with the family's other members, median of 3 rounds") for r in measured)
        assert {r["hardware_id"] for r in predicted} == {"nvidia-h200"} and predicted[0]["precision"] == "fp16"
        assert 0 <= member["accuracy"]["top1"] <= 1 and member["accuracy"]["provenance"] == "measured"
    assert data["families"][0]["members"] == ["tiny-f-b0", "tiny-f-b1"] and data["families"][0]["hardware_classes"] == ["cpu", "gpu"]
    assert data["members"]["tiny-f-b1"]["resolution"] > data["members"]["tiny-f-b0"]["resolution"]


def test_check_repo_passes_on_a_good_repository(built, capsys):
    _, problems = check_repository(built)
    assert problems == []
    assert main(["check-repo", str(built)]) == 0
    assert "OK, 2 members" in capsys.readouterr().out


def test_exported_model_matches_pytorch_logits(built, tiny_family):
    import numpy as np

    from effx_serve.perf.session import onnxruntime_session
    from training.arch.model import build_model
    from training.checkpoint import load_weights

    spec, weights = load_weights(tiny_family[1] / "tiny-f-b0")
    model = build_model(spec).eval()
    model.load_state_dict(weights)
    x = torch.randn(3, 3, spec.resolution, spec.resolution)
    with torch.no_grad():
        expected = model(x).numpy()
    got = onnxruntime_session(built / "tiny-f-b0" / "1" / "model.onnx", threads=1).run(["logits"], {"images": x.numpy()})[0]
    assert np.abs(got - expected).max() < 1e-4


# --- incremental, atomic --------------------------------------------------------------------------


def test_rebuild_reuses_unchanged_exports(built, tiny_family, tmp_path, monkeypatch):
    out = copy_of(built, tmp_path)
    exported = []
    real = repo_build._export
    monkeypatch.setattr(repo_build, "_export", lambda member, *rest: (exported.append(member.name), real(member, *rest))[1])
    import training.arch.export

    monkeypatch.setattr(training.arch.export, "export_onnx", lambda *a, **k: pytest.fail("an unchanged member was exported again"))
    monkeypatch.setattr(profiler, "profile_onnx", lambda *a, **k: pytest.fail("an unchanged member was profiled again"))
    monkeypatch.setenv("EFFX_CACHE_DIR", str(built.parent / "cache"))  # the latency store the first build filled
    (out / "README.md").write_text("kept")
    data = build(tiny_family, out, hardware_ids=("nvidia-h200",))
    assert exported == ["tiny-f-b0", "tiny-f-b1"] and check_repository(out)[1] == []
    assert (out / "README.md").read_text() == "kept"  # files of one's own beside the members survive a rebuild
    assert data["members"]["tiny-f-b0"]["model"]["sha256"] == manifest.read(built)["members"]["tiny-f-b0"]["model"]["sha256"]


@pytest.mark.parametrize("failure", [KeyboardInterrupt, OSError(28, "No space left on device")])
def test_a_build_that_fails_midway_leaves_the_old_repository_intact(built, tiny_family, tmp_path, monkeypatch, failure):
    out = copy_of(built, tmp_path)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    real = repo_build._measured
    calls = []

    def measured(*args):
        calls.append(1)
        if len(calls) == 2:  # the second member: the first is already in the staging folder
            raise failure
        return real(*args)

    monkeypatch.setattr(repo_build, "_measured", measured)
    if isinstance(failure, OSError):
        with pytest.raises(UserError, match="No space left on device.*unchanged"):
            build(tiny_family, out)
    else:
        with pytest.raises(KeyboardInterrupt):
            build(tiny_family, out)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert not list(tmp_path.glob(".repo.*"))  # no staging folder left behind


def test_a_crash_between_the_two_renames_is_recovered(built, tmp_path, monkeypatch):
    """Where renameat2 is missing the swap is two renames; a process killed between them leaves only the backup."""
    out = copy_of(built, tmp_path)
    staging = atomic_dir.staging_dir(out)
    (staging / "new").write_text("new tree")
    monkeypatch.setattr(atomic_dir, "_exchange", lambda a, b: False)
    real_rename = atomic_dir.os.rename

    killed = []

    def rename(source, target):
        if source == staging or killed:  # dies after out -> backup, before staging -> out: nothing runs after that
            killed.append(source)
            raise SystemExit("killed")
        return real_rename(source, target)

    monkeypatch.setattr(atomic_dir.os, "rename", rename)
    with pytest.raises(SystemExit):
        atomic_dir.swap_in(staging, out)
    monkeypatch.setattr(atomic_dir.os, "rename", real_rename)
    assert not out.exists()
    monkeypatch.setattr(atomic_dir, "pid_alive", lambda pid: False)  # as if the killed build's process were gone
    atomic_dir.recover(out)
    assert manifest.read(out) and not staging.exists()


def test_a_swap_replaces_only_what_a_build_may_delete(tmp_path):
    folder = tmp_path / "folder"
    assert atomic_dir.replace_refusal(folder, "manifest.json") is None  # absent
    folder.mkdir()
    assert atomic_dir.replace_refusal(folder, "manifest.json") is None  # empty
    (folder / "README.md").write_text("mine")
    assert atomic_dir.replace_refusal(folder, "manifest.json") == "holds other things (README.md) and no manifest.json"
    assert atomic_dir.replace_refusal(folder, "manifest.json", files_kept=True) is None  # files a build carries over
    (folder / "sub").mkdir()
    assert "no manifest.json" in atomic_dir.replace_refusal(folder, "manifest.json", files_kept=True)
    (folder / "manifest.json").write_text("{}")
    assert atomic_dir.replace_refusal(folder, "manifest.json") is None  # a previous build
    assert atomic_dir.replace_refusal(folder / "README.md", "manifest.json") == "is a file"
    assert atomic_dir.replace_refusal(Path("/"), "manifest.json") == "is the file system's root"


def test_swap_replaces_the_whole_tree(tmp_path):
    target = tmp_path / "repo"
    target.mkdir()
    (target / "old-only").write_text("old")
    staging = atomic_dir.staging_dir(target)
    (staging / "new-only").write_text("new")
    atomic_dir.swap_in(staging, target)
    assert [p.name for p in target.iterdir()] == ["new-only"] and sorted(p.name for p in tmp_path.iterdir()) == ["repo"]


# --- check-repo on broken repositories -----------------------------------------------------------


@pytest.mark.parametrize("damage, expected", [
    (lambda r: (r / "tiny-f-b0" / "1" / "model.onnx").write_bytes(b"not onnx"), "sha256 differs"),
    (lambda r: (r / "tiny-f-b0" / "1" / "model.onnx").unlink(), "missing"),
    (lambda r: (r / "tiny-f-b0" / "config.pbtxt").write_text("name: \"tiny-f-b0\"\nmax_batch_size: lots\n"), "config.pbtxt"),
    (lambda r: (r / "tiny-f-b1" / "config.pbtxt").write_text((r / "tiny-f-b1" / "config.pbtxt").read_text().replace("dims: 10", "dims: 11")), "output"),
    (lambda r: (r / "tiny-f-b0" / "labels.txt").write_text("a\nb\n"), "labels"),
    (lambda r: (r / "tiny-f-b0" / "labels.txt").write_bytes(b"\xff\xfe\x00junk"), "labels.txt: cannot be read as UTF-8 text"),
    (lambda r: (r / "tiny-f-b1" / "config.pbtxt").write_bytes(b"\xff\xfe\x00junk"), "config.pbtxt: is not UTF-8 text"),
    (lambda r: shutil.rmtree(r / "tiny-f-b1"), "missing: the manifest lists this member"),
    (lambda r: (r / "stray").mkdir(), "not in the manifest"),
    (lambda r: (r / "manifest.json").write_text("{"), "not JSON"),
])
def test_check_repo_names_each_problem(built, tmp_path, capsys, damage, expected):
    out = copy_of(built, tmp_path)
    damage(out)
    _, problems = check_repository(out)
    assert problems and any(expected in str(p) for p in problems), problems
    assert main(["check-repo", str(out)]) == 1
    assert expected in capsys.readouterr().out


def test_check_repo_runs_onnx_checker_on_a_model_that_matches_its_manifest_hash(built, tmp_path):
    out = copy_of(built, tmp_path)
    model = out / "tiny-f-b0" / "1" / "model.onnx"
    model.write_bytes(b"\x08\x07garbage")
    data = json.loads((out / "manifest.json").read_text())
    data["members"]["tiny-f-b0"]["model"]["sha256"] = sha256_file(model)
    (out / "manifest.json").write_text(json.dumps(data))
    assert any("onnx.checker" in str(p) or "ONNX Runtime" in str(p) for p in check_repository(out)[1])


# --- bad input to build-repo ----------------------------------------------------------------------


def test_bad_inputs_to_build_repo(tiny_family, built, tmp_path, capsys):
    family, checkpoints = tiny_family
    a_file = tmp_path / "file"
    a_file.write_text("x")
    project = tmp_path / "project"  # a folder of other things: the swap would delete them
    (project / "src").mkdir(parents=True)
    (project / "src" / "code.py").write_text("keep me")
    cases = [
        (["--family", str(family), "--checkpoints", str(checkpoints), "--out", str(a_file)], "is a file"),
        (["--family", str(family), "--checkpoints", str(checkpoints), "--out", str(project)], "holds other things (src) and no manifest.json"),
        (["--family", str(family), "--checkpoints", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")], "is not a folder"),
        (["--family", str(family), "--out", str(tmp_path / "r")], "--family needs --checkpoints"),
        (["--family", str(family), "--checkpoints", str(checkpoints), "--out", str(tmp_path / "r"), "--batches", "4,8"], "must include 1"),
        (["--family", str(family), "--checkpoints", str(checkpoints), "--out", str(tmp_path / "r"), "--batches", "1,100000000"], "more than 1024"),
        (["--family", str(family), "--checkpoints", str(checkpoints), "--out", str(tmp_path / "r"), "--hardware", "nosuch"], "unknown hardware 'nosuch'"),
        (["--family", str(tmp_path / "missing.json"), "--checkpoints", str(checkpoints), "--out", str(tmp_path / "r")], "cannot be read"),
    ]
    for argv, message in cases:
        assert main(["build-repo", *argv]) == 2
        assert message in capsys.readouterr().err
    assert (project / "src" / "code.py").read_text() == "keep me"
    data = json.loads(family.read_text())
    for change, message in ((lambda d: d.pop("hardware"), "names no hardware"), (lambda d: d["members"][0].update(phi="abc"), "has phi 'abc'")):
        broken = copy.deepcopy(data)
        change(broken)
        (tmp_path / "broken.json").write_text(json.dumps(broken))
        assert main(["build-repo", "--family", str(tmp_path / "broken.json"), "--checkpoints", str(checkpoints), "--out", str(tmp_path / "r")]) == 2
        assert message in capsys.readouterr().err
    member = sorted(p.name for p in checkpoints.iterdir())[0]
    for damage, message in (("labels.txt", "not UTF-8 text"), ("final.json", "is not a finished training run's")):
        copied = tmp_path / f"damaged-{damage}"
        shutil.copytree(checkpoints, copied)
        if damage == "labels.txt":
            (copied / member / "labels.txt").write_bytes(b"\xff\xfe\x00")
        else:
            (copied / member / "final.json").write_text(json.dumps({"format_version": FORMAT_VERSION}))
        assert main(["build-repo", "--family", str(family), "--checkpoints", str(copied), "--out", str(tmp_path / "r")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    empty = tmp_path / "empty"
    (empty / "tiny-f-b0").mkdir(parents=True)
    assert main(["build-repo", "--family", str(family), "--checkpoints", str(empty), "--out", str(tmp_path / "r")]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_a_complete_family_is_timed_side_by_side_and_replaces_a_figure_from_a_slow_moment(tiny_family, tmp_path, monkeypatch):
    """b1's batch-1 record says 1,000 ms (timed while the machine was busy): the members timed in turn overrule it."""
    from effx_serve.hardware.machine import this_machine
    from effx_serve.perf.latency_store import LatencyKey, LatencyRecord, LatencyStore

    b1 = build(tiny_family, tmp_path / "first")["members"]["tiny-f-b1"]  # fills the store
    key = LatencyKey(b1["arch_hash"], this_machine().hardware_id, "onnxruntime", "fp32", 1, b1["resolution"])
    with LatencyStore() as store:
        store.put(LatencyRecord(key, "measured", 1000.0, 1000.0, 1000.0, 30, 0.0, model="tiny-f-b1", details={}))
    rounds = []
    real = repo_build.side_by_side
    monkeypatch.setattr(repo_build, "side_by_side", lambda *args: (rounds.append(args[-1]), real(*args))[1])
    data = build(tiny_family, tmp_path / "again")
    b1 = next(r for r in data["members"]["tiny-f-b1"]["latency"] if r["batch"] == 1)
    assert rounds == [profiler.SIDE_BY_SIDE_ROUNDS] and b1["p50_ms"] < 1000 and b1["source"].startswith("side by side")
    with LatencyStore() as store:
        assert store.get(key, "measured").details["side_by_side"]["with"] == ["tiny-f-b0", "tiny-f-b1"]
    rounds.clear()
    build(tiny_family, tmp_path / "third")
    assert rounds == []  # every figure already taken side by side with these members: nothing timed again


def test_a_step_of_a_larger_family_leaves_out_untrained_members_and_says_partial(tiny_family, tmp_path):
    family, checkpoints = tiny_family
    some = tmp_path / "checkpoints"
    shutil.copytree(checkpoints / "tiny-f-b1", some / "tiny-f-b1")  # b1 trained, b0 not yet
    data = build((family, some), tmp_path / "r", partial_of=2)
    assert list(data["members"]) == ["tiny-f-b1"] and data["partial"] == {"members_planned": 2}
    assert data["members"]["tiny-f-b1"]["latency"][0]["source"].startswith("effx-serve profile protocol")  # one member: none to time beside
    assert manifest.read(tmp_path / "r")["families"][0]["members"] == ["tiny-f-b1"]
    assert "partial" not in build(tiny_family, tmp_path / "r", partial_of=2)  # every member planned is in: complete
    (tmp_path / "none").mkdir()
    with pytest.raises(UserError, match="no member of .* has a finished checkpoint"):
        build((family, tmp_path / "none"), tmp_path / "r", partial_of=2)


def test_an_unwritable_output_folder_is_a_clear_error(tiny_family, tmp_path, monkeypatch, capsys):
    def refuse(target):  # what mkdir raises in a folder without write permission (root, running tests here, may write anywhere)
        raise PermissionError(13, "Permission denied", str(target))

    monkeypatch.setattr(atomic_dir, "staging_dir", refuse)
    family, checkpoints = tiny_family
    assert main(["build-repo", "--family", str(family), "--checkpoints", str(checkpoints), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "cannot write beside" in err and "Permission denied" in err


def test_a_checkpoint_of_another_spec_is_refused(tiny_family, tmp_path):
    family, checkpoints = tiny_family
    swapped = tmp_path / "checkpoints"
    shutil.copytree(checkpoints / "tiny-f-b1", swapped / "tiny-f-b0")
    shutil.copytree(checkpoints / "tiny-f-b1", swapped / "tiny-f-b1")
    with pytest.raises(UserError, match="is of another model than member tiny-f-b0"):
        build(tiny_family[:1] + (swapped,), tmp_path / "r")


def test_configs_for_another_target(tiny_family, tmp_path):
    out = tmp_path / "r"
    data = build(tiny_family, out, hardware_ids=("nvidia-h200",), target="nvidia-h200", batches=(1, 8))
    config = triton_config.parse((out / "tiny-f-b0" / "config.pbtxt").read_text())
    assert config.instance_group[0].kind == config.instance_group[0].KIND_GPU and data["target_hardware"] == "nvidia-h200"
    assert [a.name for a in config.optimization.execution_accelerators.gpu_execution_accelerator] == ["tensorrt"]
    with pytest.raises(UserError, match="--target tpu-v3 has no latency records"):
        build(tiny_family, tmp_path / "r2", target="tpu-v3")


def test_python_backend_variant(tiny_family, tmp_path):
    out = tmp_path / "r"
    data = build(tiny_family, out, backend="python", batches=(1, 2))
    assert data["triton_backend"] == "python"
    for name in data["members"]:
        assert (out / name / "1" / "model.py").read_text() == repo_build.PYTHON_MODEL.read_text()
        assert triton_config.parse((out / name / "config.pbtxt").read_text()).backend == "python"
    assert check_repository(out)[1] == []


# --- a real tritonserver (the one nvidia-pytriton ships: Python backend only) ----------------------


def test_real_tritonserver_serves_the_python_backend_repository(tiny_family, tmp_path):
    import numpy as np
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    from effx_serve.perf.session import onnxruntime_session
    from effx_serve.repository import triton_local

    triton_or_skip()
    out = tmp_path / "r"
    data = build(tiny_family, out, backend="python", batches=(1, 4))
    rng = np.random.default_rng(0)
    with triton_local.serve(out) as server:
        http = httpclient.InferenceServerClient(server.http_url)
        grpc = grpcclient.InferenceServerClient(server.grpc_url)
        for name, member in data["members"].items():
            assert http.is_model_ready(name) and grpc.is_model_ready(name)
            x = rng.standard_normal((3, 3, member["resolution"], member["resolution"])).astype(np.float32)
            expected = onnxruntime_session(out / member["model"]["path"], threads=1).run(["logits"], {"images": x})[0]
            for client, module in ((http, httpclient), (grpc, grpcclient)):
                tensor = module.InferInput("images", list(x.shape), "FP32")
                tensor.set_data_from_numpy(x)
                result = client.infer(name, [tensor], outputs=[module.InferRequestedOutput("logits")])
                np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-5, atol=1e-5)
            # The classification extension reads labels.txt: top-1 as "score:index:label".
            tensor = httpclient.InferInput("images", [1, *x.shape[1:]], "FP32")
            tensor.set_data_from_numpy(x[:1])
            top = http.infer(name, [tensor], outputs=[httpclient.InferRequestedOutput("logits", class_count=1)]).as_numpy("logits")
            index = int(expected[0].argmax())
            assert top[0][0].decode().split(":")[1:] == [str(index), data["dataset"]["labels"][index]]
