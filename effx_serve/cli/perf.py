"""`effx-serve hardware`, `roofline`, `profile`, `calibrate` and `latency`: what this machine is and how fast models run on it."""

from __future__ import annotations

import argparse
import json

from effx_serve.cli.common import checked, int_list, positive_int, progress_lines, table
from effx_serve.core.errors import UserError
from effx_serve.hardware.ceilings import get_hardware
from effx_serve.hardware.detect import detect
from effx_serve.hardware.machine import this_machine
from effx_serve.hardware.table import PRECISION_BYTES
from effx_serve.hardware.torch_probe import detect_cuda
from effx_serve.perf import latency_model
from effx_serve.perf.calibrate import fit_samples, measure_samples
from effx_serve.perf.latency_store import LatencyStore
from effx_serve.perf.measure import RUNTIME_HELP, RUNTIMES, default_runtime, measured_vs_predicted
from effx_serve.perf.plots import plot_latency, plot_roofline
from effx_serve.perf.published import ensure_published
from effx_serve.perf.roofline import analyze
from search.nas.space import random_specs
from training.arch.presets import load_spec

MAX_CALIBRATION_SPECS = 1000


def cmd_hardware(args: argparse.Namespace) -> int:
    found = detect(gpu_probe=detect_cuda if args.allow_torch else None).to_dict()
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    width = max(len(k) for k in found)
    for key, value in found.items():
        if value not in (None, [], ()):
            print(f"{key.ljust(width)}  {', '.join(value) if isinstance(value, list) else value}")
    return 0


