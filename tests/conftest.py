import pytest

from tests.helpers import build, measure_quickly


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own cache directory, so no test reads what another measured."""
    monkeypatch.setenv("EFFX_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def quick_ceilings(monkeypatch):
    """Host ceilings measured with small sizes and a short timing protocol; the list counts ceilings measurements."""
    return measure_quickly(monkeypatch)


SERVED_ACCURACY = {"tiny-f-b0": 0.5, "tiny-f-b1": 0.7}
"""Top-1 written into the served test repository's manifest, so routing by accuracy has distinct members."""


def _tiny_family(root):
    """(family.json, checkpoints) of a two-member family trained for one epoch on tiny demo data."""
    import json

    import torch

    from search.scaling.build_family import train_family
    from search.scaling.lacs import Coefficients
    from search.scaling.lacs import family as scale_family
    from training.arch.family_file import FAMILY_VERSION
    from training.arch.plan import expand
    from training.arch.spec import spec_from_stage_strings
    from training.demo_data import generate_demo_data

    base = spec_from_stage_strings(["r1_k3_s11_e1_i32_o16_se0.25", "r1_k3_s22_e4_i16_o24_se0.25"], width=0.5, resolution=24,
                                   num_classes=10, head_filters=64, name="tiny")
    data = root / "data"
    generate_demo_data(data, size=8, image_size=32)
    members = []
    # b1 is several times the work of b0 (wider, 54 px against 24), so that "the fastest member" is the same
    # in every run, measured or corrected online, even on a noisy machine.
    for spec, phi in zip(scale_family(base, Coefficients(1.0, 1.2, 1.5), (0.0, 2.0), "tiny-f"), (0.0, 2.0), strict=True):
        plan = expand(spec)
        members.append({"name": spec.name, "phi": phi, "spec": spec.to_dict(), "params": plan.params, "macs": plan.macs, "expected_latency_ms": 0.1})
    family = root / "family.json"
    family.write_text(json.dumps({"family_version": FAMILY_VERSION, "hardware": "cpu-test", "coefficients": [1.0, 1.2, 1.5], "members": members}))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_family(family, data, root / "run", 1, lambda spec: 0.1, say=lambda line: None, progress=False)
    finally:
        torch.set_num_threads(threads)
    return family, root / "run" / "checkpoints"


@pytest.fixture(scope="session")
def tiny_family(tmp_path_factory):
    """(family.json, checkpoints folder) of a two-member family trained for one epoch on tiny demo data, once per session."""
    root = tmp_path_factory.mktemp("family")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EFFX_CACHE_DIR", str(root / "cache"))
        return _tiny_family(root)


def build_served_repository(root, backend: str, tiny_family):
    """A repository of the tiny family for `backend` (onnxruntime or python), profiled quickly, with SERVED_ACCURACY."""
    import json

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EFFX_CACHE_DIR", str(root / "cache"))
        measure_quickly(mp)
        out = root / "model_repository"
        build(tiny_family, out, backend=backend, hardware_ids=("nvidia-h200",))
    manifest = json.loads((out / "manifest.json").read_text())
    for name, accuracy in SERVED_ACCURACY.items():
        manifest["members"][name]["accuracy"]["top1"] = accuracy
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


@pytest.fixture(scope="session")
def served_repository(tmp_path_factory, tiny_family):
    """A model repository (ONNX Runtime backend) of two tiny trained members, built once per test session."""
    return build_served_repository(tmp_path_factory.mktemp("served"), "onnxruntime", tiny_family)


@pytest.fixture(scope="session")
def served_python_repository(tmp_path_factory, tiny_family):
    """The same two members in a Triton python-backend repository (what the local tritonserver can run)."""
    return build_served_repository(tmp_path_factory.mktemp("served-python"), "python", tiny_family)
