"""Does the proxy task separate architectures? Seed noise and the response to depth, width and resolution.

    .venv/bin/python benchmarks/proxy_signal.py [--repeats 3] [--epochs 8] [--stride 1] [--init identity|reference|both] [--full-epochs 24]
                                                [--images-per-class 960] [--both-ways] [--resolution 48] [--lr-scale 1]
                                                [--out runs/proxy-signal] [--json F]

Trains the demo base at 48 px (the demo family's b0 architecture, between the 32 and 64 px variants) and four variants, each scaled in one dimension
only (depth x2, width x1.5, resolution x4/3 and x2/3: 64 and 32 px), under the proxy recipe that LACS and NAS use
(`search.evaluators.ProxyAccuracy`: the same code), each with `--repeats` seeds, on the generated demo
data. Prints per model the top-1 mean +- std, how many times chance it is, and its margin over the base
against the seed noise of that difference, with the verdict LACS and NAS print (signal beyond 2 std, or
inside the noise). `--init both` measures it twice, with residual blocks as the reference initialises them (the
proxy's) and starting as the identity, side by side. `--full-epochs N` also trains every model N epochs (the demo's
members train 24) and prints whether the proxy ranks them as those longer runs do: each margin side by side, and the
rank agreement of the models' means (Kendall's tau). `--images-per-class` trains on more (or fewer) distinct images
than the demo's, to see whether depth and width respond when data is less scarce at the same compute (4x the images
with a quarter of the epochs). `--both-ways` also scales depth and width down (x0.5, x0.67), as the 32 px variant
does resolution: whether accuracy responds to them below the base where it does not above. `--resolution` puts the base (and so
every variant) at another input size, and `--lr-scale` multiplies the proxy's learning rate: whether either is what holds depth
back. Re-running with the same --out reuses the finished runs. Targets
(issue 18): the base >= 5x chance; margins over 2 std of the noise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from effx_serve.cli.common import checked, output_file, positive_int, run_script
from search.defaults import round_resolution
from search.evaluators import ProxyAccuracy
from search.fidelity import kendall_tau
from search.noise import Margin, means_difference_std, pooled_std
from search.scaling.build_family import DemoSettings, demo_base
from training.arch.plan import expand
from training.demo_data import CLASSES, generate_demo_data

CHANCE_TARGET = 5.0
BASE_RESOLUTION = 48  # between the resolution variants (the demo family's own b0 is at 32 px)
base_resolution = checked(int, lambda value: 40 <= value <= 160, "a whole number of pixels", "from 40 to 160")  # variants within search.defaults' bounds
lr_scale = checked(float, lambda value: 0 < value <= 10, "a number", "above 0 and at most 10")


def variants(resolution: int, both_ways: bool = False) -> dict:
    base = demo_base(resolution)
    higher, lower = round_resolution(resolution * 4 / 3), round_resolution(resolution * 2 / 3)  # 64 and 32 px from 48
    models = {
        "base": base,
        "depth x2": base.with_(depth=2 * base.depth),
        "width x1.5": base.with_(width=1.5 * base.width),
        f"res {higher} px": base.with_(resolution=higher),
        f"res {lower} px": base.with_(resolution=lower),
    }
    if both_ways:  # depth and width scaled down too, as resolution is: does accuracy respond below the base?
        models |= {"depth x0.5": base.with_(depth=0.5 * base.depth), "width x0.67": base.with_(width=base.width / 1.5)}
    return models


INITS = {"reference": False, "identity": True}  # zero_init_residual: as the reference initialises them (the proxy's), or not
DESCRIBED = {"reference": "residual blocks as the reference initialises them", "identity": "residual blocks starting as the identity"}


def described(inside_noise: bool | None) -> str:
    """A margin's verdict as LACS and NAS print it."""
    return "?" if inside_noise is None else "inside the noise" if inside_noise else "signal"


