"""`effx-serve loadtest` for real: locust against a served repository, master/worker mode, and the runs that must fail."""

import json
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from effx_serve.cli import main
from effx_serve.core.proc import free_port
from tests.helpers import ROOT
from tests.loadtest.conftest import read_report

pytestmark = pytest.mark.slow


def test_smoke_run_against_the_served_repository(server_url, tmp_path):
    folder = tmp_path / "smoke"
    code = main(["loadtest", "--url", server_url + "/", "--scenario", "smoke", "--rate", "20", "--duration", "15", "--report", str(folder),
                 "--gate-error-rate", "0", "--p99-bound-ms", "1000"])
    report = read_report(folder)
    assert code == 0, report["problems"]
    figures = report["summary"]
    assert report["status"] == "passed" and figures["errors"] == {} and figures["unfinished"] == 0
    assert 200 <= figures["requests"] <= 420  # 20/s for 15 s, Poisson
    assert figures["completed"] == figures["locust_request_count"]  # the generator's counts agree with locust's own
    assert {row["name"] for row in report["classes"]} >= {"accuracy", "latency", "both", "none"}
    assert set(report["members"]) == {"tiny-f-b0", "tiny-f-b1"}  # accuracy floors drawn from both members reach both
    served = sum(n for series, n in report["server_metrics"]["requests"].items() if series.endswith(" 200"))
    assert served == figures["ok"]  # the server's /metrics saw every answer the generator counted
    assert report["versions"]["locust"] and report["target"]["family"] == "tiny-f"
    assert report["load"]["mode"] == "open" and report["gates"] and all(g["passed"] for g in report["gates"])
    for name in ("report.md", "report.html", "timeline.png", "raw/locust_stats.csv", "raw/locust_stats_history.csv",
                 "raw/metrics_before.prom", "raw/metrics_after.prom", "raw/locust.html"):
        assert (folder / name).is_file(), name
    markdown = (folder / "report.md").read_text()
    assert "PASSED" in markdown and "## Server" in markdown and "tiny-f-b1" in markdown
    assert report["command"].startswith(f"effx-serve loadtest --url {server_url}/ --scenario smoke")


