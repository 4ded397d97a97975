"""The hostile-client script against a real `effx-serve serve`, at a small scale: every attack answered 4xx or closed,
a normal client served within its bound meanwhile, memory within the ceiling, no traceback in the server's log."""

from loadtest import hostile


def test_every_attack_is_refused_while_a_normal_client_is_served(served_repository, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(hostile, "HOLD_S", 1.0)
    log = tmp_path / "serve.log"
    status = hostile.main(["--repo", str(served_repository), "--scale", "0.02", "--log", str(log), "--", "--head-timeout-s", "1"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith(("| attack", "| ---"))]
    assert len(rows) == len(hostile.ATTACKS), out
    assert status == 0 and "every target held" in out and "0 tracebacks" in out, out


def test_a_missed_target_is_named():
    row = hostile.Row("x", hostile.Counter({"500": 1, "413": 2, "closed": 1}), 1.0, 100.0, 2000.0, 100.0, 1.5, hostile.Counter())
    assert row.misses == ["500 x1", "probe waited 1.50 s", "peak 1900 MB above idle"]