def measure(accuracy: ProxyAccuracy, repeats: int, models: dict) -> dict:
    rows = {}
    for name, spec in models.items():
        started = time.perf_counter()
        spread = accuracy.spread(spec, repeats)
        rows[name] = {"spec": spec, "spread": spread, "seconds": (time.perf_counter() - started) / repeats}
        print(f"  {name}: {', '.join(f'{100 * x:.1f}' for x in spread.samples)} % ({rows[name]['seconds']:.0f} s a run)", flush=True)
    return rows


def table(rows: dict, chance: float) -> dict:
    """Print the models' top-1 and margins over the base against the pooled seed noise; the figures."""
    noise = pooled_std([row["spread"] for row in rows.values()])
    base = rows["base"]["spread"]
    print(f"pooled seed noise of one run: {'unknown (one seed)' if noise is None else f'{100 * noise:.2f} points (1 std)'}")
    print(f"{'model':<12} {'params M':>8} {'res':>4} {'top-1 %':>14} {'x chance':>8} {'vs base':>8} {'noise':>6}  verdict")
    figures = {"pooled_std": noise, "models": {}}
    for name, row in rows.items():
        spec, spread = row["spec"], row["spread"]
        params = expand(spec).params
        margin = Margin(spread.mean - base.mean, None if noise is None else means_difference_std(noise, len(spread.samples), len(base.samples)))
        verdict = "" if name == "base" else described(margin.inside_noise)
        std = spread.std or 0.0
        print(f"{name:<12} {params / 1e6:>8.2f} {spec.resolution:>4} {100 * spread.mean:>7.1f} +- {100 * std:>4.1f} "
              f"{spread.mean / chance:>8.1f} {100 * margin.value:>+8.1f} {100 * (margin.noise or 0):>6.1f}  {verdict}")
        figures["models"][name] = {"params": params, "resolution": spec.resolution, "top1": spread.to_dict(),
                                   "x_chance": spread.mean / chance, "margin": margin.to_dict(), "seconds_per_run": row["seconds"]}
    return figures


def fidelity(proxy: dict, full: dict, epochs: int) -> dict:
    """Print each model's margin over the base by the proxy and by the longer runs, and the rank agreement of their means."""
    names = list(proxy["models"])
    print(f"{'model':<12} {'   proxy vs base':<25} {f'   {epochs} epochs vs base':<25}  same direction")
    for name in names[1:]:  # the base first: its margin is 0 by definition
        a, b = proxy["models"][name]["margin"], full["models"][name]["margin"]
        same = "yes" if (a["value"] > 0) == (b["value"] > 0) else "NO"
        print(f"{name:<12} {100 * a['value']:>+8.1f} {described(a['inside_noise']):<16} {100 * b['value']:>+8.1f} {described(b['inside_noise']):<16}  {same}")
    tau = kendall_tau([proxy["models"][n]["top1"]["mean"] for n in names], [full["models"][n]["top1"]["mean"] for n in names])
    print(f"rank agreement of the {len(names)} models' means (Kendall's tau; 1 the same order, 0 unrelated, -1 reversed): {tau:.2f}")
    return {"full_epochs": epochs, "kendall_tau": tau}


