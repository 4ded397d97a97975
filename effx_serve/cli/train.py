"""`effx-serve demo-data`, `train` and `build-family`: data, one training run, a whole family trained."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from effx_serve.cli.common import epochs, positive_int, progress_line, progress_lines, require_training, table
from effx_serve.core.errors import UserError, needs_extra
from effx_serve.hardware.machine import this_machine
from effx_serve.perf.latency_store import LatencyStore
from search.evaluators import MeasuredLatency
from search.scaling.build_family import run_demo, train_family
from training.arch.presets import load_spec
from training.arch.spec import ModelSpec
from training.demo_data import generate_demo_data
from training.recipe import resolve as resolve_recipe


def cmd_demo_data(args: argparse.Namespace) -> int:
    summary = generate_demo_data(args.out, size=args.size, seed=args.seed, image_size=args.image_size,
                                 progress=None if args.json else progress_line("demo data"))
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        state = "reused" if summary["reused"] else f"written in {summary['seconds']:.1f} s"
        print(f"{summary['path']}: {summary['images']} images of {len(summary['classes'])} classes, {state}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    with needs_extra("train", "training"):
        from training import data
        from training.checkpoint import json_path, read_meta
        from training.loop import train
    out = Path(args.out)
    if next((p for p in (out, *out.parents) if p.exists()), out).is_file():  # before the images are checked, not after
        raise UserError(f"--out {out} is (or is inside) a file; give a folder for the checkpoints")
    last = json_path(out, "last")
    saved = read_meta(last) if args.resume and last.exists() else None  # the run being resumed
    if args.arch is None:
        if saved is None:
            raise UserError("--arch is required (it may be left out only with --resume on a run that has a checkpoint)")
        spec = ModelSpec.from_dict(saved.get("spec"))
    else:
        spec = load_spec(args.arch)
    classes = data.class_names(args.data)
    spec = spec.with_(num_classes=len(classes), **({"resolution": args.resolution} if args.resolution else {}))
    recipe = resolve_recipe(args.recipe, saved, {"epochs": args.epochs, "batch_size": args.batch_size, "base_lr": args.lr,
                                                  "optimizer": args.optimizer, "schedule": args.schedule, "num_workers": args.workers,
                                                  "seed": args.seed})
    train_set = data.ImageFolder(args.data, "train", data.train_transform(spec.resolution))
    val_set = data.ImageFolder(args.data, "val", data.eval_transform(spec.resolution))
    for dataset in (train_set, val_set):
        bad = dataset.check_images(skip_bad=args.skip_bad_images)
        if bad:
            print(f"skipped {len(bad)} unreadable image(s) in {dataset.split}, e.g. {bad[0]}", file=sys.stderr)
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:  # under torchrun, each process would time steps of its own
        _say_train_estimate(spec, recipe, len(train_set), len(val_set), saved, args.max_steps_per_epoch, progress_lines(quiet=args.json))
    out.mkdir(parents=True, exist_ok=True)
    data.write_labels(out, classes)
    metrics = train(spec, train_set, val_set, recipe, out, data.dataset_fingerprint(args.data), resume=args.resume,
                    progress=not args.json, max_steps_per_epoch=args.max_steps_per_epoch, allow_data_change=args.allow_data_change)
    if args.json:
        print(json.dumps(metrics, indent=2, default=str))
    else:
        print(f"{spec.name}: EMA top-1 {100 * metrics['ema_top1']:.1f}%, top-5 {100 * metrics['ema_top5']:.1f}% after "
              f"{metrics['epochs']} epochs; checkpoints in {out}")
    return 0


def _say_train_estimate(spec: ModelSpec, recipe, train_images: int, val_images: int, saved: dict | None, max_steps: int | None,
                        say) -> None:
    """What the run will take, timed here before it starts (a long one warns, with what shortens it)."""
    from search.defaults import describe_estimate, estimate_seconds

    done = saved.get("epoch", 0) if saved else 0
    left = max(0, recipe.epochs - done)
    if left == 0:
        return
    images = min(train_images, max_steps * recipe.batch_size) if max_steps else train_images
    seconds = estimate_seconds(spec, images, val_images, left, 1)
    shorten = "fewer --epochs, a lower --resolution or --max-steps-per-epoch"
    say(f"estimated time: {describe_estimate(seconds, shorten)} ({left} epochs of {images} images at {spec.resolution} px, timed on this machine)")


def cmd_build_family(args: argparse.Namespace) -> int:
    require_training("build-family")
    if args.demo == bool(args.family):
        raise UserError("give either --demo or --family FILE --data DIR")
    if args.family and not args.data:
        raise UserError("--family needs --data DIR (the dataset to train the members on)")
    machine = this_machine()
    out = Path(args.out)
    say = progress_lines(quiet=args.json)
    with LatencyStore() as store:
        latency = MeasuredLatency(machine, store)
        if args.demo:
            rows = run_demo(out, latency, machine.hardware_id, say=say, progress=not args.json, accuracy_only=args.with_accuracy_only)
        else:
            rows = train_family(Path(args.family), Path(args.data), out, args.epochs, latency, say, progress=not args.json,
                                accuracy_only=args.with_accuracy_only)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    shown = [dict(r, mparams=r["params"] / 1e6, mmacs=r["macs"] / 1e6, top1_pct=100 * r["top1"]) for r in rows]
    print(table(shown, [("member", "name", ""), ("res", "resolution", "d"), ("params(M)", "mparams", ".3f"), ("MMACs", "mmacs", ".1f"),
                         (f"CPU ms ({machine.hardware_id})", "latency_ms", ".3f"), ("val top-1 %", "top1_pct", ".1f")]))
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("demo-data", help="write the generated demo dataset (an ImageFolder tree; no download)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--size", type=positive_int, default=300, help="training images per class (default 300; val gets a fifth)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=positive_int, default=64, help="pixels per side (default 64)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_demo_data)

    p = sub.add_parser("train", help="train a spec on an ImageFolder dataset, with checkpoints every epoch (torchrun for DDP)")
    p.add_argument("--arch", metavar="SPEC", help="preset name, spec JSON file or inline JSON (optional with --resume)")
    p.add_argument("--data", required=True, metavar="DIR", help="ImageFolder tree: DIR/train/<class>/*, DIR/val/<class>/*")
    p.add_argument("--out", required=True, metavar="DIR", help="checkpoint folder")
    p.add_argument("--epochs", type=epochs, help="epochs (default 30); runs shorter than the warm-up warm up for a third")
    p.add_argument("--resolution", type=positive_int, help="train at this input size instead of the spec's")
    p.add_argument("--batch-size", type=positive_int, help="global batch size (split over processes)")
    p.add_argument("--lr", type=float, help="base learning rate per 256 images")
    p.add_argument("--optimizer", choices=["rmsprop", "sgd", "adamw"])
    p.add_argument("--schedule", choices=["cosine", "exponential"])
    p.add_argument("--workers", type=int, help="data loader worker processes")
    p.add_argument("--seed", type=int)
    p.add_argument("--recipe", metavar="JSON", help="a full recipe file (see docs/training.md); flags above override it")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    p.add_argument("--skip-bad-images", action="store_true", help="drop unreadable images (counted) instead of stopping at the first")
    p.add_argument("--allow-data-change", action="store_true", help="resume although the dataset fingerprint changed")
    p.add_argument("--max-steps-per-epoch", type=positive_int, help="cap steps per epoch (smoke runs)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("build-family", help="train every member of a family.json (or --demo: data, LACS and family end to end)")
    p.add_argument("--demo", action="store_true", help="generate the demo data, run a small LACS and train 4 members")
    p.add_argument("--family", metavar="FILE", help="family.json written by 'effx-serve lacs'")
    p.add_argument("--data", metavar="DIR", help="ImageFolder dataset (with --family)")
    p.add_argument("--out", default="runs/demo", metavar="DIR", help="output folder (default runs/demo)")
    p.add_argument("--epochs", type=epochs, default=8, help="epochs per member (with --family)")
    p.add_argument("--with-accuracy-only", action="store_true",
                   help="also train the accuracy-only family, to compare in family.png (doubles the time)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_build_family)