def cmd_roofline(args: argparse.Namespace) -> int:
    hardware = get_hardware(args.hardware)
    specs = [load_spec(ref) for ref in args.models]
    results = [analyze(spec, hardware, args.batch, args.precision, args.resolution, args.efficiency) for spec in specs]
    if args.plot:
        plot_roofline(results, hardware, args.precision, args.plot, layers=args.layers)
    if args.json:
        print(json.dumps([r.to_dict(with_layers=args.layers) for r in results], indent=2))
        return 0
    print(f"{hardware.name} [{hardware.id}], {args.precision}: peak {hardware.peak_for(args.precision) / 1e12:.3g} TFLOP/s, "
          f"{hardware.bandwidth / 1e9:.0f} GB/s, ridge {hardware.ridge(args.precision):.1f} FLOP/B ({hardware.source})")
    rows = [dict(r.to_dict(), mparams=r.params / 1e6, gmacs=r.macs / 1e9, gflops=r.flops / 1e9, mbytes=r.bytes / 1e6,
                 bound="memory" if r.intensity < r.ridge else "compute") for r in results]
    print(table(rows, [("model", "name", ""), ("res", "resolution", "d"), ("batch", "batch", "d"), ("params(M)", "mparams", ".2f"),
                        ("GMACs/img", "gmacs", ".3f"), ("W(GFLOP)", "gflops", ".3f"), ("Q(MB)", "mbytes", ".2f"),
                        ("I(FLOP/B)", "intensity", ".1f"), ("pred ms", "predicted_ms", ".4g"), ("bound", "bound", "")]))
    if args.layers:
        for result in results:
            print(f"\n{result.name}: per layer")
            layer_rows = [dict(p.__dict__, mflops=p.flops / 1e6, kbytes=p.bytes / 1e3, us=p.seconds * 1e6) for p in result.layers]
            print(table(layer_rows, [("layer", "name", ""), ("kind", "kind", ""), ("MFLOP", "mflops", ".3f"), ("KB", "kbytes", ".1f"),
                                      ("I", "intensity", ".2f"), ("us", "us", ".3f"), ("bound", "bound", "")]))
    if args.plot:
        print(f"\nplot written to {args.plot}")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    specs = [load_spec(ref) for ref in args.models]
    machine = this_machine()
    args.runtime = args.runtime or default_runtime(machine.hardware.kind)
    with LatencyStore() as store:
        ensure_published(store)
        rows, source = measured_vs_predicted(specs, args.batch, args.runtime, args.precision, machine, store, args.resolution)
    if args.plot:
        plot_latency(rows, f"{machine.hardware.name}, {args.runtime}, {args.precision}", args.plot)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    peak, bandwidth = machine.hardware.peak_for(args.precision), machine.hardware.bandwidth
    print(f"{machine.hardware.name} [{machine.hardware_id}], {args.runtime} {args.precision}: peak {peak / 1e9:.1f} GFLOP/s, "
          f"{bandwidth / 1e9:.1f} GB/s; predicted by {source}")
    shown = [dict(r, gflops=r["flops_per_s"] / 1e9, gbytes=r["bytes_per_s"] / 1e9, peak_pct=100 * r["peak_fraction"],
                  bw_pct=100 * r["bandwidth_fraction"], err_pct=100 * r["error"], hit="cached" if r["cached"] else "measured") for r in rows]
    print(table(shown, [("model", "model", ""), ("res", "resolution", "d"), ("batch", "batch", "d"), ("p50 ms", "measured_ms", ".3f"),
                         ("p99 ms", "p99_ms", ".3f"), ("spread", "spread", ".3f"), ("pred ms", "predicted_ms", ".3f"), ("err%", "err_pct", "+.1f"),
                         ("GFLOP/s", "gflops", ".1f"), ("%peak", "peak_pct", ".1f"), ("GB/s", "gbytes", ".2f"), ("%bw", "bw_pct", ".1f"),
                         ("E", "efficiency", ".3f"), ("", "hit", "")]))
    if args.plot:
        print(f"\nplot written to {args.plot}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    machine = this_machine(refresh_ceilings=args.refresh_ceilings)
    args.runtime = args.runtime or default_runtime(machine.hardware.kind)
    specs = random_specs(args.specs, seed=args.seed, resolutions=tuple(args.resolutions))
    say = progress_lines(quiet=args.json)
    say(f"calibrating {args.runtime} on {machine.hardware_id}: {len(specs)} random specs x batches {args.batch}")
    with LatencyStore() as store:
        samples = measure_samples(specs, args.batch, args.runtime, machine, store, args.precision, progress=say)
    model = fit_samples(samples, machine, args.runtime, args.precision,
                        calibration={"specs": len(specs), "seed": args.seed, "resolutions": args.resolutions, "batches": args.batch})
    path = latency_model.save(model)
    if args.json:
        print(json.dumps(model.to_dict() | {"path": str(path)}, indent=2))
        return 0
    print(f"latency model for {machine.hardware_id} / {args.runtime} / {args.precision} written to {path}")
    for name, value in model.efficiencies.items():
        print(f"  E[{name}] = {'(no time of its own)' if value is None else f'{value:.4f}'}")
    print(f"  per-operator overhead {model.coefficients['operators'] * 1e6:.2f} us, per-call overhead {model.coefficients['call'] * 1e6:.1f} us")
    for label, key in (("in-sample", "in_sample"), ("cross-validated", "cross_validated"), ("FLOPs-only, cross-validated", "flops_only_cross_validated")):
        stats = model.fit.get(key)
        if stats is None:
            print(f"  {label} relative error: not computed (fewer than {2 * len(latency_model.FEATURES)} measurements)")
            continue
        print(f"  {label} relative error: median {100 * stats['median']:.1f}%, p90 {100 * stats['p90']:.1f}% (n={stats['n']})")
    return 0


def cmd_latency(args: argparse.Namespace) -> int:
    where = {k: v for k, v in (("hardware_id", args.hardware), ("provenance", args.provenance), ("model", args.model)) if v}
    with LatencyStore() as store:
        ensure_published(store)
        records = store.find(**where)
        if not records and (args.hardware or args.model):  # a misspelt id matches nothing: say so, not "no records match"
            known = store.find()
            if args.hardware and args.hardware not in (hardware := {r.key.hardware_id for r in known}):
                raise UserError(f"no latency records of hardware '{args.hardware}'; the store has {', '.join(sorted(hardware))}")
            if args.model and args.model not in {r.model for r in known}:
                raise UserError(f"no latency records of model '{args.model}'; `effx-serve latency` lists those it has")
    rows = [dict(model=r.model, **r.key.__dict__, provenance=r.provenance, p50_ms=r.p50_ms, p99_ms=r.p99_ms, runs=r.runs) for r in records]
    if args.json:
        print(json.dumps(rows, indent=2))
    elif rows:
        print(table(rows, [("model", "model", ""), ("hardware", "hardware_id", ""), ("runtime", "runtime", ""), ("precision", "precision", ""),
                            ("batch", "batch", "d"), ("res", "resolution", "d"), ("provenance", "provenance", ""), ("p50 ms", "p50_ms", ".3f"),
                            ("p99 ms", "p99_ms", ".3f"), ("runs", "runs", "d")]))
    else:
        print("no latency records match")
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("hardware", help="detect this machine's accelerator: hardware id, class, name, how it was found")
    p.add_argument("--allow-torch", action="store_true", help="also ask torch.cuda when NVML and nvidia-smi find nothing")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_hardware)

    p = sub.add_parser("roofline", help="FLOPs, bytes, intensity and roofline latency of models on a hardware")
    p.add_argument("models", nargs="+", metavar="MODEL", help="preset name, spec JSON file or inline JSON")
    p.add_argument("--hardware", required=True, help="nvidia-v100, nvidia-a100, nvidia-h100, nvidia-h200, tpu-v2, tpu-v3, tpu-v4i, or host (measured)")
    p.add_argument("--batch", type=positive_int, default=1)
    p.add_argument("--precision", choices=list(PRECISION_BYTES), default="fp32")
    p.add_argument("--resolution", type=positive_int)
    p.add_argument("--efficiency", type=float, default=1.0, help="E, achieved / ideal rate (default 1: the ideal roofline)")
    p.add_argument("--layers", action="store_true", help="also show (or put in the JSON) every layer")
    p.add_argument("--json", action="store_true")
    p.add_argument("--plot", metavar="PNG")
    p.set_defaults(func=cmd_roofline)

    p = sub.add_parser("profile", help="measure latency on this machine beside the predicted latency, achieved rates and E")
    p.add_argument("models", nargs="+", metavar="MODEL", help="preset name, spec JSON file or inline JSON")
    p.add_argument("--resolution", type=positive_int, help="input size (default: each model's own)")
    p.add_argument("--batch", type=int_list, default=[1, 8, 32], help="comma-separated batch sizes (default 1,8,32)")
    p.add_argument("--runtime", choices=RUNTIMES, help=RUNTIME_HELP)
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32", help="fp16/bf16: torch runtimes only")
    p.add_argument("--json", action="store_true")
    p.add_argument("--plot", metavar="PNG", help="latency against batch, measured and predicted")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("calibrate", help="fit this machine's latency model (per-operator efficiencies) on random specs")
    p.add_argument("--runtime", choices=RUNTIMES, help=RUNTIME_HELP)
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32")
    p.add_argument("--specs", type=checked(int, lambda value: 1 <= value <= MAX_CALIBRATION_SPECS, "a whole number", f"from 1 to {MAX_CALIBRATION_SPECS}"),
                   default=40, help=f"number of random specs to measure (default 40, at most {MAX_CALIBRATION_SPECS}: each takes seconds)")
    p.add_argument("--resolutions", type=int_list, default=[64, 96, 128], help="input sizes to draw from (default 64,96,128)")
    p.add_argument("--batch", type=int_list, default=[1, 8], help="batch sizes to measure each spec at (default 1,8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--refresh-ceilings", action="store_true", help="measure the ceilings again instead of using the cache")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("latency", help="list latency records (measured, predicted, and the paper's published Table 3)")
    p.add_argument("--hardware", help="hardware id, e.g. tpu-v3")
    p.add_argument("--provenance", choices=["measured", "predicted", "published"])
    p.add_argument("--model", help="model name, e.g. efficientnet-x-b0")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_latency)
