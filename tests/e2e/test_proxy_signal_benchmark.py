"""benchmarks/proxy_signal.py's comparison of the proxy with longer training (the runs themselves take tens of minutes:
docs/scaling.md)."""

import importlib.util
import subprocess
import sys

import pytest

from tests.helpers import ROOT


def _proxy_signal():
    spec = importlib.util.spec_from_file_location("proxy_signal_benchmark", ROOT / "benchmarks" / "proxy_signal.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _figures(means: dict, noise: float) -> dict:
    base = means["base"]
    return {"models": {name: {"top1": {"mean": mean}, "margin": {"value": mean - base, "noise_std": noise,
                                                                 "inside_noise": abs(mean - base) <= 2 * noise}}
                       for name, mean in means.items()}}


def test_a_proxy_that_reverses_a_margin_is_flagged_and_its_rank_agreement_printed(capsys):
    proxy = _figures({"base": 0.58, "depth x2": 0.55, "width x1.5": 0.60}, 0.01)
    full = _figures({"base": 0.80, "depth x2": 0.85, "width x1.5": 0.82}, 0.01)
    figures = _proxy_signal().fidelity(proxy, full, 24)
    out = capsys.readouterr().out
    depth = next(line for line in out.splitlines() if line.startswith("depth x2"))
    assert "-3.0 signal" in depth and "+5.0 signal" in depth and depth.endswith("NO")
    assert next(line for line in out.splitlines() if line.startswith("width x1.5")).endswith("yes")
    # pairs: base<depth reversed, base<width kept, depth<width reversed: (1 - 2) / 3
    assert figures == {"full_epochs": 24, "kendall_tau": pytest.approx(-1 / 3)}


@pytest.mark.parametrize("option", ["--repeats", "--epochs", "--stride", "--full-epochs", "--images-per-class"])
def test_a_count_below_one_is_a_one_line_error_before_any_work(option, tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "proxy_signal.py"), option, "0", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "at least 1" in result.stderr and "Traceback" not in result.stderr
    assert not any(tmp_path.iterdir())  # no data generated, nothing trained


@pytest.mark.parametrize(("option", "value", "rule"), [("--resolution", "32", "from 40 to 160"), ("--lr-scale", "0", "above 0")])
def test_a_base_resolution_or_learning_rate_out_of_range_is_a_one_line_error_before_any_work(option, value, rule, tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "proxy_signal.py"), option, value, "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and rule in result.stderr and "Traceback" not in result.stderr
    assert not any(tmp_path.iterdir())


def test_another_base_resolution_moves_every_variant_with_it():
    """At 64 px the resolution variants are 4/3 and 2/3 of it, as 64 and 32 are of the default 48, on multiples of 8."""
    models = _proxy_signal().variants(64)
    assert {name: spec.resolution for name, spec in models.items()} == {
        "base": 64, "depth x2": 64, "width x1.5": 64, "res 88 px": 88, "res 40 px": 40}
    assert list(_proxy_signal().variants(48))[3:] == ["res 64 px", "res 32 px"]


def test_another_number_of_training_images_gets_its_own_folder_and_the_demo_validation_set(tmp_path):
    module = _proxy_signal()
    demo = module.DemoSettings()
    out, data = module.demo_data(tmp_path, 130)
    assert out == tmp_path / "images-130" and data["train_per_class"] == 130
    assert data["val_per_class"] == round(demo.images_per_class * demo.val_fraction)  # 120, as the demo's
    assert module.demo_data(tmp_path, 2)[1]["val_per_class"] == 2  # fewer images than that: as many to validate on
    assert not (tmp_path / "data").exists()  # the demo's own folder untouched


def test_both_ways_adds_depth_and_width_scaled_down_to_the_same_base():
    module = _proxy_signal()
    one_way, both = module.variants(48), module.variants(48, both_ways=True)
    assert list(both) == [*one_way, "depth x0.5", "width x0.67"]
    base = both["base"]
    assert both["depth x0.5"] == base.with_(depth=base.depth / 2) and both["width x0.67"] == base.with_(width=base.width / 1.5)
    blocks = {name: len(module.expand(spec).blocks) for name, spec in both.items() if name.startswith(("base", "depth"))}
    assert blocks["depth x0.5"] < blocks["base"] < blocks["depth x2"]  # each a different network, not a rounding of the base's


def test_a_training_set_smaller_than_a_batch_is_a_one_line_error(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "proxy_signal.py"), "--images-per-class", "5", "--repeats", "1",
                             "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "fewer than one batch" in result.stderr and "Traceback" not in result.stderr
