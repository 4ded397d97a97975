"""benchmarks/connection_spread.py end to end, tiny: a few trials on the tiny repository."""

import re
import subprocess
import sys

from tests.helpers import ROOT

SCRIPT = ROOT / "benchmarks" / "connection_spread.py"


def test_code_that_is_not_a_checkout_is_a_clear_error(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--code", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and f"{tmp_path} has no effx_serve/" in result.stderr and "Traceback" not in result.stderr


def test_a_short_run_counts_each_trials_connections_on_the_two_workers(served_repository):
    result = subprocess.run([sys.executable, str(SCRIPT), "--repo", str(served_repository), "--connections", "4", "--trials", "2",
                             "--busy", "1"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    found = re.search(r"most on one worker per trial: \[(\d), (\d)\]; mean share ([\d.]+); 3/4 or more on one: (\d)/2", result.stdout)
    assert found, result.stdout
    assert all(2 <= int(found.group(i)) <= 4 for i in (1, 2))  # 4 connections on 2 workers: at least half on the busier one
