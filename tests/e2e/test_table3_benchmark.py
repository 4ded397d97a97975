"""benchmarks/table3.py: the saved H200 run's tables reprinted, and bad input refused with one line."""

import subprocess
import sys

from tests.helpers import ROOT

SCRIPT = ROOT / "benchmarks" / "table3.py"
H200_RUN = ROOT / "docs" / "runs" / "table3-h200-torch-cudagraph-bf16.json"


def table3(*argv, cwd=ROOT, env=None):
    return subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, timeout=120, cwd=cwd, env=env)


def test_the_saved_run_reprints_the_speedups_docs_quote():
    result = table3("--report", str(H200_RUN))
    assert result.returncode == 0, result.stderr
    speedups = {tuple(line.split()[:3]): line.split()[3] for line in result.stdout.splitlines() if line.startswith("efficientnet-x ")}
    assert speedups[("efficientnet-x", "0", "128")] == "0.98" and speedups[("efficientnet-x", "6", "128")] == "0.92"
    assert "1.69" in result.stdout  # the paper's V100 ratio beside ours


def test_bad_input_is_one_line(tmp_path):
    for argv, message in ((["--scales", "9"], "scales run from 0 to 7"), (["--families", "efficientnet-x"], "efficientnet among them"),
                          (["--report", str(tmp_path / "missing.json")], "table3.py: error:")):
        result = table3(*argv)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_a_cuda_runtime_on_a_cpu_is_refused_with_the_reason(tmp_path):
    result = table3("--runtime", "torch-cudagraph", "--scales", "0", env={"EFFX_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2 and "captured on a CUDA device; this machine's device is cpu" in result.stderr
    assert "Traceback" not in result.stderr