def test_master_and_worker_on_one_machine(server_url, tmp_path):
    """The documented distributed run: `effx-serve loadtest --expect-workers N` as master, plain locust workers."""
    port, folder = free_port(), tmp_path / "distributed"
    master = subprocess.Popen([sys.executable, "-m", "effx_serve.cli", "loadtest", "--url", server_url, "--scenario", "smoke",
                               "--users", "2", "--steps", "2", "--duration", "6", "--expect-workers", "1", "--master-port", str(port),
                               "--report", str(folder)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    worker = subprocess.Popen([sys.executable, "-m", "locust", "-f", "loadtest/locustfile.py", "--worker", "--master-host", "127.0.0.1",
                               "--master-port", str(port)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        output, _ = master.communicate(timeout=180)
    finally:
        worker.wait(timeout=30)
    report = read_report(folder)
    assert master.returncode == 0, output
    assert report["load"]["workers"] == 1 and report["load"]["mode"] == "closed"
    assert report["summary"]["completed"] == report["summary"]["locust_request_count"] > 20
    assert [p["users"] for p in report["curve"]] == [1, 2] and report["capacity"]["basis"] == "throughput"


def test_an_unreachable_url_still_writes_a_failedread_report(tmp_path, capsys):
    folder = tmp_path / "unreachable"
    assert main(["loadtest", "--url", f"http://127.0.0.1:{free_port()}", "--duration", "5", "--ready-timeout", "1",
                 "--report", str(folder)]) == 1
    report = read_report(folder)
    assert report["status"] == "failed" and "cannot connect" in report["problems"][0]
    assert "cannot connect" in (folder / "report.md").read_text() and "FAILED" in capsys.readouterr().out


def test_a_bad_scenario_writes_a_report_naming_the_known_ones(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "report.json").write_text("{}")
    (folder / "stale.txt").write_text("from an older run")
    assert main(["loadtest", "--url", "http://127.0.0.1:9", "--scenario", "nope", "--report", str(folder)]) == 1
    assert "unknown scenario 'nope'; known: mixed" in read_report(folder)["problems"][0]
    assert not (folder / "stale.txt").exists()  # a previous report is replaced whole


def test_the_current_folder_when_empty_takes_the_report(tmp_path, monkeypatch):
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)  # '.' has no name of its own: the staging folder goes beside the resolved path
    assert main(["loadtest", "--url", "http://127.0.0.1:9", "--scenario", "nope", "--report", "."]) == 1
    assert "unknown scenario" in read_report(here)["problems"][0] and sorted(p.name for p in tmp_path.iterdir()) == ["here"]


@pytest.mark.parametrize("inside", ["notes.txt", "sub/data.txt"])
def test_a_report_folder_that_is_not_a_previous_report_is_left_alone(tmp_path, monkeypatch, capsys, inside):
    precious = tmp_path / "precious"
    (precious / inside).parent.mkdir(parents=True, exist_ok=True)
    (precious / inside).write_text("keep me")
    assert main(["loadtest", "--url", "http://127.0.0.1:9", "--report", str(precious)]) == 2
    assert "and no report.json; give a new or empty folder" in capsys.readouterr().err
    assert (precious / inside).read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["precious"]
    monkeypatch.chdir(precious)  # '.' and '..' are folders of other things too
    assert [main(["loadtest", "--url", "http://127.0.0.1:9", "--report", relative]) for relative in (".", "..")] == [2, 2]
    assert main(["loadtest", "--url", "http://127.0.0.1:9", "--report", f"{inside}/report"]) == 2  # beside a file
    assert "cannot write beside it" in capsys.readouterr().err
    assert (precious / inside).read_text() == "keep me"


RECEIVED: dict[str, list] = {}  # a fake server's URL -> (when, its Effx-Deadline header or None) per classification received


class _FakeServer(BaseHTTPRequestHandler):
    """Answers like effx-serve's routes, but every classification is a 500 (mode "error") or takes 30 ms (mode "slow")."""

    protocol_version = "HTTP/1.1"
    mode = "error"
    MODELS = {"default_family": "f", "families": {"f": ["m"]}, "members": [{"name": "m", "accuracy": 0.5, "expected_latency_ms": 1.0}]}
    ANSWER = {"member": "m", "sla": {"met": True}, "predictions": [{"label": "a", "index": 0, "score": 1.0}]}

    def _send(self, status, body, content_type="application/json"):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        models = {"no-models": {"members": []}, "nan": {**self.MODELS, "members": [{**self.MODELS["members"][0], "accuracy": float("nan")}]}}
        routes = {"/readyz": {"status": "ready"}, "/v1/models": models.get(self.mode, self.MODELS), "/v1/hardware": {"hardware": {"id": "fake"}},
                  "/metrics": b"# no metrics\n"}
        self._send(200 if self.path in routes else 404, routes.get(self.path, {"detail": "no"}))

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.deadlines.append((time.time(), self.headers.get("effx-deadline")))
        if self.mode == "error":
            self._send(500, b"Internal Server Error", "text/plain")
        else:
            time.sleep(0.03)
            self._send(200, self.ANSWER)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_server(request):
    handler = type("Handler", (_FakeServer,), {"mode": request.param, "deadlines": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    RECEIVED[url] = handler.deadlines
    yield url
    server.shutdown()


@pytest.mark.parametrize("fake_server", ["error"], indirect=True)
def test_a_server_that_returns_errors_fails_the_run(fake_server, tmp_path):
    folder = tmp_path / "errors"
    assert main(["loadtest", "--url", fake_server, "--users", "2", "--duration", "2", "--report", str(folder)]) == 1
    report = read_report(folder)
    errors = report["summary"]["errors"]
    assert list(errors) == ["server_error"] and errors["server_error"]["count"] == report["summary"]["completed"] > 0
    assert errors["server_error"]["example"].startswith("500")
    assert report["summary"]["error_rate"] == 1.0 and "gate failed: error rate <= 0.01" in report["problems"][0]


@pytest.mark.parametrize("fake_server", ["slow"], indirect=True)
def test_a_p99_gate_fails_the_run(fake_server, tmp_path):
    folder = tmp_path / "slow"
    assert main(["loadtest", "--url", fake_server, "--scenario", "photos", "--users", "2", "--duration", "2", "--gate-p99-ms", "10",
                 "--report", str(folder)]) == 1
    report = read_report(folder)
    assert report["summary"]["latency_ms"]["p99"] >= 30 and report["summary"]["error_rate"] == 0
    assert [(g["name"], g["passed"]) for g in report["gates"]] == [("error rate", True), ("p99 latency (ms)", False)]
    assert report["server_metrics"]["scraped"] is True


@pytest.mark.parametrize("fake_server", ["no-models"], indirect=True)
def test_a_server_without_the_models_list_is_named_before_any_load(fake_server, tmp_path):
    folder = tmp_path / "no-models"
    assert main(["loadtest", "--url", fake_server, "--duration", "30", "--report", str(folder)]) == 1
    report = read_report(folder)
    assert "GET /v1/models" in report["problems"][0] and "families" in report["problems"][0]
    assert report["server_metrics"]["reason"] == "the load did not run" and not (folder / "raw" / "locust.log").exists()


@pytest.mark.parametrize("fake_server", ["nan"], indirect=True)
def test_a_models_list_with_nan_is_named_and_the_report_still_written(fake_server, tmp_path):
    folder = tmp_path / "nan"
    assert main(["loadtest", "--url", fake_server, "--duration", "30", "--report", str(folder)]) == 1
    assert "NaN is not a JSON number" in read_report(folder)["problems"][0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan"]  # no staging folder left behind


@pytest.mark.parametrize("fake_server", ["ok"], indirect=True)
def test_a_pinned_member_the_server_does_not_have_is_named_before_any_load(fake_server, tmp_path):
    folder = tmp_path / "no-member"
    assert main(["loadtest", "--url", fake_server, "--member", "nosuch", "--duration", "30", "--report", str(folder)]) == 1
    report = read_report(folder)
    assert report["problems"][0] == "the server has no member 'nosuch' (it serves m)" and not (folder / "raw" / "locust.log").exists()


def test_bad_urls_and_worker_options_are_refused(tmp_path, capsys):
    for argv in (["--url", "127.0.0.1:8000"], ["--url", "http://x", "--workers", "-1"], ["--url", "http://x", "--workers", "1", "--expect-workers", "1"]):
        with pytest.raises(SystemExit):
            main(["loadtest", *argv, "--report", str(tmp_path / "r")])
    assert "expected the server's URL" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("fake_server", ["slow"], indirect=True)
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_stops_the_load_and_still_writes_the_report(fake_server, tmp_path, stop):
    folder = tmp_path / "interrupted"
    run = subprocess.Popen([sys.executable, "-m", "effx_serve.cli", "loadtest", "--url", fake_server, "--scenario", "photos",
                            "--users", "2", "--duration", "60", "--report", str(folder)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           # as from a terminal: a shell's background job (a CI runner's, say) starts with Ctrl-C ignored
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".interrupted.build-*/raw/locust.log")) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(4)  # some requests answered
    run.send_signal(stop)
    output, _ = run.communicate(timeout=60)
    assert run.returncode == 1, output
    report = read_report(folder)
    assert "interrupted (Ctrl-C or SIGTERM)" in report["problems"][0]
    assert report["summary"]["ok"] > 0 and (folder / "report.md").is_file()
    assert not list(tmp_path.glob(".interrupted.*"))  # no staging folder left behind



@pytest.mark.parametrize("fake_server", ["ok"], indirect=True)
@pytest.mark.parametrize("header", [True, False])
def test_requests_with_a_bound_carry_their_absolute_deadline_unless_told_not_to(fake_server, tmp_path, header):
    trace = tmp_path / "trace.txt"
    trace.write_text("0 800\n100\n200 900\n")  # arrival ms, bound ms (the second request has none)
    argv = ["loadtest", "--url", fake_server, "--trace", str(trace), "--scenario", "photos", "--report", str(tmp_path / "r")]
    assert main(argv + ([] if header else ["--no-deadline-header"])) == 0
    received = RECEIVED[fake_server]
    deadlines = [float(value) for _, value in received if value is not None]
    if not header:
        assert len(received) == 3 and deadlines == []
        return
    assert len(received) == 3 and len(deadlines) == 2
    assert abs(deadlines[1] - deadlines[0] - 0.3) < 0.01  # each its intended send time (0 and 200 ms) + its bound (800, 900 ms)
    for when, value in received:
        assert value is None or 0.6 < float(value) - when <= 0.91


def locust_by_hand(*options: str) -> subprocess.CompletedProcess:
    """The locustfile run with locust's own command, as docs/loadtest.md shows, for two seconds with one user."""
    command = [str(Path(sys.executable).with_name("locust")), "-f", str(ROOT / "loadtest" / "locustfile.py"), "--headless", "-u", "1",
               "-r", "1", "-t", "2s", "--only-summary", *options]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize(("extra", "message"), [
    ([], "no server to load; give its URL with -H/--host"),
    (["-H", "http://127.0.0.1:9", "--effx-out", "{folder}"], "is a folder; give a file path"),
])
def test_the_locustfile_run_by_hand_names_what_is_missing(tmp_path, extra, message):
    result = locust_by_hand(*(a.format(folder=tmp_path) for a in extra))
    assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_the_locustfile_run_by_hand_fails_when_it_could_send_nothing():
    assert locust_by_hand("-H", "http://127.0.0.1:9").returncode == 1
