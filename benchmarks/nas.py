"""Platform-aware NAS on this machine: does a short search find a base model no reference model dominates?

    .venv/bin/python benchmarks/nas.py [--minutes 28] [--controller evolution] [--out runs/nas-bench] [--json F]

Runs `effx-serve search` (the same code) on the demo data with latency measured on this machine, every
candidate built and proxy-trained at the same reduced scaling as the two reference points,
EfficientNet-B0 and EfficientNet-X-B0, which the search evaluates first. Then it prints each model's
proxy top-1 and measured latency, picks the found architecture (the best reward among the searched
trials that neither reference dominates), lists how it differs from both (block types, kernels,
expansion, SE, activations, repeats, widths, space-to-depth/batch) and the roofline figures on this
hardware that explain why. The found architecture's margins over both references are judged against the proxy's
seed noise: it and the references are trained with 3 seeds (search/nas/verdict.py; the search's own seed runs are
reused, and when the found architecture is the search's best its own check is the verdict), and each margin of the means is printed with its noise and verdict. Exit code 1 when no searched
architecture is undominated. Re-running with the same --out resumes the search (no trial is trained twice).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from effx_serve.cli.common import output_file, positive_float, run_script
from effx_serve.hardware.machine import this_machine
from effx_serve.perf.roofline import analyze
from search.nas import job as nas_job
from search.nas import verdict
from search.nas.controllers import CONTROLLERS
from search.nas.report import TrialRecord
from search.nas.space import STAGE_CHOICES
from search.nas.worker import SearchConfig, WorkerSettings

# The demo scaling (docs/training.md): half width, a third of the depth, 48 px; 5 epochs of proxy training.
SCALING = {"width": 0.5, "depth": 0.34, "resolution": 48}
PROXY_EPOCHS = 5
SEEDS = 3  # per model whose margins are judged: the search's own noise check, and the report's when it judges another trial

WHY = {
    "block": "fused MBConv runs the k x k convolution dense instead of depthwise + 1x1 expansion: more FLOPs, but far fewer "
             "bytes per FLOP (higher operational intensity)",
    "activation": "ReLU is one cheap pass per element where swish adds a sigmoid and a multiply; element-wise passes are "
                  "memory-bound on any hardware",
    "se": "squeeze-excite adds a global pool, two tiny matmuls and a broadcast multiply: little compute, several passes over memory",
    "kernel": "a larger kernel multiplies a depthwise layer's FLOPs without adding traffic",
    "expand": "the expansion ratio scales the wide 1x1 and depthwise layers, the bulk of the bytes",
    "repeats": "each block adds a fixed per-operator cost besides its FLOPs",
    "width": "stage width scales FLOPs quadratically and activation bytes linearly",
    "space_to_depth": "space-to-depth folds the stride-2 stem into channels: the first convolution becomes denser",
    "space_to_batch": "space-to-batch moves spatial tiles into the batch",
}


def differences(found: dict, other: dict) -> list[tuple[str, str]]:
    """(what differs, the decision it is) between two points of the space."""
    rows = []
    for key in ("activation", "space_to_depth", "space_to_batch"):
        if found[key] != other[key]:
            rows.append((f"{key}: {other[key]} -> {found[key]}", key))
    for i, (a, b) in enumerate(zip(found["stages"], other["stages"], strict=True), 1):
        changed = [name for name in STAGE_CHOICES if a[name] != b[name]]
        if changed:
            rows.append((f"stage {i}: " + ", ".join(f"{name} {b[name]} -> {a[name]}" for name in changed), ",".join(changed)))
    return rows


def roofline_row(spec, hardware) -> dict:
    result = analyze(spec, hardware, 1, "fp32")
    total = sum(p.seconds for p in result.layers)
    memory = sum(p.seconds for p in result.layers if p.bound == "memory")
    depthwise = sum(p.seconds for p in result.layers if p.kind == "dwconv")
    return {"flops": result.flops, "bytes": result.bytes, "intensity": result.intensity, "ridge": result.ridge,
            "roofline_ms": result.predicted_ms, "memory_bound_share": memory / total, "depthwise_share": depthwise / total}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=positive_float, default=28.0, help="search time budget (default 28: with the report, within 30)")
    parser.add_argument("--controller", default="evolution", choices=sorted(CONTROLLERS))
    parser.add_argument("--out", default="runs/nas-bench")
    parser.add_argument("--data", help="ImageFolder data (default: the demo data, generated under --out when missing)")
    parser.add_argument("--json", type=output_file, help="also write the figures to this JSON file")
    args = parser.parse_args()
    out = Path(args.out)
    data = Path(args.data) if args.data else out / "data"
    if not args.data and not (data / "train").is_dir():
        from search.scaling.build_family import DemoSettings
        from training.demo_data import generate_demo_data

        demo = DemoSettings()
        generate_demo_data(data, size=demo.images_per_class, image_size=demo.image_size)
    from training.data import class_names

    config = SearchConfig(controller=args.controller, population=8, sample_size=3, epochs=PROXY_EPOCHS, data=str(data.resolve()),
                          num_classes=len(class_names(data)), hardware_id=this_machine().hardware_id, **SCALING)
    settings = WorkerSettings(storage=None, journal=out / "trials.journal", work_dir=out, deadline=time.time() + 60 * args.minutes)
    started = time.perf_counter()
    resume = (out / "trials.journal").exists()
    result = nas_job.run(config, settings, out, resume=resume, say=lambda line: print(line, file=sys.stderr), progress=True,
                         noise_repeats=SEEDS)
    minutes = (time.perf_counter() - started) / 60
    config = SearchConfig.from_dict(result["config"])
    return report(result, config, minutes, args.json, out)


def report(result: dict, config: SearchConfig, minutes: float, json_path: Path | None, work_dir: Path) -> int:
    hardware = this_machine().hardware
    baselines = {row["role"].split(":", 1)[1]: row for row in result["baselines"]}
    searched = [r for r in result["records"] if r["state"] == "complete" and r["role"] == "search" and r["duplicate_of"] is None]
    undominated = [r for r in searched if not any(b["accuracy"] >= r["accuracy"] and b["latency_ms"] <= r["latency_ms"]
                                                  for b in baselines.values())]
    found = max(undominated, key=lambda r: r["reward"], default=None)
    print(f"\nsearch: {config.controller}, {result['trials']} trials in {minutes:.1f} min on {config.hardware_id}; candidates at width "
          f"{config.width}, depth {config.depth}, {config.resolution} px, {config.epochs} proxy epochs; T = {config.target_ms:.4g} ms")
    models = {**baselines, **({"found": found} if found else {})}
    figures = {}
    print(f"\n{'model':20s} {'top-1 %':>8s} {'latency ms':>11s} {'reward':>8s} {'params M':>9s} {'MFLOPs':>8s} {'FLOP/B':>7s} "
          f"{'roofline ms':>11s} {'mem-bound':>9s} {'depthwise':>9s}")
    for name, row in models.items():
        spec = config.spec(row["point"], name=name)
        roof = roofline_row(spec, hardware)
        figures[name] = {**{k: row[k] for k in ("number", "accuracy", "latency_ms", "reward", "params", "point")}, **roof}
        print(f"{name:20s} {100 * row['accuracy']:8.1f} {row['latency_ms']:11.4f} {row['reward']:8.4f} {row['params'] / 1e6:9.3f} "
              f"{roof['flops'] / 1e6:8.1f} {roof['intensity']:7.2f} {roof['roofline_ms']:11.4f} {100 * roof['memory_bound_share']:8.0f}% "
              f"{100 * roof['depthwise_share']:8.0f}%")
    ridge = hardware.ridge("fp32")
    print(f"\nthis hardware ({hardware.name}): ridge point {ridge:.2f} FLOP/byte (peak {hardware.peak_for('fp32') / 1e9:.1f} GFLOP/s, "
          f"{hardware.bandwidth / 1e9:.1f} GB/s)")
    if found is None:
        print("\nno searched architecture escapes domination by a reference model: search longer")
        _write(json_path, {"found": None, "models": figures, "minutes": minutes})
        return 1
    for name, row in baselines.items():
        gain_acc = 100 * (found["accuracy"] - row["accuracy"])
        speedup = row["latency_ms"] / found["latency_ms"]
        print(f"\nfound (trial {found['number']}) vs {name}: {gain_acc:+.1f} points top-1, {speedup:.2f}x the speed")
        decisions = set()
        for text, decision in differences(found["point"], row["point"]):
            print(f"  {text}")
            decisions.update(decision.split(","))
        for decision in sorted(decisions):
            print(f"    why it matters here: {decision}: {WHY[decision]}")
    f = figures["found"]
    for name in baselines:
        b = figures[name]
        print(f"\nroofline, found vs {name}: intensity {f['intensity']:.2f} vs {b['intensity']:.2f} FLOP/B (ridge {ridge:.2f}); "
              f"{100 * f['memory_bound_share']:.0f}% vs {100 * b['memory_bound_share']:.0f}% of roofline time memory-bound; "
              f"{f['flops'] / b['flops']:.2f}x the FLOPs, {f['bytes'] / b['bytes']:.2f}x the bytes")
    print(f"\nthe found architecture's margins over the references against the seed noise ({SEEDS} seeds each):")
    judged = result["noise"]
    if judged and judged["finalists"] and judged["finalists"][0]["number"] == found["number"]:
        print("  as the search's own noise check judged them above (the found architecture is the search's best)")
    else:
        records = [TrialRecord(**row) for row in result["records"]]
        judged = verdict.judge(records, config, work_dir, SEEDS, winner=next(r for r in records if r.number == found["number"]))
    _write(json_path, {"found": f, "models": figures, "minutes": minutes, "ridge": ridge, "judged": judged})
    return 0


def _write(path: Path | None, data: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(data, indent=2))


if __name__ == "__main__":
    run_script(main)
