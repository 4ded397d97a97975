"""The paper's Table 3 claim on this machine: EfficientNet-X-Bn against EfficientNet-Bn, measured side by side.

    .venv/bin/python benchmarks/table3.py [--runtime torch] [--precision bf16] [--batch 1,128] [--scales 0-7]
                                          [--families efficientnet,efficientnet-x,efficientnet-x-gpu] [--json F]
    .venv/bin/python benchmarks/table3.py --report F   # the tables of a saved --json run, measuring nothing

Measures every (family, scale, batch) through the latency store (the protocol of docs/profiling.md: each p50
taken until two measurements agree within 10%), in scale order, so a run cut short still has its smaller
models; `--json` is rewritten after each measurement. Prints per scale and batch each family's p50, the
roofline-ideal latency and E (ideal / measured), then each family's speedup over EfficientNet-Bn beside
the paper's GPUv100 ratio (Table 3: batch and precision not stated). A speedup whose distance from 1 is
smaller than the two models' measurement spread (max/min of their p50 measurements) is marked as noise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from effx_serve.cli.common import int_list, output_file, run_script
from effx_serve.core.errors import UserError
from effx_serve.hardware.machine import this_machine
from effx_serve.perf.latency_store import LatencyStore
from effx_serve.perf.measure import RUNTIMES, measure_spec
from effx_serve.perf.published import TABLE3_MS
from effx_serve.perf.roofline import analyze
from training.arch.presets import FAMILIES, PRESETS

BASELINE = "efficientnet"


def scales(text: str) -> list[int]:
    """'0-7' or '0,2,4' -> scale indices within 0..7."""
    try:
        low, _, high = text.partition("-")
        values = list(range(int(low), int(high) + 1)) if high else [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected scales such as 0-7 or 0,2,4, got '{text}'") from None
    if not values or min(values) < 0 or max(values) > 7:
        raise argparse.ArgumentTypeError(f"scales run from 0 to 7, got '{text}'")
    return values


def families(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in FAMILIES]
    if unknown or BASELINE not in names:
        raise argparse.ArgumentTypeError(f"families are {', '.join(FAMILIES)}, {BASELINE} among them; got '{text}'")
    return names


def measure(args: argparse.Namespace) -> list[dict]:
    machine = this_machine()
    print(f"{machine.hardware.name} [{machine.hardware_id}], device {machine.device}, {args.runtime} {args.precision}", flush=True)
    rows: list[dict] = []
    with LatencyStore() as store:
        for scale in args.scales:
            for batch in args.batch:
                for family in args.families:
                    name = f"{family}-b{scale}"
                    spec = PRESETS[name]
                    record, _ = measure_spec(spec, spec.resolution, batch, args.runtime, machine, store, args.precision)
                    ideal = analyze(spec, machine.hardware, batch, args.precision)
                    p50s = record.details.get("p50_measurements_ms") or [record.p50_ms]
                    rows.append(dict(model=name, family=family, scale=scale, batch=batch, resolution=spec.resolution,
                                     hardware=machine.hardware_id, runtime=args.runtime, precision=args.precision,
                                     p50_ms=record.p50_ms, p99_ms=record.p99_ms, spread=max(p50s) / min(p50s) - 1,
                                     settled=record.details.get("settled", True), ideal_ms=ideal.predicted_ms,
                                     efficiency=ideal.predicted_ms / record.p50_ms, gmacs=ideal.macs / 1e9))
                    print(f"  {name:<24} batch {batch:>3}: p50 {record.p50_ms:9.3f} ms", flush=True)
                    if args.json:
                        args.json.write_text(json.dumps(rows, indent=2))
    return rows


def speedups(rows: list[dict]) -> list[dict]:
    """Per (scale, batch) and non-baseline family: EfficientNet-Bn's p50 / the family's, with whether it is inside the noise."""
    by_key = {(r["family"], r["scale"], r["batch"]): r for r in rows}
    out = []
    for (family, scale, batch), row in by_key.items():
        base = by_key.get((BASELINE, scale, batch))
        if family == BASELINE or base is None:
            continue
        paper = TABLE3_MS.get(f"{family}-b{scale}")
        ratio = base["p50_ms"] / row["p50_ms"]
        out.append(dict(family=family, scale=scale, batch=batch, speedup=ratio, noise=abs(ratio - 1) <= base["spread"] + row["spread"],
                        paper_v100=TABLE3_MS[f"{BASELINE}-b{scale}"][1] / paper[1] if paper else None))
    return out


def report(rows: list[dict]) -> None:
    print(f"\n{'model':<24} {'batch':>5} {'p50 ms':>9} {'ms/img':>8} {'spread':>6} {'ideal ms':>9} {'E':>6} {'GMACs':>6}")
    for r in rows:
        print(f"{r['model']:<24} {r['batch']:>5} {r['p50_ms']:9.3f} {r['p50_ms'] / r['batch']:8.3f} {r['spread']:6.1%} "
              f"{r['ideal_ms']:9.3f} {r['efficiency']:6.3f} {r['gmacs']:6.2f}")
    print(f"\n{'family':<20} {'scale':>5} {'batch':>5} {'speedup over B':>15} {'paper (V100)':>12}")
    for s in speedups(rows):
        paper = f"{s['paper_v100']:.2f}" if s["paper_v100"] else "-"
        print(f"{s['family']:<20} {s['scale']:>5} {s['batch']:>5} {s['speedup']:>14.2f}{'*' if s['noise'] else ' '} {paper:>12}")
    print("* inside the measurement spread of the two models")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", default="torch", choices=RUNTIMES)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--batch", type=int_list, default=[1])
    parser.add_argument("--scales", type=scales, default=list(range(8)))
    parser.add_argument("--families", type=families, default=[BASELINE, "efficientnet-x", "efficientnet-x-gpu"])
    parser.add_argument("--json", type=output_file, help="write the measured rows here (rewritten after each one)")
    parser.add_argument("--report", type=Path, metavar="F", help="print the tables of a run saved with --json instead of measuring")
    args = parser.parse_args()
    try:
        rows = json.loads(args.report.read_text()) if args.report else measure(args)
        if args.report and (not isinstance(rows, list) or not rows):
            raise UserError(f"{args.report} holds no measured rows (a run saved with --json is a list of them)")
        report(rows)
    except (UserError, OSError, ValueError) as error:  # a CUDA runtime on a CPU, an unreadable or malformed --report
        parser.exit(2, f"table3.py: error: {error}\n")


if __name__ == "__main__":
    run_script(main)
