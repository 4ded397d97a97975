"""Every benchmark script answers bad input as the CLI does: one line naming the cause and exit 2, never a traceback,
a hang or a success after doing nothing."""

import subprocess
import sys

import pytest

from tests.helpers import ROOT


@pytest.mark.parametrize(("argv", "message"), [
    (["sla.py", "--repo", "{broken}", "--only", "load"], "manifest.json"),
    (["serving.py", "--repo", "{broken}"], "manifest.json"),
    (["cpu_per_answer.py", "--repo", "{broken}"], "manifest.json"),
    (["intensity.py", "--hardware", "nosuch"], "unknown hardware 'nosuch'"),
    (["race_replay.py", "{missing}"], "missing.json"),
    (["race_replay.py", "{list}"], "list.json"),
    (["decode.py", "--duration", "nan"], "argument --duration: must be a positive number"),
    (["decode.py", "--rounds", "0"], "argument --rounds: must be at least 1"),
    (["cpu_per_answer.py", "--rate", "-10"], "argument --rate: must be a positive number"),
    (["connection_spread.py", "--connections", "-3"], "argument --connections: must be at least 1"),
    (["serving.py", "--duration", "inf"], "argument --duration: must be a positive number"),
    (["sla.py", "--duration", "1"], "argument --duration: must be from 2"),
    (["nas.py", "--minutes", "0"], "argument --minutes: must be a positive number"),
    (["lacs_vs_compound.py", "--seeds", "0"], "argument --seeds: must be at least 1"),
    (["latency_model.py", "--calibration-specs", "0"], "argument --calibration-specs: must be at least 1"),
    (["table3.py", "--report", "{list}"], "holds no measured rows"),
    (["first_answer.py", "--source", "{missing}"], "cannot clone --source"),
    (["sla.py", "--json", "{folder}"], "argument --json: must be a file in an existing folder"),
    (["serving.py", "--json", "{list}/x.json"], "argument --json: must be a file in an existing folder"),
])
def test_bad_input_is_one_line(tmp_path, argv, message):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text('{"version": ')
    (tmp_path / "list.json").write_text("[]")
    paths = {"broken": broken, "missing": tmp_path / "missing.json", "list": tmp_path / "list.json", "folder": tmp_path}
    command = [sys.executable, str(ROOT / "benchmarks" / argv[0]), *(a.format(**paths) for a in argv[1:])]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
