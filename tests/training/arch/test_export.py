import json

import onnx
import pytest
import torch

from effx_serve.cli import main
from training.arch import export
from training.arch.export import INPUT_NAME, OUTPUT_NAME, check_onnx, export_onnx
from training.arch.model import build_model
from training.arch.presets import get_preset
from training.arch.spec import spec_from_stage_strings
from training.errors import SpecError


def test_export_matches_pytorch_with_a_dynamic_batch(tmp_path):
    spec = get_preset("efficientnet-x-b0", width=0.25, depth=0.5, resolution=64, num_classes=10)
    model = build_model(spec)
    torch.nn.init.normal_(model.fc.weight)  # the classifier starts at zero: give the check logits that differ
    path = export_onnx(model, tmp_path / "x.onnx", 64)
    graph = onnx.load(str(path)).graph
    onnx.checker.check_model(onnx.load(str(path)))
    assert graph.input[0].name == INPUT_NAME and graph.output[0].name == OUTPUT_NAME
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    checks = check_onnx(path, model, 64, batches=(1, 3))
    assert [c.batch for c in checks] == [1, 3]
    assert all(c.max_abs_diff <= 1e-4 for c in checks), checks
    assert not list(tmp_path.glob(".export-*"))  # no temporary file left behind


def test_space_to_batch_is_in_the_exported_graph(tmp_path):
    spec = spec_from_stage_strings(["r1_k3_s11_e1_i32_o16", "r1_k3_s22_e4_i16_o24_b2", "r1_k3_s22_e4_i24_o32"],
                                   width=0.5, resolution=48, num_classes=4)
    model = build_model(spec)
    torch.nn.init.normal_(model.fc.weight)
    path = export_onnx(model, tmp_path / "s2b.onnx", 48)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert {"Reshape", "Transpose"} <= ops
    assert all(c.ok for c in check_onnx(path, model, 48, batches=(1, 2)))


def test_export_to_a_directory_is_refused(tmp_path):
    with pytest.raises(SpecError, match="is a directory"):
        export_onnx(build_model(get_preset("efficientnet-b0", width=0.25, depth=0.3)), tmp_path, 64)


def test_export_command(tmp_path, capsys):
    out = tmp_path / "models" / "b0.onnx"
    code = main(["export", "efficientnet-b0", "--out", str(out), "--resolution", "64", "--num-classes", "5", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["path"] == str(out) and out.is_file()
    assert all(c["ok"] for c in report["checks"])


def test_exported_file_is_readable_by_other_users(tmp_path):
    path = export_onnx(build_model(get_preset("efficientnet-b0", width=0.25, depth=0.3, num_classes=3)), tmp_path / "m.onnx", 32)
    assert path.stat().st_mode & 0o044 == 0o044


def test_an_opset_the_exporter_cannot_write_is_refused_and_leaves_no_file(tmp_path, monkeypatch):
    model = build_model(get_preset("efficientnet-b0", width=0.25, depth=0.3, num_classes=3))
    with pytest.raises(SpecError, match="is newer than this onnx"):
        export_onnx(model, tmp_path / "m.onnx", 32, opset=1000)
    monkeypatch.setattr(export, "_opset_of", lambda path: 18)  # as when the exporter cannot convert and falls back to its own
    with pytest.raises(SpecError, match="could not write opset 21 \\(it wrote 18\\)"):
        export_onnx(model, tmp_path / "m.onnx", 32, opset=21)
    assert list(tmp_path.iterdir()) == []
