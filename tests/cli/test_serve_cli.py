"""`effx-serve serve` as a user runs it: a real uvicorn process on a port, real HTTP, a clean stop; and its errors."""

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx2
import pytest

from effx_serve.cli import main
from effx_serve.cli import serve as serve_cli
from effx_serve.core.errors import UserError
from effx_serve.core.proc import free_port, not_ready, stop, wait_ready
from effx_serve.core.wire import DEADLINE_HEADER
from tests.helpers import JPEG, ended


def test_a_missing_repository_is_one_line(tmp_path, capsys):
    assert main(["serve", "--repo", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no manifest.json" in err and "build-repo" in err and len(err.splitlines()) == 1


def test_bad_flags_are_refused(served_repository, capsys):
    for flag, value in (("--default-deadline-ms", "-1"), ("--head-timeout-s", "0"), ("--body-timeout-s", "nan"), ("--max-bodies-mb", "0"),
                        ("--decode-budget-ms", "0"), ("--switch-interval-ms", "0"), ("--workers", "0"), ("--worker", "junk"),
                        ("--lane-nice", "20"), ("--lane-nice", "-1"), ("--start-headroom", "-0.5"), ("--start-headroom", "nan"),
                        ("--port", "70000"), ("--port", "0"), ("--max-body-mb", "nan"), ("--max-body-mb", "inf"), ("--max-body-mb", "0")):
        with pytest.raises(SystemExit):
            main(["serve", "--repo", str(served_repository), flag, value])
    assert main(["serve", "--repo", str(served_repository), "--family", "nope", "--port", str(free_port())]) == 2
    assert "unknown family 'nope'" in capsys.readouterr().err


def test_the_old_costing_is_behind_a_flag_for_comparisons(served_repository):
    from effx_serve.cli import build_parser

    def costing(*flags):
        return serve_cli.settings_from(build_parser().parse_args(["serve", "--repo", str(served_repository), *flags])).dispatch.costing

    assert costing() == "device" and costing("--costing", "member") == "member"
    with pytest.raises(SystemExit):
        costing("--costing", "free")


def test_the_interpreter_switch_interval_is_set_before_serving(served_repository, monkeypatch):
    monkeypatch.setattr(sys, "setswitchinterval", lambda seconds: calls.append(seconds))
    calls = []
    assert main(["serve", "--repo", str(served_repository), "--family", "nope", "--switch-interval-ms", "0.5", "--workers", "1",
                 "--port", str(free_port())]) == 2
    assert calls == [0.0005]


def test_serve_over_real_http(served_repository):
    port = free_port()  # --demo on a complete repository serves it as it is: no build starts
    process = subprocess.Popen([sys.executable, "-m", "effx_serve.cli", "serve", "--repo", str(served_repository), "--port", str(port), "--demo"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        problem = wait_ready(f"{base}/readyz", 60, process)
        assert problem is None, f"{problem}: {process.stdout.read() if process.poll() is not None else ''}"
        response = httpx2.post(f"{base}/v1/classify", content=JPEG, headers={"content-type": "image/jpeg"}, params={"min_accuracy": 0.6})
        assert response.status_code == 200 and response.json()["member"] == "tiny-f-b1"
        assert "effx_requests_total" in httpx2.get(f"{base}/metrics").text
        huge_header = httpx2.get(f"{base}/healthz", headers={"x-pad": "a" * 100_000})  # the served protocol limits a head
        assert huge_header.status_code == 431 and "65536 bytes" in huge_header.json()["detail"]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:  # expired in transit, most of its body unsent:
            connection.sendall(f"POST /v1/classify HTTP/1.1\r\nhost: test\r\ncontent-type: image/jpeg\r\ncontent-length: {len(JPEG)}\r\n"
                               f"{DEADLINE_HEADER}: {time.time() - 1:.3f}\r\n\r\n".encode() + JPEG[:100])
            refused = b""
            while b"}" not in refused:  # answered without waiting for the body (a read would wait for its timeout)
                refused += connection.recv(65536) or b"}"
        assert refused.startswith(b"HTTP/1.1 429") and b"the deadline passed" in refused
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    # uvicorn shuts down gracefully, then re-raises the signal: the command ends as on Ctrl-C, its `finally` run
    assert process.returncode == 0 and "Application shutdown complete" in output, output
    assert f"http://127.0.0.1:{port}/docs" in output and "building the demo repository" not in output


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal and /proc are Linux's")
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_the_demo_build_ends_with_the_server(tmp_path, how):
    """However the server ends, a process manager's SIGTERM or kill -9, its background build does not go on orphaned."""
    port, log = free_port(), tmp_path / "serve.log"
    with open(log, "wb") as output:
        server = subprocess.Popen([sys.executable, "-m", "effx_serve.cli", "serve", "--demo", "--repo", str(tmp_path / "repo"),
                                   "--port", str(port), "--workers", "1"], stdout=output, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30
        while not (not_ready(f"http://127.0.0.1:{port}/readyz") or "").startswith("answered 503"):  # the build has started
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        builder = int(re.search(r"in the background \(pid (\d+)", log.read_text()).group(1))
        assert not ended([builder], timeout_s=0)
        server.send_signal(how)
        server.wait(timeout=30)
    finally:
        stop(server)
    assert ended([builder]), log.read_text()
    if how == signal.SIGTERM:
        assert server.returncode == 0 and "stopping the demo build" in log.read_text()


def test_demo_builds_only_a_missing_or_partial_repository(served_repository, tmp_path):
    assert serve_cli.needs_demo_build(tmp_path / "nowhere") and not serve_cli.needs_demo_build(served_repository)
    partial = tmp_path / "partial"
    partial.mkdir()
    manifest = json.loads((served_repository / "manifest.json").read_text()) | {"partial": {"members_planned": 4}}
    (partial / "manifest.json").write_text(json.dumps(manifest))
    assert serve_cli.needs_demo_build(partial)
    (partial / "manifest.json").write_text("{")
    assert not serve_cli.needs_demo_build(partial)  # a broken manifest is reported by the server, not rebuilt over


def test_waiting_for_the_first_member_ends_with_the_build(tmp_path):
    failed = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    with pytest.raises(UserError, match=r"the demo build stopped \(exit 3\) before its first member was ready"):
        serve_cli.wait_for_first_member(tmp_path, failed, poll_s=0.01)
    writes = subprocess.Popen([sys.executable, "-c", f"import time, pathlib; time.sleep(0.3); pathlib.Path({str(tmp_path)!r}, 'manifest.json').write_text('{{}}'); time.sleep(30)"])
    try:
        serve_cli.wait_for_first_member(tmp_path, writes, poll_s=0.01)
        assert writes.poll() is None  # returned on the manifest, with the build still going
    finally:
        stop(writes)
    waiting, told = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]), threading.Event()
    try:
        told.set()
        with pytest.raises(UserError, match="stopped before the demo build's first member was ready"):
            serve_cli.wait_for_first_member(tmp_path / "empty", waiting, told, poll_s=0.01)
    finally:
        stop(waiting)


def test_serve_demo_answers_before_its_first_member_and_stops_with_a_failed_build(tmp_path, monkeypatch, capsys):
    """The port answers 503 at once while b0 trains; a build that dies first ends the server with its error (exit 2)."""
    port, answers = free_port(), []
    monkeypatch.setattr(serve_cli, "start_demo_build", lambda repository: subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(2); raise SystemExit(3)"]))

    def probe():
        for _ in range(100):
            try:
                answer = httpx2.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
                answers.append((answer.status_code, answer.json()["detail"]))
                return
            except httpx2.TransportError:
                time.sleep(0.05)

    prober = threading.Thread(target=probe)
    prober.start()
    assert main(["serve", "--repo", str(tmp_path / "repo"), "--demo", "--port", str(port)]) == 2
    prober.join()
    assert answers and answers[0][0] == 503 and "training its first member (b0)" in answers[0][1]
    assert "the demo build stopped (exit 3) before its first member was ready" in capsys.readouterr().err


def test_watch_interval(capsys):
    for value in ("-1", "3601", "soon"):
        with pytest.raises(SystemExit):
            main(["serve", "--watch-s", value])
    assert "from 0 (never) to 3600" in capsys.readouterr().err


def test_workers_report_a_busy_port_a_missing_repository_and_an_unbuilt_demo_once(served_repository, tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--repo", str(served_repository), "--workers", "2", "--port", str(port)]) == 2
    assert f"could not listen on 127.0.0.1:{port}" in capsys.readouterr().err
    assert main(["serve", "--repo", str(tmp_path / "nowhere"), "--workers", "2", "--port", str(free_port())]) == 2
    assert "no manifest.json" in capsys.readouterr().err
    assert main(["serve", "--demo", "--repo", str(tmp_path / "nowhere"), "--workers", "2", "--port", str(free_port())]) == 2
    err = capsys.readouterr().err
    assert "--workers needs it built" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_model_onnx_runtime_cannot_load_stops_the_server_with_its_error(served_repository, tmp_path, capfd, workers):
    """Without --watch-s nothing would ever load it: the server exits 2 naming it, rather than answering 503s for ever."""
    repository = tmp_path / "repo"
    shutil.copytree(served_repository, repository)
    broken = sorted(repository.glob("*/1/model.onnx"))[-1]
    broken.write_bytes(broken.read_bytes()[:100])  # truncated
    started = time.monotonic()
    assert main(["serve", "--repo", str(repository), "--workers", workers, "--port", str(free_port())]) == 2
    err = capfd.readouterr().err  # the workers' own processes write to the descriptor
    assert f"startup failed: ONNX model {broken} cannot be loaded by ONNX Runtime" in err
    assert time.monotonic() - started < 60


def test_workers_default_to_auto_and_resolve_from_the_machine_and_the_backend(served_repository, tmp_path, monkeypatch):
    from effx_serve.cli import build_parser

    def resolved(*flags):
        return serve_cli.resolve_workers(build_parser().parse_args(["serve", "--repo", str(served_repository), *flags]))[0]

    monkeypatch.setattr(serve_cli, "available_cpus", lambda: 4)
    monkeypatch.setattr(serve_cli, "_onnxruntime_on_cpu", lambda: True)
    assert build_parser().parse_args(["serve"]).workers == "auto" and build_parser().parse_args(["serve", "--workers", "3"]).workers == 3
    assert resolved() == 4 and resolved("--backend", "triton") == 1
    assert serve_cli.resolve_workers(build_parser().parse_args(["serve", "--repo", str(tmp_path / "nowhere"), "--demo"]))[0] == 1
    # Each of the auto workers takes its share of the cores.
    assert serve_cli.settings_from(build_parser().parse_args(["serve", "--repo", str(served_repository)])).dispatch.cpu_lanes == 1
    monkeypatch.setattr(serve_cli, "_onnxruntime_on_cpu", lambda: False)
    assert resolved() == 1
    for bad in ("0", "some"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["serve", "--workers", bad])
