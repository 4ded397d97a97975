"""benchmarks/lacs_vs_compound.py end to end on the tiny family: both families trained with two seeds, compared."""

import json
import subprocess
import sys

from tests.helpers import ROOT

SCRIPT = ROOT / "benchmarks" / "lacs_vs_compound.py"


def test_a_missing_demo_run_says_how_to_build_one(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--run", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "build-family --demo" in result.stdout


def test_both_families_trained_with_seeds_and_compared(tmp_path, tiny_family):
    family, checkpoints = tiny_family
    run = tmp_path / "run"
    (run / "lacs").mkdir(parents=True)
    (run / "lacs" / "family.json").symlink_to(family)
    (run / "data").symlink_to(family.parent / "data")
    (run / "checkpoints").symlink_to(checkpoints)
    out = tmp_path / "figures.json"
    result = subprocess.run([sys.executable, str(SCRIPT), "--run", str(run), "--seeds", "2", "--epochs", "1", "--out", str(tmp_path / "trained"),
                             "--json", str(out)], capture_output=True, text=True, timeout=600, cwd=ROOT,
                            env={"EFFX_CACHE_DIR": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(out.read_text())
    lacs, rule = figures["families"].values()
    assert [r["name"] for r in rule] == ["tiny-efficientnet-rule-b0", "tiny-efficientnet-rule-b1"]
    assert lacs[0]["samples"] == rule[0]["samples"] and len(lacs[1]["samples"]) == len(rule[1]["samples"]) == 2  # b0 trained once
    assert rule[1]["width"] > lacs[0]["width"] and all(r["latency_ms"] > 0 for r in lacs + rule)
    assert figures["noise_std"] is not None and "seed noise (pooled std" in result.stdout and "at equal accuracy" in result.stdout
    assert len(list((tmp_path / "trained" / "seed0").iterdir())) == 1  # at seed 0 only the rule's b1 trained: the run's members reused
