"""`effx-serve`: the command line. Each sub-command is a thin layer over a library function."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from effx_serve.cli_common import int_list, positive_int, progress_line, progress_lines, table, training_imports
from effx_serve.errors import USER_ERRORS, UserError


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
        print(table(rows, [("model", "name", ""), ("res", "resolution", "d"), ("params", "params", ",d"),
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


def cmd_profile(args: argparse.Namespace) -> int:
    from effx_serve import latency_model
    from effx_serve.latency_store import LatencyStore
    from effx_serve.measure import measure_spec, this_machine
    from effx_serve.published import ensure_published
    from effx_serve.roofline import analyze
    from training.presets import load_spec

    specs = [load_spec(ref) for ref in args.models]
    machine = this_machine()
    predict, source = latency_model.predictor(machine, args.runtime, args.precision)
    peak, bandwidth = machine.hardware.peak_for(args.precision), machine.hardware.bandwidth
    rows = []
    with LatencyStore() as store:
        ensure_published(store)
        for spec in specs:
            resolution = args.resolution or spec.resolution
            for batch in args.batch:
                record, cached = measure_spec(spec, resolution, batch, args.runtime, machine, store, args.precision)
                ideal = analyze(spec, machine.hardware, batch, args.precision, resolution)
                seconds = record.p50_ms / 1e3
                rows.append(dict(model=spec.name, resolution=resolution, batch=batch, runtime=args.runtime, hardware=machine.hardware_id,
                                 measured_ms=record.p50_ms, p90_ms=record.p90_ms, p99_ms=record.p99_ms, spread=record.spread, runs=record.runs,
                                 cached=cached, predicted_ms=predict(spec, batch, resolution), predicted_by=source,
                                 flops_per_s=ideal.flops / seconds, bytes_per_s=ideal.bytes / seconds,
                                 peak_fraction=ideal.flops / seconds / peak, bandwidth_fraction=ideal.bytes / seconds / bandwidth,
                                 efficiency=ideal.predicted_ms / record.p50_ms, details=record.details))
    for row in rows:
        row["error"] = row["predicted_ms"] / row["measured_ms"] - 1
    if args.plot:
        from effx_serve.plots import plot_latency

        plot_latency(rows, f"{machine.hardware.name}, {args.runtime}, {args.precision}", args.plot)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
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
    from effx_serve import latency_model
    from effx_serve.calibrate import fit_samples, measure_samples
    from effx_serve.latency_store import LatencyStore
    from effx_serve.measure import this_machine
    from search.space import random_specs

    machine = this_machine(refresh_ceilings=args.refresh_ceilings)
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
    from effx_serve.latency_store import LatencyStore
    from effx_serve.published import ensure_published

    where = {k: v for k, v in (("hardware_id", args.hardware), ("provenance", args.provenance), ("model", args.model)) if v}
    with LatencyStore() as store:
        ensure_published(store)
        records = store.find(**where)
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


def cmd_family(args: argparse.Namespace) -> int:
    from search.lacs import DEFAULT_PHIS, Coefficients, family, member_row
    from training.errors import SpecError
    from training.presets import load_spec

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


def cmd_demo_data(args: argparse.Namespace) -> int:
    from training.demo_data import generate_demo_data

    summary = generate_demo_data(args.out, size=args.size, seed=args.seed, image_size=args.image_size,
                                 progress=None if args.json else progress_line("demo data"))
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        state = "reused" if summary["reused"] else f"written in {summary['seconds']:.1f} s"
        print(f"{summary['path']}: {summary['images']} images of {len(summary['classes'])} classes, {state}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from effx_serve.paths import write_atomic
    from training.checkpoint import json_path, read_meta
    from training.presets import load_spec
    from training.recipe import Recipe
    from training.spec import ModelSpec

    data, training = training_imports()
    out = Path(args.out)
    last = json_path(out, "last")
    saved = read_meta(last) if args.resume and last.exists() else None  # the run being resumed
    if args.arch is None:
        if saved is None:
            raise UserError("--arch is required (it may be left out only with --resume on a run that has a checkpoint)")
        spec = ModelSpec.from_dict(saved.get("spec"))
    else:
        spec = load_spec(args.arch)
    classes = data.class_names(args.data)
    overrides = {"num_classes": len(classes)} | ({"resolution": args.resolution} if args.resolution else {})
    spec = spec.with_(**overrides)
    if args.recipe:
        try:
            recipe = Recipe.from_json(Path(args.recipe).read_text())
        except OSError as error:
            raise UserError(f"--recipe {args.recipe} cannot be read: {error.strerror}") from None
    else:  # on resume, flags change the checkpoint's own recipe
        recipe = Recipe.from_dict(saved.get("recipe")) if saved else Recipe()
    changes = {k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size), ("base_lr", args.lr),
                                 ("optimizer", args.optimizer), ("schedule", args.schedule), ("num_workers", args.workers),
                                 ("seed", args.seed)) if v is not None}
    if changes:
        if recipe.warmup_epochs > changes.get("epochs", recipe.epochs):  # a short run keeps a proportionate warm-up
            changes["warmup_epochs"] = changes["epochs"] / 3
        recipe = recipe.with_(**changes)
    train_set = data.ImageFolder(args.data, "train", data.train_transform(spec.resolution))
    val_set = data.ImageFolder(args.data, "val", data.eval_transform(spec.resolution))
    for dataset in (train_set, val_set):
        bad = dataset.check_images(skip_bad=args.skip_bad_images)
        if bad:
            print(f"skipped {len(bad)} unreadable image(s) in {dataset.split}, e.g. {bad[0]}", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "labels.txt", "".join(f"{name}\n" for name in classes))  # build-repo ships these with the model
    metrics = training.train(spec, train_set, val_set, recipe, out, data.dataset_fingerprint(args.data), resume=args.resume,
                             progress=not args.json, max_steps_per_epoch=args.max_steps_per_epoch, allow_data_change=args.allow_data_change)
    if args.json:
        print(json.dumps(metrics, indent=2, default=str))
    else:
        print(f"{spec.name}: EMA top-1 {100 * metrics['ema_top1']:.1f}%, top-5 {100 * metrics['ema_top5']:.1f}% after "
              f"{metrics['epochs']} epochs; checkpoints in {out}")
    return 0


def cmd_lacs(args: argparse.Namespace) -> int:
    from effx_serve.latency_store import LatencyStore
    from effx_serve.measure import this_machine
    from search.evaluators import MeasuredLatency, ProxyAccuracy
    from search.lacs_job import LacsSettings, run
    from training.presets import load_spec

    training_imports()
    machine = this_machine()
    if args.hardware not in ("auto", machine.hardware_id):
        raise UserError(f"LACS measures latency on this machine ({machine.hardware_id}); run it on {args.hardware} or pass --hardware auto")
    base = load_spec(args.base)
    if args.resolution:
        base = base.with_(resolution=args.resolution)
    settings = LacsSettings(grid_step=args.grid_step, tolerance=args.tolerance, fine_step=args.fine_step or None, top_k=args.top_k,
                            w=args.w, target_ms=args.target_ms)
    out = Path(args.out)
    accuracy = ProxyAccuracy(Path(args.data), out / "trials", epochs=args.epochs, stride=args.subset_stride, progress=False)
    say = progress_lines(quiet=args.json)
    with LatencyStore() as store:
        result = run(base, out, accuracy, MeasuredLatency(machine, store, batch=args.batch), machine.hardware_id, settings, say)
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "families"}, indent=2))
        return 0
    for label, key in (("LACS", "lacs"), ("accuracy-only", "accuracy_only")):
        trial = result[key]
        print(f"{label:14s} winner {tuple(trial['coefficients'])}: top-1 {100 * trial['accuracy']:.1f}%, "
              f"{trial['latency_ms']:.3f} ms at phi = 1, reward {trial['reward']:.4f}")
    rows = [dict(m, mparams=m["params"] / 1e6, mmacs=m["macs"] / 1e6, res=m["spec"]["resolution"]) for m in result["families"]["lacs"]]
    print(table(rows, [("member", "name", ""), ("phi", "phi", "g"), ("res", "res", "d"), ("params(M)", "mparams", ".3f"),
                        ("MMACs", "mmacs", ".1f"), ("latency ms", "expected_latency_ms", ".3f")]))
    print(f"written: {out / 'lacs.json'}, {out / 'family.json'}, {out / 'lacs.png'}")
    return 0


def cmd_build_family(args: argparse.Namespace) -> int:
    from effx_serve.latency_store import LatencyStore
    from effx_serve.measure import this_machine
    from search.build_family import run_demo, train_family
    from search.evaluators import MeasuredLatency

    training_imports()
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


def build_parser() -> argparse.ArgumentParser:
    from effx_serve import __version__, cli_loadtest, cli_repo, cli_search, cli_serve
    from effx_serve.roofline import PRECISION_BYTES
    from training.presets import FAMILIES

    parser = argparse.ArgumentParser(prog="effx-serve", description="Hardware-aware EfficientNet-X families, served by SLA.")
    parser.add_argument("--version", action="version", version=f"effx-serve {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("models", help="list the preset models with params, MACs and blocks")
    p.add_argument("--family", choices=FAMILIES)
    p.add_argument("--resolution", type=positive_int, help="count at this input size instead of each model's own")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

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

    p = sub.add_parser("hardware", help="detect this machine's accelerator: hardware id, class, name, how it was found")
    p.add_argument("--allow-torch", action="store_true", help="also ask torch.cuda when NVML and nvidia-smi find nothing")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_hardware)

    p = sub.add_parser("export", help="export a model to ONNX (dynamic batch) and check it against PyTorch")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--out", required=True, metavar="PATH")
    p.add_argument("--resolution", type=positive_int)
    p.add_argument("--num-classes", type=positive_int)
    p.add_argument("--opset", type=positive_int, default=18, help="ONNX opset, 18 or later")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_export)

    from effx_serve.measure import RUNTIMES

    p = sub.add_parser("profile", help="measure latency on this machine beside the predicted latency, achieved rates and E")
    p.add_argument("models", nargs="+", metavar="MODEL", help="preset name, spec JSON file or inline JSON")
    p.add_argument("--resolution", type=positive_int, help="input size (default: each model's own)")
    p.add_argument("--batch", type=int_list, default=[1, 8, 32], help="comma-separated batch sizes (default 1,8,32)")
    p.add_argument("--runtime", choices=RUNTIMES, default="onnxruntime")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32", help="fp16/bf16: torch runtimes only")
    p.add_argument("--json", action="store_true")
    p.add_argument("--plot", metavar="PNG", help="latency against batch, measured and predicted")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("calibrate", help="fit this machine's latency model (per-operator efficiencies) on random specs")
    p.add_argument("--runtime", choices=RUNTIMES, default="onnxruntime")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32")
    p.add_argument("--specs", type=positive_int, default=40, help="number of random specs to measure (default 40)")
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

    p = sub.add_parser("family", help="the members B0..Bn of a compound-scaled family: depth, width, resolution, blocks, params, MACs")
    p.add_argument("--base", required=True, metavar="SPEC", help="preset name, spec JSON file or inline JSON")
    p.add_argument("--coefficients", required=True, metavar="A,B,G", help="alpha,beta,gamma, e.g. 1.28,1.17,1.07")
    p.add_argument("--phis", help="comma-separated phi per member (default: EfficientNet's budgets 0,0.33,0.97,1.85,3.34,4.54,5.55,6.48)")
    p.add_argument("--prefix", help="member name prefix (default: the base's name)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_family)

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
    p.add_argument("--epochs", type=positive_int, help="epochs (default 30); runs shorter than the warm-up warm up for a third")
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

    p = sub.add_parser("lacs", help="latency-aware compound scaling: rank (alpha, beta, gamma) by accuracy and measured latency")
    p.add_argument("--base", required=True, metavar="SPEC", help="preset name, spec JSON file or inline JSON")
    p.add_argument("--data", required=True, metavar="DIR", help="ImageFolder dataset for proxy training")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--hardware", default="auto", help="the hardware id latency is measured on: this machine's (default auto)")
    p.add_argument("--resolution", type=positive_int, help="base resolution (default: the spec's)")
    p.add_argument("--grid-step", type=float, default=0.1)
    p.add_argument("--tolerance", type=float, default=0.1, help="allowed |alpha beta^2 gamma^2 - 2| (default 0.1)")
    p.add_argument("--fine-step", type=float, default=0.05, help="finer grid around the best triplets (0: none)")
    p.add_argument("--top-k", type=positive_int, default=2)
    p.add_argument("--w", type=float, default=-0.07, help="latency exponent of the reward (MnasNet: -0.07)")
    p.add_argument("--target-ms", type=float, help="latency target T (default: the base at phi 1 with EfficientNet's coefficients)")
    p.add_argument("--epochs", type=positive_int, default=2, help="proxy training epochs per triplet")
    p.add_argument("--subset-stride", type=positive_int, default=1, help="proxy-train on every N-th training image")
    p.add_argument("--batch", type=positive_int, default=1, help="batch size latency is measured at")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_lacs)

    p = sub.add_parser("build-family", help="train every member of a family.json (or --demo: data, LACS and family end to end)")
    p.add_argument("--demo", action="store_true", help="generate the demo data, run a small LACS and train 4 members")
    p.add_argument("--family", metavar="FILE", help="family.json written by 'effx-serve lacs'")
    p.add_argument("--data", metavar="DIR", help="ImageFolder dataset (with --family)")
    p.add_argument("--out", default="runs/demo", metavar="DIR", help="output folder (default runs/demo)")
    p.add_argument("--epochs", type=positive_int, default=8, help="epochs per member (with --family)")
    p.add_argument("--with-accuracy-only", action="store_true",
                   help="also train the accuracy-only family, to compare in family.png (doubles the time)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_build_family)

    cli_repo.add_parsers(sub)
    cli_serve.add_parsers(sub)
    cli_loadtest.add_parsers(sub)
    cli_search.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # as typed, for reports that record their command
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except USER_ERRORS as error:
        print(f"effx-serve: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("effx-serve: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (e.g. `| head`): not an error of ours
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
