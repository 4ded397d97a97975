"""`effx-serve family`, `lacs` and `noise`: compound scaling of a base into B0..Bn, latency-aware search for its
coefficients, and the seed noise of the proxy measurements those searches decide on."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from effx_serve.cli.common import (
    checked,
    epochs,
    positive_float,
    positive_int,
    progress_lines,
    require_training,
    reward_exponent,
    table,
)
from effx_serve.core.errors import UserError
from effx_serve.hardware.detect import detect
from effx_serve.hardware.machine import this_machine
from effx_serve.perf.latency_store import LatencyStore
from search.evaluators import MeasuredLatency, ProxyAccuracy
from search.scaling.job import LacsSettings, run
from search.scaling.lacs import DEFAULT_PHIS, MAX_GRID_STEP, MIN_GRID_STEP, Coefficients, family, member_row
from training.arch.presets import PRESETS, load_spec
from training.errors import SpecError

_grid_step = checked(float, lambda value: MIN_GRID_STEP <= value <= MAX_GRID_STEP, "a number", f"from {MIN_GRID_STEP} to {MAX_GRID_STEP}")
_fine_step = checked(float, lambda value: value == 0 or 0.005 <= value <= 0.5, "a number", "0 (no finer grid) or from 0.005 to 0.5")
_tolerance = checked(float, lambda value: 0 < value <= 1, "a number", "above 0 and at most 1")


def cmd_family(args: argparse.Namespace) -> int:
    base = load_spec(args.base)
    try:
        phis = [float(p) for p in args.phis.split(",")] if args.phis else list(DEFAULT_PHIS)
    except ValueError:
        raise SpecError(f"--phis takes comma-separated numbers such as 0,0.33,0.97, got '{args.phis}'") from None
    members = family(base, Coefficients.parse(args.coefficients), phis, prefix=args.prefix)
    rows = [member_row(m, phi) for m, phi in zip(members, phis, strict=True)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        row["mparams"], row["gmacs"] = row["params"] / 1e6, row["macs"] / 1e9
    print(table(rows, [("member", "name", ""), ("phi", "phi", "g"), ("depth", "depth", "g"), ("width", "width", "g"),
                        ("res", "resolution", "d"), ("blocks", "blocks", "d"), ("params(M)", "mparams", ".2f"), ("GMACs", "gmacs", ".3f")]))
    return 0


def cmd_noise(args: argparse.Namespace) -> int:
    """Train one architecture under the proxy recipe with several seeds and time it several times: mean and std of both."""
    require_training("noise")
    from effx_serve.perf.measure import onnx_file
    from effx_serve.perf.profiler import profile_onnx
    from effx_serve.perf.session import CPU_THREADS
    from search.defaults import check_one_batch, image_counts
    from search.noise import NOISE_SIGMAS, Spread, difference_std

    spec = load_spec(args.base)
    if args.resolution:
        spec = spec.with_(resolution=args.resolution)
    say = progress_lines(quiet=args.json)
    accuracy = ProxyAccuracy(Path(args.data), Path(args.out) / "proxy", epochs=args.epochs, stride=args.subset_stride)
    check_one_batch(image_counts(args.data)[0], args.subset_stride, accuracy.batch_size, "give more training images or a smaller --subset-stride")
    tops = []
    for seed in range(args.repeats):
        tops.append(accuracy(spec, seed))
        say(f"  seed {seed}: top-1 {100 * tops[-1]:.2f}%")
    top1 = Spread(tuple(tops))
    path = onnx_file(spec, spec.resolution)  # latency depends on the graph, not the weights
    latency = Spread(tuple(profile_onnx(path, 1, spec.resolution, threads=CPU_THREADS)[0].p50_ms for _ in range(args.repeats)))
    result = {"spec": spec.name, "resolution": spec.resolution, "epochs": args.epochs, "repeats": args.repeats,
              "top1": top1.to_dict(), "latency_ms": latency.to_dict(), "sigmas": NOISE_SIGMAS}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    std, lat_std = top1.std or 0.0, latency.std or 0.0
    print(f"{spec.name} at {spec.resolution} px, {args.epochs} proxy epochs, {args.repeats} seeds: "
          f"top-1 {100 * top1.mean:.2f}% +- {100 * std:.2f} (1 std)")
    print(f"latency p50 at batch 1 (ONNX Runtime, {args.repeats} timings): {latency.mean:.4f} ms +- {lat_std:.4f} ({100 * lat_std / latency.mean:.1f}%)")
    print(f"two such models' top-1 differ by chance up to ~{100 * NOISE_SIGMAS * difference_std(std, std):.1f} points "
          f"({NOISE_SIGMAS:g} std of a difference): smaller margins are noise")
    return 0


def cmd_lacs(args: argparse.Namespace) -> int:
    require_training("lacs")
    machine = this_machine()
    if args.hardware not in ("auto", machine.hardware_id):
        raise UserError(f"LACS measures latency on this machine ({machine.hardware_id}); run it on {args.hardware} or pass --hardware auto")
    say = progress_lines(quiet=args.json)
    base = _lacs_base(args, say)
    settings = LacsSettings(grid_step=args.grid_step, tolerance=args.tolerance, fine_step=args.fine_step or None, top_k=args.top_k,
                            w=args.w, target_ms=args.target_ms, noise_repeats=args.noise_repeats, max_repeats=args.max_repeats,
                            max_finalists=args.max_finalists)
    out = Path(args.out)
    accuracy = ProxyAccuracy(Path(args.data), out / "trials", epochs=args.epochs, stride=args.subset_stride, progress=False)
    _say_lacs_estimate(base, settings, args, say)
    with LatencyStore() as store:
        result = run(base, out, accuracy, MeasuredLatency(machine, store, batch=args.batch), machine.hardware_id, settings, say)
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "families"}, indent=2))
        return 0
    noise = result["accuracy_noise_std"]
    spread = "" if noise is None else f" +- {100 * noise:.1f}"
    for label, key in (("LACS", "lacs"), ("accuracy-only", "accuracy_only")):
        trial = result[key]
        print(f"{label:14s} winner {tuple(trial['coefficients'])}: top-1 {100 * trial['accuracy']:.1f}{spread}%, "
              f"{trial['latency_ms']:.3f} ms at phi = 1, reward {trial['reward']:.4f}")
    rows = [dict(m, mparams=m["params"] / 1e6, mmacs=m["macs"] / 1e6, res=m["spec"]["resolution"]) for m in result["families"]["lacs"]]
    print(table(rows, [("member", "name", ""), ("phi", "phi", "g"), ("res", "res", "d"), ("params(M)", "mparams", ".3f"),
                        ("MMACs", "mmacs", ".1f"), ("latency ms", "expected_latency_ms", ".3f")]))
    print(f"written: {out / 'lacs.json'}, {out / 'family.json'}, {out / 'lacs.png'}")
    return 0


def _lacs_base(args: argparse.Namespace, say):
    """The base at the scale asked for. A preset name is an architecture at its published scale (224 px, full width and
    depth: days of proxy training on a CPU), so what is not given comes from the data's image size and this hardware, as
    `search` does; a spec file or JSON is trained at its own scale, but for what is given."""
    from search.defaults import fill_scale

    scale = {"width": args.width, "depth": args.depth, "resolution": args.resolution}
    if args.base.strip() in PRESETS:
        scale, said = fill_scale(scale, args.data, detect().hw_class)
        for line in said:
            say(line)
    return load_spec(args.base).with_(**{name: value for name, value in scale.items() if value is not None})


def _say_lacs_estimate(base, settings, args: argparse.Namespace, say) -> None:
    from search.defaults import check_one_batch, describe_estimate, image_counts
    from search.scaling.job import estimate_lacs

    train, val = image_counts(args.data)
    check_one_batch(train, args.subset_stride, ProxyAccuracy.batch_size, "give more training images or a smaller --subset-stride")
    runs, seconds = estimate_lacs(base, settings, train // args.subset_stride, val, args.epochs)
    say(f"LACS trains the base at {base.resolution} px (width {base.width:g}, depth {base.depth:g}) scaled to phi = 1: "
        f"{runs} proxy runs, give or take (a finer grid adds some; a clear decision retrains fewer finalists and stops their seeds before "
        f"{settings.seeds_at_most}), {describe_estimate(seconds)} (timed on this machine)")


def add_parsers(sub) -> None:
    p = sub.add_parser("family", help="the members B0..Bn of a compound-scaled family: depth, width, resolution, blocks, params, MACs")
    p.add_argument("--base", required=True, metavar="SPEC", help="preset name, spec JSON file or inline JSON")
    p.add_argument("--coefficients", required=True, metavar="A,B,G", help="alpha,beta,gamma, e.g. 1.28,1.17,1.07")
    p.add_argument("--phis", help="comma-separated phi per member (default: EfficientNet's budgets 0,0.33,0.97,1.85,3.34,4.54,5.55,6.48)")
    p.add_argument("--prefix", help="member name prefix (default: the base's name)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_family)

    p = sub.add_parser("lacs", help="latency-aware compound scaling: rank (alpha, beta, gamma) by accuracy and measured latency")
    p.add_argument("--base", required=True, metavar="SPEC", help="preset name, spec JSON file or inline JSON")
    p.add_argument("--data", required=True, metavar="DIR", help="ImageFolder dataset for proxy training")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--hardware", default="auto", help="the hardware id latency is measured on: this machine's (default auto)")
    p.add_argument("--width", type=positive_float, help="the base's width multiplier (default: a spec's own; for a preset, from the "
                   "data's image size and this hardware, 0.5 on a CPU)")
    p.add_argument("--depth", type=positive_float, help="the base's depth multiplier (default: a spec's own; for a preset, 0.34 on a CPU)")
    p.add_argument("--resolution", type=positive_int, help="base resolution (default: a spec's own; for a preset, from the data's images)")
    p.add_argument("--grid-step", type=_grid_step, default=0.1)
    p.add_argument("--tolerance", type=_tolerance, default=0.1, help="allowed |alpha beta^2 gamma^2 - 2| (default 0.1)")
    p.add_argument("--fine-step", type=_fine_step, default=0.05, help="finer grid around the best triplets (0: none)")
    p.add_argument("--top-k", type=positive_int, default=2)
    p.add_argument("--w", type=reward_exponent, default=-0.07, help="latency exponent of the reward (MnasNet: -0.07)")
    p.add_argument("--target-ms", type=positive_float, help="latency target T (default: the base at phi 1 with EfficientNet's coefficients)")
    p.add_argument("--epochs", type=epochs, default=2, help="proxy training epochs per triplet")
    p.add_argument("--subset-stride", type=positive_int, default=1, help="proxy-train on every N-th training image")
    p.add_argument("--noise-repeats", type=int, default=LacsSettings.noise_repeats, choices=range(0, 11), metavar="N",
                   help="seeds each finalist is trained with, to judge the winner's margin against the seed noise "
                        "(0 or 1: not measured; default: %(default)s)")
    p.add_argument("--max-repeats", type=int, default=LacsSettings.max_repeats, choices=range(0, 21), metavar="N",
                   help="while the finalists' margin is inside the seed noise, a seed more each, up to N seeds "
                        "(a race: a clear margin stops it at once; at most --noise-repeats: no race; default: %(default)s)")
    p.add_argument("--max-finalists", type=int, default=LacsSettings.max_finalists, choices=range(2, 21), metavar="N",
                   help="triplets a decision retrains at most: the two best first draws and every other within the seed noise of "
                        "the leader (2: the two best only; default: %(default)s)")
    p.add_argument("--batch", type=positive_int, default=1, help="batch size latency is measured at")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_lacs)

    p = sub.add_parser("noise", help="the proxy's seed noise: train one architecture with several seeds, time it several times")
    p.add_argument("--base", required=True, metavar="SPEC", help="preset name, spec JSON file or inline JSON")
    p.add_argument("--data", required=True, metavar="DIR", help="ImageFolder dataset for proxy training")
    p.add_argument("--out", required=True, metavar="DIR", help="where the proxy-training checkpoints go (a rerun reuses them)")
    p.add_argument("--resolution", type=positive_int, help="input resolution (default: the spec's)")
    p.add_argument("--repeats", type=int, default=5, choices=range(2, 21), metavar="N", help="seeds and timings (2-20, default 5)")
    p.add_argument("--epochs", type=epochs, default=2, help="proxy training epochs (default 2, as lacs)")
    p.add_argument("--subset-stride", type=positive_int, default=1, help="proxy-train on every N-th training image")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_noise)
