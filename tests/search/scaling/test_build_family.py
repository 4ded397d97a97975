"""`effx-serve lacs` and `build-family` on tiny data: the real proxy training and latency measurement, small."""

import json

import pytest
import torch

from effx_serve.cli import main
from search.scaling import build_family
from search.scaling.build_family import RESULTS_FILE, DemoSettings, FamilyRange, run_demo
from search.scaling.job import LacsSettings
from training.arch.family_file import read_family
from training.arch.plan import expand
from training.arch.spec import spec_from_stage_strings
from training.demo_data import generate_demo_data

BASE = spec_from_stage_strings(["r1_k3_s11_e1_i32_o16_se0.25", "r1_k3_s22_e4_i16_o24_se0.25"], width=0.5, resolution=24,
                               num_classes=10, head_filters=64, name="tiny")


@pytest.fixture(autouse=True)
def quick(monkeypatch, quick_ceilings):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_lacs_then_build_family_on_tiny_data(tmp_path, capsys):
    data = tmp_path / "data"
    generate_demo_data(data, size=8, image_size=32)
    lacs_out = tmp_path / "lacs"
    argv = ["lacs", "--base", BASE.to_json(), "--data", str(data), "--out", str(lacs_out), "--grid-step", "0.5", "--tolerance", "0.5",
            "--fine-step", "0", "--epochs", "1", "--noise-repeats", "2", "--max-repeats", "3", "--max-finalists", "3",
            "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    decision = result["lacs"]["decision"]
    assert result["trials"] and result["accuracy_noise_std"] is not None and decision["margin"]["inside_noise"] in (True, False)
    # The two best by reward and any other within the noise of the leader (3 at most here), each over 2 seeds, and a
    # third for those level with the leader that a third seed could part from it.
    finalists = decision["finalists"]
    assert 2 <= len(finalists) <= 3 and all(len(f["accuracy"]["samples"]) in (2, 3) for f in finalists)
    assert decision["seeds"] in (2, 3)
    assert (lacs_out / "family.json").exists() and (lacs_out / "lacs.png").stat().st_size > 0
    assert main(argv[:-1]) == 0  # a second run reuses every trial (checkpoints and latency store); without --json it talks
    said = capsys.readouterr().err
    assert "proxy runs, give or take" in said and "timed on this machine" in said  # the cost, estimated before starting

    family = json.loads((lacs_out / "family.json").read_text())
    family["members"] = family["members"][:2]  # two members keep the test short
    family["accuracy_only"]["members"] = family["accuracy_only"]["members"][:1]
    (lacs_out / "family.json").write_text(json.dumps(family))
    out = tmp_path / "family"
    assert main(["build-family", "--family", str(lacs_out / "family.json"), "--data", str(data), "--out", str(out),
                 "--epochs", "1", "--with-accuracy-only", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == [m["name"] for m in family["members"]]
    assert all(0 <= r["top1"] <= 1 and r["latency_ms"] > 0 for r in rows)
    saved = json.loads((out / RESULTS_FILE).read_text())
    assert saved["members"] == rows and (out / "checkpoints" / rows[0]["name"] / "labels.txt").exists()
    assert [r["name"] for r in saved["accuracy_only_members"]] == [family["accuracy_only"]["members"][0]["name"]]
    assert (out / "family.png").stat().st_size > 0


@pytest.mark.parametrize("argv, message", [
    (["build-family", "--out", "{tmp}/x"], "either --demo or --family"),
    (["build-family", "--family", "{tmp}/f.json", "--out", "{tmp}/x"], "--family needs --data"),
    (["build-family", "--family", "{tmp}/missing.json", "--data", "{tmp}", "--out", "{tmp}/x"], "cannot be read"),
    (["lacs", "--base", "efficientnet-b0", "--data", "{tmp}", "--out", "{tmp}/x", "--hardware", "tpu-v3"], "measures latency on this machine"),
])
def test_bad_input(argv, message, tmp_path, capsys):
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("command", ["lacs", "noise"])
def test_a_proxy_with_less_than_one_batch_is_refused_before_anything_is_timed(tmp_path, capsys, command):
    generate_demo_data(data := tmp_path / "data", size=2, image_size=16)
    assert main([command, "--base", BASE.to_json(), "--data", str(data), "--out", str(tmp_path / "out"), "--subset-stride", "2"]) == 2
    assert "fewer than one batch of 64; give more training images or a smaller --subset-stride" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_noise_trains_one_architecture_with_several_seeds(tmp_path, capsys):
    data = tmp_path / "data"
    generate_demo_data(data, size=8, image_size=32)
    argv = ["noise", "--base", BASE.to_json(), "--data", str(data), "--out", str(tmp_path / "noise"), "--repeats", "2", "--epochs", "1"]
    assert main([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["top1"]["samples"]) == 2 and result["top1"]["std"] is not None
    assert len(result["latency_ms"]["samples"]) == 2 and result["latency_ms"]["mean"] > 0
    assert sorted(p.name.endswith("-seed1") for p in (tmp_path / "noise" / "proxy").iterdir()) == [False, True]
    assert main(argv) == 0  # a rerun reuses both trainings and says what the noise means
    assert "smaller margins are noise" in capsys.readouterr().out


def test_the_demo_hands_over_b0_before_lacs_then_each_member_as_it_is_trained(tmp_path, monkeypatch):
    monkeypatch.setattr(build_family, "demo_base", lambda resolution: BASE.with_(resolution=resolution))
    settings = DemoSettings(images_per_class=8, image_size=32, base_resolution=24, proxy_epochs=1, member_epochs=1,
                            lacs=LacsSettings(grid_step=0.5, tolerance=0.5, fine_step=None, phis=(0.0, 1.0), noise_repeats=0))
    out, steps = tmp_path / "demo", []
    b0_final = out / "checkpoints" / "tiny-lacs-b0" / "final.json"

    def on_members(family_file, planned):
        names = [m["name"] for m in read_family(family_file)["members"]]
        steps.append((family_file.relative_to(out).as_posix(), names, planned, (out / "lacs" / "family.json").exists(), b0_final.stat().st_mtime_ns))

    def latency_of(spec):
        return expand(spec).macs / 1e6

    said = []
    rows = run_demo(out, latency_of, "cpu-test", settings, say=said.append, progress=False, on_members=on_members)
    assert [r["name"] for r in rows] == ["tiny-lacs-b0", "tiny-lacs-b1"]
    plan = next(line for line in said if line.startswith("plan"))  # what is left, estimated before starting
    assert "b0 first" in plan and "2 members of 1 epochs" in plan and plan.endswith("in all")
    (first, first_names, planned, lacs_done, trained_at), (family, names, _, _, retrained_at) = steps
    assert (first, first_names, planned, lacs_done) == ("first/family.json", ["tiny-lacs-b0"], 2, False)  # b0 before LACS ran
    assert (family, names) == ("lacs/family.json", ["tiny-lacs-b0", "tiny-lacs-b1"])  # after b0 of LACS's family (not after the last)
    assert retrained_at == trained_at == b0_final.stat().st_mtime_ns  # LACS's b0 is the early one, reused
    assert read_family(out / "first" / "family.json")["members"][0]["spec"] == read_family(out / "lacs" / "family.json")["members"][0]["spec"]

    (out / RESULTS_FILE).unlink()  # resumed after LACS: no early step (it would shrink a repository that has more)
    steps.clear()
    said.clear()
    run_demo(out, latency_of, "cpu-test", settings, say=said.append, progress=False, on_members=on_members)
    assert [step[0] for step in steps] == ["lacs/family.json"] and not any("b0 first" in line for line in said)
    assert any(line.startswith("demo family targets") for line in said)  # met or missed, said either way


def _row(member, top1, latency_ms):
    return {"name": f"demo-x-lacs-{member}", "top1": top1, "latency_ms": latency_ms}


def test_family_range_checks_order_gain_and_latency_ratio():
    good = FamilyRange.of([_row("b0", 0.50, 0.5), _row("b1", 0.58, 0.8), _row("b2", 0.63, 1.2), _row("b3", 0.66, 1.6)])
    assert good.top1_gain == pytest.approx(16.0) and good.latency_ratio == pytest.approx(3.2) and good.out_of_order == ()
    assert good.misses(15, 3) == [] and "strictly rising in both" in good.describe()
    zigzag = FamilyRange.of([_row("b0", 0.50, 0.5), _row("b1", 0.58, 1.26), _row("b2", 0.57, 1.08), _row("b3", 0.60, 1.3)])
    assert zigzag.out_of_order == ("b2 is not more accurate than b1 (57.0 <= 58.0%)", "b2 is not slower than b1 (1.080 <= 1.260 ms)")
    assert zigzag.misses(15, 3) == [*zigzag.out_of_order, "top-1 gain 10.0 < 15 points", "latency ratio 2.60 < 3x"]


def test_a_trained_familys_latencies_are_retaken_side_by_side():
    """Latencies taken one by one between trainings give way to the members timed in turn (the median of the rounds)."""
    from search.noise import Spread

    class Timed:
        def __call__(self, spec):
            return 9.0

        def side_by_side(self, specs, rounds):
            self.asked = ([spec.name for spec in specs], rounds)
            return [Spread((0.5, 0.6, 0.9)), Spread((1.4, 1.2, 1.3))]

    rows = [_row("b0", 0.5, 3.38), _row("b1", 0.6, 3.10)]  # b1 measured faster than b0 in a busy moment
    members = [{"spec": spec_from_stage_strings(["r1_k3_s11_e1_i32_o16_se0.25"], resolution=r, name=name).to_dict()}
               for name, r in (("b0", 16), ("b1", 24))]
    said, latency = [], Timed()
    build_family._time_together(rows, members, latency, said.append)
    assert [row["latency_ms"] for row in rows] == [0.6, 1.3] and latency.asked == (["b0", "b1"], 3)
    assert said == ["members timed side by side: demo-x-lacs-b0 0.600 ms, demo-x-lacs-b1 1.300 ms"]
    build_family._time_together(rows, members, lambda spec: 9.0, said.append)  # a source that cannot: figures kept
    assert [row["latency_ms"] for row in rows] == [0.6, 1.3]


def test_lacs_fits_a_preset_to_the_data_and_this_hardware_and_keeps_a_specs_own_scale(tmp_path, monkeypatch, capsys):
    """A preset is trained at the CPU default for the data's images (not 224 px at full size); a spec at its own scale."""
    from effx_serve.cli import scale as scale_cli
    from effx_serve.core.errors import UserError
    from effx_serve.hardware import detect as detect_module

    data = tmp_path / "data"
    generate_demo_data(data, size=7, image_size=64)  # 70 training images: one proxy batch of 64
    bases = []

    def stop_before_training(base, *args, **kwargs):
        bases.append(base)
        raise UserError("stopped by the test")

    monkeypatch.setattr(scale_cli, "run", stop_before_training)
    monkeypatch.setattr(scale_cli, "detect", lambda: detect_module.DetectedHardware("cpu-test", "cpu", "test CPU", "test"))
    argv = ["lacs", "--data", str(data), "--out", str(tmp_path / "lacs")]
    assert main([*argv, "--base", "efficientnet-x-b0"]) == 2
    said = capsys.readouterr().err
    assert "candidate scale: width 0.5, depth 0.34, resolution 48 (the CPU default for 64 px images" in said
    assert "LACS trains the base at 48 px (width 0.5, depth 0.34)" in said
    assert main([*argv, "--base", "efficientnet-x-b0", "--width", "0.75", "--resolution", "56"]) == 2
    assert "candidate scale: depth 0.34 " in capsys.readouterr().err
    assert main([*argv, "--base", BASE.to_json()]) == 2
    assert "candidate scale" not in capsys.readouterr().err
    assert [(b.width, b.depth, b.resolution) for b in bases] == [(0.5, 0.34, 48), (0.75, 0.34, 56), (BASE.width, BASE.depth, BASE.resolution)]
