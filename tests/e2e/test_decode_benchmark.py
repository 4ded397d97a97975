"""benchmarks/decode.py end to end, tiny: one resolution, a fraction of a second per figure."""

import subprocess
import sys

from tests.helpers import ROOT


def test_a_short_run_prints_both_paths_and_their_ratio():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "decode.py"), "--resolutions", "32", "--duration", "0.1",
                             "--rounds", "2"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line.split()[:1] == ["32"]]
    assert rows and all(len(row) == 5 for row in rows)
    for _, threads, server, pillow, ratio in rows:
        assert int(threads) >= 1 and float(ratio) > 0
        assert all(float(figure) > 0 for figure in server.split(",") + pillow.split(","))
        assert len(server.split(",")) == len(pillow.split(",")) == 2


def test_a_bad_resolution_list_is_a_clear_error():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "decode.py"), "--resolutions", "32,abc"],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 2 and "comma-separated sides" in result.stderr and "Traceback" not in result.stderr
