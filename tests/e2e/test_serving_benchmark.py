"""benchmarks/serving.py end to end, tiny: one member, the embedded backend, fractions of a second per measurement."""

import json
import socket
import subprocess
import sys

import pytest

from tests.helpers import ROOT

SCRIPT = ROOT / "benchmarks" / "serving.py"


def test_a_missing_repository_says_how_to_build_one(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--repo", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "manifest.json is missing" in result.stderr and "build-repo --demo" in result.stderr


def test_a_bad_image_size_is_a_clear_error():
    result = subprocess.run([sys.executable, str(SCRIPT), "--image-size", "3x3"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "WIDTHxHEIGHT" in result.stderr and "Traceback" not in result.stderr


def test_server_code_that_is_not_a_checkout_is_a_clear_error(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--server-code", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and f"{tmp_path} has no effx_serve/" in result.stderr and "Traceback" not in result.stderr


def test_a_short_run_measures_both_rows(tmp_path, served_repository):
    member = "tiny-f-b0"
    out = tmp_path / "serving.json"
    result = subprocess.run([sys.executable, str(SCRIPT), "--repo", str(served_repository), "--member", member, "--backends", "onnxruntime",
                             "--duration", "0.3", "--concurrency", "2", "--batch-concurrency", "1", "--json", str(out)],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode in (0, 1), result.stderr  # 1: a target missed, which this test does not judge
    assert "raw ORT img/s" in result.stdout and "targets" in result.stdout
    figures = json.loads(out.read_text())
    assert figures["image_bytes"] > 10_000
    classify, batch = figures["rows"]
    assert (classify["endpoint"], batch["endpoint"]) == ("classify", "batch16")
    for row in (classify, batch):
        assert row["member"] == member and row["backend"] == "onnxruntime"
        assert row["http_p50_ms"] > row["inprocess_p50_ms"] > 0
        assert row["served_images_per_s"] > 0 and row["raw_images_per_s"] > 0 and row["ratio"] > 0 and row["of_ceiling"] > 0
        assert all(not level["errors"] for level in row["levels"])
    assert classify["server_timing_p50_ms"]["total_ms"] > 0 and classify["overhead_ms"] is not None
    assert abs(classify["overhead_beyond_decode_ms"] - (classify["overhead_ms"] - classify["decode_inprocess_p50_ms"])) < 1e-9
    assert batch["overhead_beyond_decode_ms"] is None and "overhead beyond decoding the JPEG" in result.stdout
    assert classify["idle_decode_p50_ms"] > 0 and classify["idle_inference_p50_ms"] > 0 and batch["idle_decode_p50_ms"] is None
    assert "from idle" in result.stdout
    # The HTTP stack alone and the simplest server of it, measured in the same run, beside the router's figures.
    floor, simplest = figures["http_floor"], classify["simplest"]
    assert floor["processes"] == 1 and floor["requests_per_s"] > 0 and floor["server_cpu_ms"] > 0 and floor["client_cpu_ms"] > 0
    assert simplest["processes"] == classify["cpus"] and simplest["requests_per_s"] > 0 and simplest["server_cpu_ms"] > 0
    assert all(not level["errors"] for level in floor["levels"] + simplest["levels"]) and "simplest" not in batch
    assert "the simplest server of that stack" in result.stdout and "router/simplest" in result.stdout


def test_a_server_given_another_checkouts_pythonpath_runs_that_checkouts_code(tmp_path):
    """`python -m` from this checkout's root would import this checkout's effx_serve ahead of PYTHONPATH's: every
    benchmark comparison against other code once ran this code on both servers."""
    other = tmp_path / "other"
    (other / "effx_serve").mkdir(parents=True)
    (other / "effx_serve" / "__init__.py").write_text("")
    (other / "effx_serve" / "probe.py").write_text("print(__file__)\n")  # a module only the other checkout has
    serving = _serving()
    run = subprocess.run([sys.executable, "-m", "effx_serve.probe"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env=serving.code_env(other))
    assert run.returncode == 0 and run.stdout.strip() == str(other / "effx_serve" / "probe.py"), run.stderr
    assert serving.code_env(None) is None  # this checkout's own code: the environment as it is


def test_an_answer_is_read_whole_and_a_connection_closed_early_is_an_error():
    serving = _serving()
    client, server = socket.socketpair()
    with client, server:
        server.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhelloHTTP/1.1 2")
        head, body, rest = serving.read_answer(client, b"")
        assert (head[9:12], body, rest) == (b"200", b"hello", b"HTTP/1.1 2")  # what came beyond it is kept for the next
        server.sendall(b"00 OK\r\ncontent-length: 9\r\n\r\nhal")
        server.close()
        with pytest.raises(ConnectionError, match="closed the connection"):
            serving.read_answer(client, rest)


def _serving():
    """benchmarks/serving.py as a module (the benchmarks import it by that name from their own folder)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import serving
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return serving
