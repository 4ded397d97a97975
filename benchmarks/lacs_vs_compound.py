"""The paper's claim on this machine: the LACS family against EfficientNet's compound-scaling rule, trained identically.

    .venv/bin/python benchmarks/lacs_vs_compound.py [--run runs/demo] [--seeds 2] [--epochs 8] [--out runs/lacs-vs-compound]
                                                    [--plot F.png] [--json F]

From the demo run's LACS result (`--run`, what `make run` or `build-family --demo` wrote: its data and
lacs/family.json), builds a second family from the same base at the same phis with EfficientNet's
coefficients (1.2, 1.1, 1.15), the accuracy-only rule the paper's Table 2 compares LACS with. Every member
of both families is trained with the demo's recipe for `--epochs` with `--seeds` seeds (the run's own
seed-0 checkpoints are reused, and a member both families share is trained once), and its batch-1 latency
is measured on this machine through the latency store. Prints per member top-1 mean +- std over the seeds,
the latency, MACs and roofline intensity; then, for each member of one family, the fastest member of the
other that is at least as accurate and the latency ratio, with whether the accuracy margin is inside the
seed noise. `--plot` draws top-1 against latency for both, with error bars. Finished trainings are reused.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from effx_serve.cli.common import epochs, output_file, positive_int, run_script
from effx_serve.core.plots import optional_pyplot, save_figure
from effx_serve.hardware.machine import this_machine
from effx_serve.perf.latency_store import LatencyStore
from effx_serve.perf.roofline import analyze
from search.evaluators import MeasuredLatency, short_run
from search.noise import Spread, pooled_std
from search.scaling.build_family import DemoSettings
from search.scaling.lacs import EFFICIENTNET_COEFFICIENTS, Coefficients, valid_family
from training.arch.family_file import read_family
from training.arch.spec import ModelSpec


def families(run: Path) -> dict[str, list[tuple[ModelSpec, float]]]:
    """{label: [(spec, phi)]}: the run's LACS family and EfficientNet's rule from the same base at the same phis."""
    family = read_family(run / "lacs" / "family.json")
    lacs = [(ModelSpec.from_dict(m["spec"]), float(m["phi"])) for m in family["members"]]
    base, phis = lacs[0][0], [phi for _, phi in lacs]
    if phis[0] != 0:
        raise SystemExit(f"{run}/lacs/family.json does not start at phi 0, so its base is unknown")
    rule = Coefficients(*EFFICIENTNET_COEFFICIENTS)
    prefix = base.name.rsplit("-", 2)[0] + "-efficientnet-rule"  # demo-x-lacs-b0 -> demo-x-efficientnet-rule
    compound, problem = valid_family(base, rule, phis, prefix)
    if problem:
        print(f"EfficientNet's rule: left out {problem}")
    a, b, g = family["coefficients"]
    return {f"LACS ({a:g}, {b:g}, {g:g})": lacs, f"EfficientNet rule {EFFICIENTNET_COEFFICIENTS}": list(zip(compound, phis, strict=False))}


def train_all(run: Path, out: Path, members: dict, seeds: int, epochs: int) -> dict[tuple[str, int], list[float]]:
    """Top-1 per (arch hash, resolution) over the seeds; seed 0 of a run's member reuses its checkpoint."""
    from training.data import dataset_fingerprint

    data = run / "data"
    fingerprint = dataset_fingerprint(data)
    reusable = {(spec.arch_hash(), spec.resolution): run / "checkpoints" / spec.name for spec, _ in members[next(iter(members))]}
    top1: dict[tuple[str, int], list[float]] = {}
    for spec, _ in (pair for family in members.values() for pair in family):
        key = (spec.arch_hash(), spec.resolution)
        if key in top1:
            continue  # b0 is the same model in both families
        top1[key] = []
        for seed in range(seeds):
            folder = reusable[key] if seed == 0 and key in reusable else out / f"seed{seed}" / f"{key[0][:12]}-r{key[1]}"
            print(f"training {spec.name} (seed {seed}, {folder})", flush=True)
            _, metrics = short_run(spec, data, folder, epochs, fingerprint, seed=seed)
            top1[key].append(metrics["ema_top1"])
    return top1


def rows_of(members: dict, top1: dict, latency_of, hardware) -> dict[str, list[dict]]:
    rows = {}
    for label, family in members.items():
        rows[label] = []
        for spec, phi in family:
            spread = Spread(tuple(top1[(spec.arch_hash(), spec.resolution)]))
            roofline = analyze(spec, hardware, 1)
            rows[label].append({"name": spec.name, "phi": phi, "depth": spec.depth, "width": spec.width, "resolution": spec.resolution,
                                "params": roofline.params, "macs": roofline.macs, "intensity": roofline.intensity,
                                "latency_ms": latency_of(spec), "top1": spread.mean, "samples": list(spread.samples), "std": spread.std})
    return rows


