"""`effx-serve search`: platform-aware NAS for this machine (the paper's Section 3)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from effx_serve.cli.common import (
    check_workers,
    epochs,
    positive_float,
    positive_int,
    progress_lines,
    require_training,
    reward_exponent,
)
from effx_serve.core.errors import UserError, needs_extra
from effx_serve.hardware.detect import detect
from effx_serve.perf.measure import RUNTIME_HELP, RUNTIMES, default_runtime
from search.nas.controllers import CONTROLLERS
from search.nas.space import SearchSpace
from search.noise import MAX_REPEATS, seeds_at_most

# the options that define a search (SearchConfig fields): a resumed search keeps them
SEARCH_OPTIONS = ("controller", "seed", "population", "sample_size", "rl_update", "target_ms", "alpha", "beta", "width", "depth",
                  "resolution", "num_classes", "epochs", "subset_stride", "batch_size", "latency", "runtime", "latency_batch", "evaluator")


def cmd_search(args: argparse.Namespace) -> int:
    require_training("search")
    with needs_extra("search", "search"):  # Optuna: the trial storage and samplers
        from search.nas import job as nas_job
        from search.nas.worker import SearchConfig, WorkerSettings
    if args.budget_trials is None and args.budget_minutes is None:
        raise UserError("give a budget: --budget-trials N and/or --budget-minutes M")
    check_workers(args.workers)
    detected = detect()
    hardware_id = detected.id
    if args.hardware not in ("auto", hardware_id):
        raise UserError(f"search measures latency on this machine ({hardware_id}); run it on {args.hardware} or pass --hardware auto")
    overrides = {name: getattr(args, name) for name in SEARCH_OPTIONS if getattr(args, name) is not None}
    overrides["hardware_id"] = hardware_id  # a resumed or joined search must measure on the same hardware
    if not args.resume:  # the search stores the runtime it measures with; a resume keeps it
        overrides.setdefault("runtime", default_runtime(detected.hw_class))
    if args.no_baselines:
        overrides["baselines"] = False
    if args.space:
        overrides["space"] = SearchSpace.load(args.space).to_dict()
    if args.data:
        overrides["data"] = str(Path(args.data).resolve())
    out = Path(args.out)
    settings = WorkerSettings(storage=args.storage, journal=out / "trials.journal", work_dir=out,
                              budget_trials=args.budget_trials,
                              deadline=time.time() + 60 * args.budget_minutes if args.budget_minutes else None,
                              stale_after_s=args.stale_after)
    config = None
    if not args.resume:
        if args.data is None and "evaluator" not in overrides:
            raise UserError("--data DIR is needed: the ImageFolder dataset candidates are proxy-trained on")
        if args.data:
            from training.data import class_names  # torch: checked above

            classes = len(class_names(args.data))
            if overrides.setdefault("num_classes", classes) != classes:
                raise UserError(f"--num-classes {args.num_classes}, but {args.data} has {classes} classes; leave it out to use the data's")
    say = progress_lines(quiet=args.json)
    if not args.resume:
        if args.data:
            _default_scale(args, overrides, detect().hw_class, say)
        config = SearchConfig(**overrides)
        if args.data:
            _say_estimate(config, args, say)
    result = nas_job.run(config, settings, out, args.workers, args.resume, overrides, say, progress=not args.json,
                         noise_repeats=args.noise_repeats, max_repeats=args.max_repeats)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_result(result, out)
    if not result["states"].get("complete"):
        raise UserError(f"none of the {result['trials']} trials completed (trials.csv says why each failed)")
    return 0


def _default_scale(args: argparse.Namespace, overrides: dict, hardware_class: str, say) -> None:
    """Width, depth and resolution not given: from the data's image size and this hardware (full size on a CPU runs for days)."""
    from search.defaults import fill_scale

    chosen, said = fill_scale({name: getattr(args, name) for name in ("width", "depth", "resolution")}, args.data, hardware_class)
    overrides.update({name: value for name, value in chosen.items() if getattr(args, name) is None})
    for line in said:
        say(line)


