"""effx_serve.core.fs: the one atomic writer (old or new content, never half; what killed writers left, removed), a folder's
lock, the JSON reader's one-line errors, sha256."""

import hashlib
import json
import os
import subprocess
import sys

import pytest

from effx_serve.core import fs
from effx_serve.core.errors import UserError
from training.errors import SpecError


def test_write_atomic_replaces_text_or_bytes_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "a.json"
    fs.write_atomic(target, '{"v": 1}')
    fs.write_atomic(target, b'{"v": 2}')
    assert json.loads(target.read_text()) == {"v": 2}
    assert os.stat(target).st_mode & 0o777 == 0o644  # readable by the server or Triton running as another user
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


@pytest.mark.parametrize("failure", [KeyboardInterrupt, OSError])
def test_a_write_that_fails_midway_leaves_the_old_file_whole(tmp_path, monkeypatch, failure):
    target = tmp_path / "a.txt"
    fs.write_atomic(target, "old")

    def half_then_fail(handle, data):
        handle.write(data[: len(data) // 2])
        raise failure("killed")

    monkeypatch.setattr(fs, "_write_all", half_then_fail)
    with pytest.raises(failure):
        fs.write_atomic(target, "new content")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_a_folder_or_a_pipe_at_the_target_is_refused_not_replaced(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "folder").mkdir()
    for name, kind in (("pipe", "not a regular file"), ("folder", "a folder")):
        with pytest.raises(UserError, match=f"{name} is {kind}"):
            fs.write_atomic(tmp_path / name, "data")
    assert not (tmp_path / "pipe").is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["folder", "pipe"]


def test_replacing_lets_any_writer_fill_the_file_and_fsyncs_before_the_rename(tmp_path, monkeypatch):
    order = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(fs.os, "fsync", lambda fd: (order.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(fs.os, "replace", lambda a, b: (order.append("replace"), real_replace(a, b))[1])
    target = tmp_path / "model.onnx"
    with fs.replacing(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".model.onnx.") and tmp.name.endswith(".tmp")
        tmp.write_bytes(b"weights")  # e.g. torch.onnx.export(..., tmp)
        assert not target.exists()
    assert target.read_bytes() == b"weights"
    assert order[:2] == ["fsync", "replace"] and order[-1] == "fsync"  # the file's data, the rename, then the folder


def test_read_json_names_the_file_and_the_cause_with_the_callers_error_class(tmp_path):
    good = tmp_path / "good.json"
    good.write_text('{"a": [1, 2]}')
    assert fs.read_json(good, "family file") == {"a": [1, 2]}
    (tmp_path / "bad.json").write_text("{nope")
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00")
    cases = [("missing.json", "cannot be read: No such file or directory"), ("bad.json", "is not JSON: "),
             ("binary.json", "cannot be read: ")]
    for name, words in cases:
        with pytest.raises(SpecError, match=f"^family file {tmp_path / name} {words}"):
            fs.read_json(tmp_path / name, "family file", SpecError)
    with pytest.raises(UserError, match=f"^{tmp_path / 'bad.json'} is not JSON"):
        fs.read_json(tmp_path / "bad.json")


def test_sha256_file_reads_in_blocks(tmp_path):
    data = os.urandom(3 * (1 << 20) + 17)
    (tmp_path / "blob").write_bytes(data)
    assert fs.sha256_file(tmp_path / "blob") == hashlib.sha256(data).hexdigest()


def test_the_cache_folder_follows_the_environment_and_says_when_it_cannot_be_made(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFX_CACHE_DIR", str(tmp_path / "c"))
    assert fs.cache_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("EFFX_CACHE_DIR", str(tmp_path / "file" / "c"))
    with pytest.raises(UserError, match="set EFFX_CACHE_DIR to a writable folder"):
        fs.cache_dir()


def test_what_killed_writers_left_is_removed_and_a_live_writers_is_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    target = tmp_path / "m.onnx"
    left, live = tmp_path / f".m.onnx.{dead.pid}.k2j3.tmp", tmp_path / f".m.onnx.{os.getpid()}.a1b2.tmp"
    other, folder = tmp_path / ".m.onnx.notapid.tmp", tmp_path / f".data.{dead.pid}.beef.partial"
    for path in (left, live, other):
        path.write_bytes(b"half")
    folder.mkdir()
    (folder / "train").mkdir()
    fs.write_atomic(target, "new")  # a writer of the same file sweeps as it starts
    assert target.read_text() == "new" and not left.exists() and live.exists() and other.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".m.onnx.") and p not in (live, other)] == []
    fs.remove_left_by_dead_writers(tmp_path / "data", ".partial")
    assert not folder.exists()


def test_a_held_folder_refuses_a_second_holder_and_is_free_once_released(tmp_path):
    folder = tmp_path / "run"
    with fs.held(folder, "training run"):
        with pytest.raises(UserError, match=rf"{folder} is in use by another training run \(pid {os.getpid()}\)"):
            with fs.held(folder, "training run"):
                pass
    with fs.held(folder, "training run"):  # released: the next run takes it
        pass