def at_equal_accuracy(rows: dict[str, list[dict]], noise: float | None) -> list[dict]:
    """For each member of each family: the fastest member of the other family at least as accurate, and the latency ratio."""
    (a_label, a_rows), (b_label, b_rows) = rows.items()
    found = []
    for label, mine, other_label, other in ((a_label, a_rows, b_label, b_rows), (b_label, b_rows, a_label, a_rows)):
        for row in mine:
            match = min((r for r in other if r["top1"] >= row["top1"]), key=lambda r: r["latency_ms"], default=None)
            if match is None or match["name"] == row["name"]:
                continue
            found.append({"member": row["name"], "family": label, "other": match["name"], "other_family": other_label,
                          "latency_ratio": match["latency_ms"] / row["latency_ms"], "accuracy_margin": match["top1"] - row["top1"],
                          "inside_noise": noise is None or match["top1"] - row["top1"] < 2 * noise})
    return found


def plot(rows: dict[str, list[dict]], path: Path, hardware_id: str, seeds: int) -> None:
    plt = optional_pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(7, 5))
    for (label, members), style in zip(rows.items(), ("o-", "D--"), strict=False):
        ax.errorbar([r["latency_ms"] for r in members], [100 * r["top1"] for r in members], fmt=style, capsize=3, label=label,
                    yerr=[100 * (r["std"] or 0.0) for r in members])
        for r in members:
            ax.annotate(r["name"].rsplit("-", 1)[-1], (r["latency_ms"], 100 * r["top1"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(f"latency on {hardware_id} (ms, p50, batch 1)")
    ax.set_ylabel(f"validation top-1 (%), mean +- std over {seeds} seeds")
    ax.set_title("LACS against EfficientNet's compound scaling, trained identically")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(plt, fig, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=Path("runs/demo"), help="the demo run folder (data/, lacs/family.json, checkpoints/)")
    parser.add_argument("--seeds", type=positive_int, default=2)
    parser.add_argument("--epochs", type=epochs, default=DemoSettings.member_epochs)
    parser.add_argument("--out", type=Path, default=Path("runs/lacs-vs-compound"))
    parser.add_argument("--plot", type=output_file, help="top-1 against latency for both families, with error bars")
    parser.add_argument("--json", type=output_file)
    args = parser.parse_args()
    if not (args.run / "lacs" / "family.json").is_file() or not (args.run / "data").is_dir():
        print(f"{args.run} has no demo run (data/ and lacs/family.json); build one: effx-serve build-family --demo --out {args.run}")
        return 2
    members = families(args.run)
    top1 = train_all(args.run, args.out, members, args.seeds, args.epochs)
    machine = this_machine()
    with LatencyStore() as store:
        rows = rows_of(members, top1, MeasuredLatency(machine, store), machine.hardware)
    noise = pooled_std([Spread(tuple(samples)) for samples in top1.values()])
    for label, family in rows.items():
        print(f"\n{label}\n")
        print("| member | depth | width | res | MMACs | intensity | p50 ms | top-1 % (seeds) |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
        for r in family:
            spread = "" if r["std"] is None else f" +- {100 * r['std']:.1f}"
            print(f"| {r['name']} | {r['depth']:g} | {r['width']:g} | {r['resolution']} | {r['macs'] / 1e6:.1f} | {r['intensity']:.1f} | "
                  f"{r['latency_ms']:.3f} | {100 * r['top1']:.1f}{spread} ({', '.join(f'{100 * s:.1f}' for s in r['samples'])}) |")
    print(f"\nseed noise (pooled std of one member's top-1): {'unknown (one seed)' if noise is None else f'{100 * noise:.1f} points'}\n")
    print("at equal accuracy: the fastest member of the other family that is at least as accurate")
    comparisons = at_equal_accuracy(rows, noise)
    for c in comparisons:
        verdict = "accuracy margin inside 2 std of the noise" if c["inside_noise"] else "accuracy margin beyond the noise"
        print(f"  {c['member']}: {c['other']} is {c['latency_ratio']:.2f}x its latency, {100 * c['accuracy_margin']:+.1f} points ({verdict})")
    if args.plot:
        plot(rows, args.plot, machine.hardware_id, args.seeds)
    if args.json:
        args.json.write_text(json.dumps({"families": rows, "noise_std": noise, "at_equal_accuracy": comparisons}, indent=2))
    return 0


if __name__ == "__main__":
    run_script(main)