def _say_estimate(config, args: argparse.Namespace, say) -> None:
    """Time a few training steps of EfficientNet-B0 at the search's scale and say what the whole search will take."""
    from search.defaults import check_one_batch, describe_estimate, estimate_seconds, image_counts
    from training.arch.presets import get_preset

    typical = get_preset("efficientnet-b0", width=config.width, depth=config.depth, resolution=config.resolution,
                         num_classes=config.num_classes)
    train, val = image_counts(args.data)
    check_one_batch(train, config.subset_stride, config.batch_size, "give more training images, a smaller --subset-stride or --batch-size")
    runs = (args.budget_trials or 0) + (2 if config.baselines else 0)
    # Best, runner-up and two baselines retrained with more seeds, counted at the race's limit.
    noise_runs = 4 * max(0, seeds_at_most(args.noise_repeats, args.max_repeats) - 1)
    seconds = estimate_seconds(typical, train // config.subset_stride, val, config.epochs, runs + noise_runs)
    limit = f"; --budget-minutes stops it at {args.budget_minutes:g} min" if args.budget_minutes else ""
    what = f"{runs} trials + up to {noise_runs} noise runs" if args.budget_trials else f"up to {noise_runs} noise runs after the budget"
    say(f"estimated time with one worker: {describe_estimate(seconds)} ({what}, {config.epochs} epochs on "
        f"{train // config.subset_stride} images each, timed on this machine){limit}")


def _print_result(result: dict, out: Path) -> None:
    states = ", ".join(f"{count} {state}" for state, count in sorted(result["states"].items()))
    print(f"{result['trials']} trials: {states}")
    best = result["best"]
    if best:
        print(f"best reward: trial {best['number']} ({best['role']}), top-1 {100 * best['accuracy']:.1f}%, {best['latency_ms']:.4g} ms, "
              f"reward {best['reward']:.4f}")
    for row in result["baselines"]:
        print(f"  {row['role'].split(':', 1)[1]:18s} top-1 {100 * row['accuracy']:.1f}%, {row['latency_ms']:.4g} ms, reward {row['reward']:.4f}")
    noise = result.get("noise") or {}
    if noise.get("accuracy_std") is not None:
        print(f"seed noise: top-1 +- {100 * noise['accuracy_std']:.1f} points (1 std, {noise['repeats']} seeds per finalist)")
        for row in noise["comparisons"]:
            verdict = "inside the seed noise: may be chance" if row["inside_noise"] else "more than the seed noise"
            ratio = row.get("latency_ratio")
            latency = f"; latency {ratio['mean']:.3f}x theirs side by side" if ratio else ""
            print(f"  best over {row['other_role']}: {100 * row['value']:+.1f} points, {verdict}{latency}")
    print(f"Pareto front: {len(result['pareto_front'])} architectures")
    written = [str(out / name) for name in ("search.json", "pareto.json", "pareto.png", "trials.csv") if (out / name).exists()]
    print(f"written: {', '.join(written)}" + (f", {out / 'best-spec.json'} (effx-serve lacs --base {out / 'best-spec.json'})" if best else ""))


def add_parsers(sub) -> None:
    p = sub.add_parser("search", help="platform-aware NAS: search a base architecture by proxy accuracy and latency on this machine")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (also holds the trial journal and proxy checkpoints)")
    p.add_argument("--data", metavar="DIR", help="ImageFolder dataset candidates are proxy-trained on")
    p.add_argument("--hardware", default="auto", help="the hardware latency is measured on: this machine's (default auto)")
    p.add_argument("--controller", choices=CONTROLLERS, help="rl (the paper's), evolution (default), nsga2 or tpe (Optuna)")
    p.add_argument("--budget-trials", type=positive_int, metavar="N", help="stop after N trials (all workers together)")
    p.add_argument("--budget-minutes", type=positive_float, metavar="M", help="start no trial that would end after M minutes")
    p.add_argument("--resume", action="store_true", help="continue (or join) the search in the storage, with its settings")
    p.add_argument("--workers", type=positive_int, default=1, help="worker processes on this machine (default 1)")
    p.add_argument("--noise-repeats", type=int, default=3, choices=range(0, 11), metavar="N",
                   help="after the search, seeds the best, the runner-up and the baselines are trained with, to judge the best's "
                        "margins against the seed noise (0 or 1: not measured; default: %(default)s)")
    p.add_argument("--max-repeats", type=int, default=MAX_REPEATS, choices=range(0, 21), metavar="N",
                   help="while the best is level with a finalist within the seed noise, a seed more for both, up to N seeds "
                        "(a race: clear margins stop it at once; at most --noise-repeats: no race; default: %(default)s)")
    p.add_argument("--storage", metavar="URL", help="shared storage: an RDB URL (postgresql+psycopg://..., sqlite:///f.db) or a journal "
                                                     "file path (default: OUT/trials.journal)")
    p.add_argument("--space", metavar="FILE", help="a JSON file narrowing the search space: {\"stage\": {\"kernel\": [3]}, ...}")
    p.add_argument("--seed", type=int)
    p.add_argument("--population", type=positive_int, help="evolution's population, NSGA-II's generation (default 16)")
    p.add_argument("--sample-size", type=positive_int, help="evolution's tournament size (default 4)")
    p.add_argument("--rl-update", choices=("reinforce", "ppo"), help="the RL controller's policy update (default reinforce)")
    p.add_argument("--target-ms", type=positive_float, help="latency target T (default: EfficientNet-B0 at the search's scaling)")
    p.add_argument("--alpha", type=reward_exponent, help="reward exponent at or below T (default -0.07)")
    p.add_argument("--beta", type=reward_exponent, help="reward exponent above T (default -0.07)")
    p.add_argument("--width", type=positive_float, help="width multiplier every candidate is built at (default: from the data and "
                   "the hardware, 0.5 on a CPU, 1 on a GPU or TPU)")
    p.add_argument("--depth", type=positive_float, help="depth multiplier every candidate is built at (default: 0.34 on a CPU, 1 on "
                   "a GPU or TPU)")
    p.add_argument("--resolution", type=positive_int, help="input resolution of proxy training and latency (default: the images' "
                   "size, three quarters of it on a CPU, within 32-224)")
    p.add_argument("--num-classes", type=positive_int, help="classes (default: the dataset's)")
    p.add_argument("--epochs", type=epochs, help="proxy-training epochs per candidate (default 5)")
    p.add_argument("--subset-stride", type=positive_int, help="proxy-train on every N-th training image (default 1)")
    p.add_argument("--batch-size", type=positive_int, help="proxy-training batch size (default 64)")
    p.add_argument("--latency", choices=("measured", "predicted"), help="measure each candidate (default) or predict it with the "
                                                                          "calibrated latency model")
    p.add_argument("--runtime", choices=RUNTIMES, help=RUNTIME_HELP)
    p.add_argument("--latency-batch", type=positive_int, help="batch size latency is measured at (default 1)")
    p.add_argument("--evaluator", metavar="MODULE:FACTORY", help="another evaluator: factory(config, work_dir) -> an object with "
                                                                  "accuracy(spec), latency(spec) and latency_source")
    p.add_argument("--no-baselines", action="store_true", help="do not evaluate EfficientNet-B0 and X-B0 as reference points first")
    p.add_argument("--stale-after", type=positive_float, default=60.0, metavar="S",
                   help="a running trial without a heartbeat for S seconds was lost with its worker (default 60)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_search)
