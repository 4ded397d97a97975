"""How well the calibrated latency model predicts measured latency on this machine, beside FLOPs alone.

    .venv/bin/python benchmarks/latency_model.py [--runtime onnxruntime] [--resolution 96] [--json OUT.json]

1. Calibrate: measure `--calibration-specs` random specs of the search space (seed 0) at 64/96/128 px, batch 1
   and 8, and fit the per-operator-efficiency model (the same fit as `effx-serve calibrate`).
2. Evaluate on models the fit never saw: every EfficientNet and EfficientNet-X preset at `--resolution`, and
   `--random-specs` random specs drawn with another seed, at batch 1 and 8.
3. Print the median and p90 relative error of predicted against measured p50 latency (targets: <= 10% and
   <= 25%), and the same for the FLOPs-only predictor (latency = a * FLOPs + b, fitted on the same
   calibration measurements).

Everything goes through the latency store, so a second run only re-fits. Measure on a quiet machine:
other processes on the same cores inflate and scatter the measurements.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from effx_serve.cli.common import output_file, positive_int, run_script
from effx_serve.hardware.machine import this_machine
from effx_serve.perf import latency_model
from effx_serve.perf.calibrate import fit_samples, measure_samples
from effx_serve.perf.latency_store import LatencyStore
from search.nas.space import random_specs
from training.arch.presets import PRESETS, preset_names

TARGETS = {"median": 0.10, "p90": 0.25}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runtime", default="onnxruntime")
    parser.add_argument("--resolution", type=positive_int, default=96, help="reduced resolution for the presets")
    parser.add_argument("--calibration-specs", type=positive_int, default=40)
    parser.add_argument("--random-specs", type=positive_int, default=30)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--json", type=output_file, metavar="OUT", help="also write every row and the summary here")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    start = time.perf_counter()

    def say(line: str) -> None:
        print(f"  [{time.perf_counter() - start:6.0f} s] {line}", file=sys.stderr, flush=True)

    machine = this_machine()
    print(f"{machine.hardware.name} [{machine.hardware_id}]: peak {machine.hardware.peak['fp32'] / 1e9:.1f} GFLOP/s fp32, "
          f"{machine.hardware.bandwidth / 1e9:.1f} GB/s ({machine.hardware.source}); runtime {args.runtime}")
    calibration_specs = random_specs(args.calibration_specs, seed=0)
    presets = [PRESETS[name].with_(resolution=args.resolution)
               for family in ("efficientnet", "efficientnet-x", "efficientnet-x-tpu", "efficientnet-x-gpu") for name in preset_names(family)]
    held_out = random_specs(args.random_specs, seed=1)
    with LatencyStore() as store:
        say(f"calibration: {len(calibration_specs)} random specs x batches {batches}")
        calibration = measure_samples(calibration_specs, batches, args.runtime, machine, store, progress=say)
        say(f"evaluation: {len(presets)} presets at {args.resolution} px and {len(held_out)} held-out random specs")
        evaluation = {"presets": measure_samples(presets, batches, args.runtime, machine, store, progress=say),
                      "random": measure_samples(held_out, batches, args.runtime, machine, store, progress=say)}
    model = fit_samples(calibration, machine, args.runtime)
    vector = np.array([model.coefficients[name] for name in latency_model.FEATURES])
    flops_vector = latency_model.fit_relative(latency_model.flops_rows([s.flops for s in calibration]),
                                              np.array([s.measured_s for s in calibration]))

    rows, summary = [], {}
    for group, samples in evaluation.items():
        measured = np.array([s.measured_s for s in samples])
        predicted = np.array([s.features @ vector for s in samples])
        flops_predicted = latency_model.flops_rows([s.flops for s in samples]) @ flops_vector
        summary[group] = {"model": latency_model.error_summary(latency_model.relative_errors(predicted, measured)),
                          "flops_only": latency_model.error_summary(latency_model.relative_errors(flops_predicted, measured))}
        rows += [dict(group=group, model=s.name, resolution=s.resolution, batch=s.batch, measured_ms=1e3 * m, predicted_ms=1e3 * p,
                      flops_only_ms=1e3 * f, error=p / m - 1, flops_only_error=f / m - 1)
                 for s, m, p, f in zip(samples, measured, predicted, flops_predicted, strict=True)]
    summary["all"] = {"model": latency_model.error_summary([abs(r["error"]) for r in rows]),
                      "flops_only": latency_model.error_summary([abs(r["flops_only_error"]) for r in rows])}

    print(f"\n{'model':28s} {'res':>4s} {'batch':>5s} {'measured ms':>11s} {'predicted':>9s} {'err':>7s} {'FLOPs-only':>10s} {'err':>7s}")
    for r in rows:
        print(f"{r['model']:28s} {r['resolution']:4d} {r['batch']:5d} {r['measured_ms']:11.3f} {r['predicted_ms']:9.3f} "
              f"{100 * r['error']:+6.1f}% {r['flops_only_ms']:10.3f} {100 * r['flops_only_error']:+6.1f}%")
    print("\nE per operator class: " + ", ".join(f"{k} {'-' if v is None else f'{v:.3f}'}" for k, v in model.efficiencies.items())
          + f"; per-operator {model.coefficients['operators'] * 1e6:.1f} us, per-call {model.coefficients['call'] * 1e6:.1f} us")
    print(f"\n{'set':10s} {'n':>4s} {'median err':>10s} {'p90 err':>8s} {'FLOPs-only median':>18s} {'FLOPs-only p90':>15s}")
    for group, stats in summary.items():
        m, f = stats["model"], stats["flops_only"]
        print(f"{group:10s} {m['n']:4d} {100 * m['median']:9.1f}% {100 * m['p90']:7.1f}% {100 * f['median']:17.1f}% {100 * f['p90']:14.1f}%")
    met = all(summary["all"]["model"][k] <= v for k, v in TARGETS.items())
    print(f"\ntargets (median <= 10%, p90 <= 25%) on all held-out models: {'met' if met else 'NOT met'}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"hardware": machine.hardware_id, "runtime": args.runtime, "summary": summary, "rows": rows,
                       "latency_model": model.to_dict()}, out, indent=2)
    return 0 if met else 1


if __name__ == "__main__":
    run_script(main)
