"""`effx-serve models` and `export`: the preset architectures, their counts, and an ONNX export checked against PyTorch."""

from __future__ import annotations

import argparse
import json

from effx_serve.cli.common import positive_int, table
from effx_serve.core.errors import needs_extra
from training.arch.plan import expand
from training.arch.presets import FAMILIES, PRESETS, load_spec, preset_names


def cmd_models(args: argparse.Namespace) -> int:
    rows = []
    for name in preset_names(args.family):
        spec = PRESETS[name]
        plan = expand(spec, args.resolution)
        rows.append(dict(name=name, resolution=plan.resolution, params=plan.params, macs=plan.macs,
                         gmacs=plan.macs / 1e9, blocks=len(plan.blocks), width=spec.width, depth=spec.depth))
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(table(rows, [("model", "name", ""), ("res", "resolution", "d"), ("params", "params", ",d"),
                            ("GMACs", "gmacs", ".3f"), ("blocks", "blocks", "d"), ("width", "width", "g"), ("depth", "depth", "g")]))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    with needs_extra("train", "export"):
        from training.arch.export import check_onnx, export_onnx
        from training.arch.model import build_model
    spec = load_spec(args.model)
    overrides = {k: v for k, v in (("resolution", args.resolution), ("num_classes", args.num_classes)) if v}
    spec = spec.with_(**overrides) if overrides else spec
    model = build_model(spec)
    path = export_onnx(model, args.out, spec.resolution, opset=args.opset)
    checks = check_onnx(path, model, spec.resolution)
    report = dict(path=str(path), model=spec.name, resolution=spec.resolution,
                  checks=[dict(batch=c.batch, max_abs_diff=c.max_abs_diff, ok=c.ok) for c in checks])
    print(json.dumps(report, indent=2) if args.json else
          f"wrote {path}; " + ", ".join(f"batch {c.batch}: max |onnx - torch| = {c.max_abs_diff:.2e}" for c in checks))
    return 0 if all(c.ok for c in checks) else 1


def add_parsers(sub) -> None:
    p = sub.add_parser("models", help="list the preset models with params, MACs and blocks")
    p.add_argument("--family", choices=FAMILIES)
    p.add_argument("--resolution", type=positive_int, help="count at this input size instead of each model's own")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("export", help="export a model to ONNX (dynamic batch) and check it against PyTorch")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--out", required=True, metavar="PATH")
    p.add_argument("--resolution", type=positive_int)
    p.add_argument("--num-classes", type=positive_int)
    p.add_argument("--opset", type=positive_int, default=18, help="ONNX opset, 18 or later")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_export)