def demo_data(out: Path, images_per_class: int) -> tuple[Path, dict]:
    """The work folder for this many training images per class (its own below `out` unless the demo's: the runs are
    named by model, not by data) and the generated data in it, with the demo's validation set size."""
    demo = DemoSettings()
    if images_per_class != demo.images_per_class:
        out = out / f"images-{images_per_class}"
    val_per_class = round(demo.images_per_class * demo.val_fraction)
    return out, generate_demo_data(out / "data", size=images_per_class, image_size=demo.image_size,
                                   val_fraction=min(1.0, val_per_class / images_per_class))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=positive_int, default=3, help="seeds per model (default 3)")
    parser.add_argument("--epochs", type=positive_int, default=DemoSettings.proxy_epochs, help="proxy epochs (default: the demo's)")
    parser.add_argument("--stride", type=positive_int, default=DemoSettings.proxy_stride, help="train on every n-th image (default: the demo's)")
    parser.add_argument("--init", choices=(*INITS, "both"), default="reference",
                        help="residual blocks as the reference initialises them (the proxy's, default), starting as the identity, or both side by side")
    parser.add_argument("--full-epochs", type=positive_int,
                        help="also train every model this many epochs (the demo's members train 24; as the reference initialises them) "
                             "and print whether the proxy ranks them as these longer runs do")
    parser.add_argument("--images-per-class", type=positive_int, default=DemoSettings.images_per_class,
                        help="training images per class (default: the demo's; the validation set stays the demo's size, and "
                             "another size gets a data and runs folder of its own under --out)")
    parser.add_argument("--both-ways", action="store_true",
                        help="also train depth x0.5 and width x0.67: whether accuracy responds to them below the base, as to resolution")
    parser.add_argument("--resolution", type=base_resolution, default=BASE_RESOLUTION,
                        help=f"the base's input size in px (default {BASE_RESOLUTION}); the resolution variants are x4/3 and x2/3 of it")
    parser.add_argument("--lr-scale", type=lr_scale, default=1.0, help="times the proxy recipe's learning rate (default 1)")
    parser.add_argument("--out", default="runs/proxy-signal", help="work folder: data and runs (reused when re-run)")
    parser.add_argument("--json", type=output_file, help="also write the figures to this file")
    args = parser.parse_args()

    out, data = demo_data(Path(args.out), args.images_per_class)
    print(f"demo data: {data['images']} images ({data['train_per_class']} train + {data['val_per_class']} val per class)")
    chance = 1.0 / len(CLASSES)
    inits = list(INITS) if args.init == "both" else [args.init]
    models = variants(args.resolution, args.both_ways)
    measured = {}
    for init in inits:
        print(f"{DESCRIBED[init]}:")
        accuracy = ProxyAccuracy(Path(data["path"]), out / "runs", epochs=args.epochs, stride=args.stride, zero_init_residual=INITS[init],
                                 lr_scale=args.lr_scale)
        measured[init] = measure(accuracy, args.repeats, models)
    if args.full_epochs:
        print(f"{args.full_epochs} epochs, {DESCRIBED['reference']} (as the members train):")
        full = measure(ProxyAccuracy(Path(data["path"]), out / "runs", epochs=args.full_epochs), args.repeats, models)

    images = "every training image" if args.stride == 1 else f"one training image in {args.stride}"
    report = {"images_per_class": args.images_per_class, "epochs": args.epochs, "stride": args.stride, "repeats": args.repeats,
              "resolution": args.resolution, "lr_scale": args.lr_scale, "inits": {}}
    rate = "" if args.lr_scale == 1 else f" at {args.lr_scale:g}x its learning rate"
    for init, rows in measured.items():
        print(f"\nproxy{rate}, {DESCRIBED[init]}: {args.epochs} epochs on {images}, {args.repeats} seeds each")
        report["inits"][init] = table(rows, chance)
    if args.full_epochs:
        print(f"\n{args.full_epochs} epochs on every training image, {args.repeats} seeds each")
        report["full"] = table(full, chance)
        for init in measured:
            print(f"\ndoes the proxy ({DESCRIBED[init]}) rank the models as {args.full_epochs} epochs of training do?")
            report["inits"][init]["fidelity"] = fidelity(report["inits"][init], report["full"], args.full_epochs)
    ratio = measured[inits[0]]["base"]["spread"].mean / chance
    print(f"\nbase ({inits[0]}): {ratio:.1f}x chance (target >= {CHANCE_TARGET:g}x): {'met' if ratio >= CHANCE_TARGET else 'MISSED'}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if ratio >= CHANCE_TARGET else 1


if __name__ == "__main__":
    run_script(main)
