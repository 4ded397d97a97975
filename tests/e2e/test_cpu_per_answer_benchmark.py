"""benchmarks/cpu_per_answer.py end to end, tiny: this checkout against itself on the tiny repository, one short round."""

import re
import subprocess
import sys

from tests.helpers import ROOT

SCRIPT = ROOT / "benchmarks" / "cpu_per_answer.py"


def test_a_checkout_without_the_package_is_a_clear_error(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--against", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "has no effx_serve/" in result.stderr and "Traceback" not in result.stderr


def test_a_short_round_prints_both_servers_cpu_per_answer_and_their_ratio(served_repository):
    # This checkout against itself (the default) with other settings on one side.
    result = subprocess.run([sys.executable, str(SCRIPT), "--repo", str(served_repository), "--rate", "20", "--duration", "1",
                             "--rounds", "1", "--against-arg=--lane-nice=0"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert f"this checkout against {ROOT} --lane-nice=0" in result.stdout
    round_line = re.search(r"round 1: this ([\d.]+) ms of CPU per answer \((\d+) answers\), against ([\d.]+) \((\d+)\): ([\d.]+)", result.stdout)
    assert round_line, result.stdout
    this_ms, answers, other_ms, other_answers, ratio = (float(v) for v in round_line.groups())
    assert answers == other_answers == 20 and this_ms > 0 and other_ms > 0
    assert abs(ratio - this_ms / other_ms) < 0.01
    assert "this / against: median" in result.stdout
