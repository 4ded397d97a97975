"""`effx-serve`: the command line. Each sub-command is a thin layer over a library function."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from effx_serve.errors import USER_ERRORS, UserError


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Fixed-width text table; columns are (header, key, format)."""
    cells = [[format(row[key], fmt) for _, key, fmt in columns] for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, (h, _, _) in enumerate(columns)]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, ((h, _, _), w) in enumerate(zip(columns, widths, strict=False)))]
    for row in cells:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=False))))
    return "\n".join(lines)


def cmd_models(args: argparse.Namespace) -> int:
    from training.plan import expand
    from training.presets import PRESETS, preset_names

    rows = []
    for name in preset_names(args.family):
        spec = PRESETS[name]
        plan = expand(spec, args.resolution)
        rows.append(dict(name=name, resolution=plan.resolution, params=plan.params, macs=plan.macs,
                         gmacs=plan.macs / 1e9, blocks=len(plan.blocks), width=spec.width, depth=spec.depth))
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(_table(rows, [("model", "name", ""), ("res", "resolution", "d"), ("params", "params", ",d"),
                            ("GMACs", "gmacs", ".3f"), ("blocks", "blocks", "d"), ("width", "width", "g"), ("depth", "depth", "g")]))
    return 0


def cmd_roofline(args: argparse.Namespace) -> int:
    from effx_serve.roofline import analyze, get_hardware
    from training.presets import load_spec

    hardware = get_hardware(args.hardware)
    specs = [load_spec(ref) for ref in args.models]
    results = [analyze(spec, hardware, args.batch, args.precision, args.resolution, args.efficiency) for spec in specs]
    if args.plot:
        from effx_serve.plots import plot_roofline

        plot_roofline(results, hardware, args.precision, args.plot)
    if args.json:
        print(json.dumps([r.to_dict(with_layers=args.layers) for r in results], indent=2))
        return 0
    print(f"{hardware.name} [{hardware.id}], {args.precision}: peak {hardware.peak_for(args.precision) / 1e12:.3g} TFLOP/s, "
          f"{hardware.bandwidth / 1e9:.0f} GB/s, ridge {hardware.ridge(args.precision):.1f} FLOP/B ({hardware.source})")
    rows = [dict(r.to_dict(), mparams=r.params / 1e6, gmacs=r.macs / 1e9, gflops=r.flops / 1e9, mbytes=r.bytes / 1e6,
                 bound="memory" if r.intensity < r.ridge else "compute") for r in results]
    print(_table(rows, [("model", "name", ""), ("res", "resolution", "d"), ("batch", "batch", "d"), ("params(M)", "mparams", ".2f"),
                        ("GMACs/img", "gmacs", ".3f"), ("W(GFLOP)", "gflops", ".3f"), ("Q(MB)", "mbytes", ".2f"),
                        ("I(FLOP/B)", "intensity", ".1f"), ("pred ms", "predicted_ms", ".4g"), ("bound", "bound", "")]))
    if args.layers:
        for result in results:
            print(f"\n{result.name}: per layer")
            layer_rows = [dict(p.__dict__, mflops=p.flops / 1e6, kbytes=p.bytes / 1e3, us=p.seconds * 1e6) for p in result.layers]
            print(_table(layer_rows, [("layer", "name", ""), ("kind", "kind", ""), ("MFLOP", "mflops", ".3f"), ("KB", "kbytes", ".1f"),
                                      ("I", "intensity", ".2f"), ("us", "us", ".3f"), ("bound", "bound", "")]))
    if args.plot:
        print(f"\nplot written to {args.plot}")
    return 0


def cmd_hardware(args: argparse.Namespace) -> int:
    from effx_serve.hardware import detect

    found = detect(allow_torch=args.allow_torch).to_dict()
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    width = max(len(k) for k in found)
    for key, value in found.items():
        if value not in (None, [], ()):
            print(f"{key.ljust(width)}  {', '.join(value) if isinstance(value, list) else value}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    try:
        from training.export import check_onnx, export_onnx
        from training.model import build_model
    except ImportError as error:
        raise UserError(f"export needs the training extra ({error.name} is missing): pip install 'effx-serve[train]'") from None
    from training.presets import load_spec

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


def build_parser() -> argparse.ArgumentParser:
    from effx_serve import __version__
    from effx_serve.roofline import PRECISION_BYTES
    from training.presets import FAMILIES

    parser = argparse.ArgumentParser(prog="effx-serve", description="Hardware-aware EfficientNet-X families, served by SLA.")
    parser.add_argument("--version", action="version", version=f"effx-serve {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("models", help="list the preset models with params, MACs and blocks")
    p.add_argument("--family", choices=FAMILIES)
    p.add_argument("--resolution", type=_positive_int, help="count at this input size instead of each model's own")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("roofline", help="FLOPs, bytes, intensity and roofline latency of models on a hardware")
    p.add_argument("models", nargs="+", metavar="MODEL", help="preset name, spec JSON file or inline JSON")
    p.add_argument("--hardware", required=True, help="nvidia-v100, nvidia-a100, nvidia-h100, nvidia-h200, tpu-v2, tpu-v3, tpu-v4i, or host (measured)")
    p.add_argument("--batch", type=_positive_int, default=1)
    p.add_argument("--precision", choices=list(PRECISION_BYTES), default="fp32")
    p.add_argument("--resolution", type=_positive_int)
    p.add_argument("--efficiency", type=float, default=1.0, help="E, achieved / ideal rate (default 1: the ideal roofline)")
    p.add_argument("--layers", action="store_true", help="also show (or put in the JSON) every layer")
    p.add_argument("--json", action="store_true")
    p.add_argument("--plot", metavar="PNG")
    p.set_defaults(func=cmd_roofline)

    p = sub.add_parser("hardware", help="detect this machine's accelerator: hardware id, class, name, how it was found")
    p.add_argument("--allow-torch", action="store_true", help="also ask torch.cuda when NVML and nvidia-smi find nothing")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_hardware)

    p = sub.add_parser("export", help="export a model to ONNX (dynamic batch) and check it against PyTorch")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--out", required=True, metavar="PATH")
    p.add_argument("--resolution", type=_positive_int)
    p.add_argument("--num-classes", type=_positive_int)
    p.add_argument("--opset", type=_positive_int, default=18, help="ONNX opset, 18 or later")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except USER_ERRORS as error:
        print(f"effx-serve: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("effx-serve: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
