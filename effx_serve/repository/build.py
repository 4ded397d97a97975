"""`effx-serve build-repo`: a Triton model repository and its manifest from a trained family.

For each member of a family.json whose checkpoint is finished: export ONNX (dynamic batch), check it
against PyTorch, profile it on this machine over batch sizes (measured records, through the latency
store), predict its latency on the other hardware ids asked for, and write::

    OUT/manifest.json                 the router's contract (effx_serve/repository/schemas/manifest.schema.json)
    OUT/<member>/config.pbtxt         repository.triton_config
    OUT/<member>/labels.txt           Triton's classification extension
    OUT/<member>/1/model.onnx
    OUT/<member>/1/model.py           only with --triton-backend python

Atomic: everything is written into a staging folder beside OUT and swapped in at the end
(effx_serve.core.atomic_dir), so a failed or killed build leaves the previous repository as it was.
Incremental: a member whose checkpoint (sha256 of its weights) and export settings did not change keeps
its previous model.onnx, and profiles come from the latency store, so a re-run only does new work.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from effx_serve.core import atomic_dir
from effx_serve.core.errors import UserError, needs_extra
from effx_serve.core.fs import sha256_file
from effx_serve.core.preprocess import DEFAULT_CROP_FRACTION, MEAN, STD
from effx_serve.hardware.ceilings import get_hardware
from effx_serve.hardware.ids import hardware_class
from effx_serve.hardware.machine import Machine
from effx_serve.perf import latency_model
from effx_serve.perf.measure import measure_spec, side_by_side
from effx_serve.perf.profiler import SIDE_BY_SIDE_ROUNDS
from effx_serve.perf.roofline import analyze
from effx_serve.repository import manifest, triton_config
from effx_serve.repository.manifest import MANIFEST_FILE, MANIFEST_VERSION
from training.arch.family_file import read_family
from training.arch.spec import ModelSpec

DEFAULT_BATCHES = (1, 4, 16)
MAX_BATCH = 1024
EXPORT_TOLERANCE = 1e-3  # max |ONNX Runtime - PyTorch| on logits; fp32 reorderings stay far below it
# What each hardware class would serve with: the runtime and precision its predicted records are for.
SERVING_RUNTIME = {"cpu": ("onnxruntime", "fp32"), "gpu": ("onnxruntime-tensorrt", "fp16"), "tpu": ("tpu-xla", "bf16")}
PYTHON_MODEL = Path(__file__).with_name("triton_python_model.py")


@dataclass(frozen=True)
class RepoSettings:
    backend: str = "onnxruntime"
    hardware_ids: tuple[str, ...] = ()  # predicted records for these, beside this machine's measured ones
    target: str | None = None  # the hardware the configs are written for (default: this machine); must be among the above
    batches: tuple[int, ...] = DEFAULT_BATCHES
    opset: int = 18
    dataset_name: str | None = None  # default: the checkpoints' data fingerprint


@dataclass(frozen=True)
class Member:
    name: str
    phi: float
    spec: ModelSpec
    checkpoint: Path  # the final.json of its training run
    meta: dict
    labels: list[str]


def find_members(family: dict, checkpoints: Path, family_file: Path, trained_only: bool = False) -> list[Member]:
    """Every family member with its finished checkpoint (`trained_only`: those finished so far); a clear error for whatever
    does not match."""
    from training.checkpoint import json_path, read_meta

    if not checkpoints.is_dir():
        raise UserError(f"--checkpoints {checkpoints} is not a folder (build-family writes <out>/checkpoints/<member>/)")
    members = []
    for entry in family["members"]:
        spec = ModelSpec.from_dict(entry["spec"])
        folder = checkpoints / spec.name
        final = json_path(folder, "final")
        if not final.exists():
            if trained_only:
                continue
            state = "an unfinished run" if json_path(folder, "last").exists() else "no checkpoint"
            raise UserError(f"member {spec.name} of {family_file} has {state} in {folder} (no final.json); train it with 'effx-serve build-family'")
        meta = read_meta(final)
        if not isinstance(meta.get("spec"), dict) or not isinstance(meta.get("weights"), dict):
            raise UserError(f"checkpoint {final} is not a finished training run's (no spec or weights); train member {spec.name} again")
        trained = ModelSpec.from_dict(meta["spec"])
        if (trained.arch_hash(), trained.resolution) != (spec.arch_hash(), spec.resolution):
            raise UserError(f"checkpoint {final} is of another model than member {spec.name} of {family_file} "
                            f"(architecture {trained.arch_hash()} at {trained.resolution} px, family says {spec.arch_hash()} at {spec.resolution} px)")
        labels_file = folder / "labels.txt"
        try:
            labels = [line.strip() for line in labels_file.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as error:
            cause = getattr(error, "strerror", None) or "not UTF-8 text"
            raise UserError(f"{labels_file} cannot be read ({cause}); it names the classes of member {spec.name}") from None
        if len(labels) != trained.num_classes:
            raise UserError(f"{labels_file} lists {len(labels)} labels but member {spec.name} has {trained.num_classes} classes")
        members.append(Member(spec.name, float(entry.get("phi", 0.0)), trained, final, meta, labels))
    if not members:
        raise UserError(f"no member of {family_file} has a finished checkpoint in {checkpoints} yet; train one with 'effx-serve build-family'")
    if len({tuple(m.labels) for m in members}) > 1:
        raise UserError(f"the members in {checkpoints} were trained on different label sets; a repository serves one")
    return members


def _previous(out: Path) -> dict:
    """The current repository's manifest members, for reuse; nothing when it is missing or invalid."""
    try:
        return manifest.read(out)["members"]
    except UserError:
        return {}


def _export(member: Member, model_dir: Path, opset: int, previous: dict, out: Path) -> tuple[float | None, bool]:
    """Write model_dir/model.onnx: linked from the previous build when its inputs are unchanged, else exported and checked."""
    target = model_dir / "model.onnx"
    old = previous.get(member.name, {}).get("model", {})
    old_file = out / old.get("path", "-")
    if (old.get("checkpoint_sha256") == member.meta["weights"]["sha256"] and old.get("opset") == opset
            and old_file.is_file() and sha256_file(old_file) == old.get("sha256")):
        try:
            os.link(old_file, target)  # files are never modified in place, so sharing the inode is safe
        except OSError:
            shutil.copy2(old_file, target)
        return old.get("export_max_abs_diff"), True
    import torch

    from training.arch.export import check_onnx, export_onnx
    from training.arch.model import build_model
    from training.checkpoint import load_weights

    spec, weights = load_weights(member.checkpoint)
    model = build_model(spec)
    model.load_state_dict(weights)
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    export_onnx(model, target, spec.resolution, opset)
    checks = check_onnx(target, model, spec.resolution, tolerance=EXPORT_TOLERANCE)
    worst = max(check.max_abs_diff for check in checks)
    if not all(check.ok for check in checks):
        raise UserError(f"member {member.name}: ONNX Runtime and PyTorch disagree by {worst:.2e} (tolerance {EXPORT_TOLERANCE:g})")
    return worst, False


def _measured(spec: ModelSpec, model: Path, machine: Machine, store, batches) -> list:
    """The member's latency records on this machine (from the store, else timed now)."""
    return [measure_spec(spec, spec.resolution, batch, "onnxruntime", machine, store, onnx_path=model)[0] for batch in batches]


def _timed_together(records, names: list[str]) -> bool:
    """Whether every record was taken side by side with exactly these members."""
    return all(record.details.get("side_by_side", {}).get("with") == sorted(names) for record in records)


def _row(record) -> dict:
    side = record.details.get("side_by_side")
    source = (f"side by side with the family's other members, median of {side['rounds']} rounds (latency store)" if side
              else "effx-serve profile protocol (latency store)")
    return {"hardware_id": record.key.hardware_id, "runtime": record.key.runtime, "precision": record.key.precision, "batch": record.key.batch,
            "p50_ms": record.p50_ms, "p90_ms": record.p90_ms, "p99_ms": record.p99_ms, "runs": record.runs, "spread": record.spread,
            "provenance": "measured", "source": source}


def _retimed(members: list[Member], staging: Path, machine: Machine, store, batches, say) -> dict[str, list]:
    """{member: its records on this machine}, every member timed in turn (perf.measure.side_by_side)."""
    records = side_by_side([(m.spec, staging / m.name / "1" / "model.onnx") for m in members], batches, "onnxruntime", machine, store,
                           SIDE_BY_SIDE_ROUNDS)
    say(f"timed the {len(members)} members side by side ({SIDE_BY_SIDE_ROUNDS} rounds), batch 1: "
        + ", ".join(f"{m.name} {records[m.name, 1].p50_ms:.3f} ms" for m in members))
    return {m.name: [records[m.name, batch] for batch in batches] for m in members}


def _predicted(spec: ModelSpec, hardware_id: str, batches) -> list[dict]:
    """Latency on hardware this machine is not: the calibrated latency model where one exists, else the roofline bound."""
    hardware = get_hardware(hardware_id)
    runtime, precision = SERVING_RUNTIME[hardware_class(hardware.id)]
    calibrated = latency_model.load(hardware.id, runtime, precision)
    records = []
    for batch in batches:
        if calibrated is not None:
            ms, source = 1e3 * calibrated.predict_seconds(spec, hardware, batch, spec.resolution), "calibrated latency model"
        else:
            ms, source = analyze(spec, hardware, batch, precision).predicted_ms, "roofline, E = 1 (uncalibrated: a lower bound)"
        records.append({"hardware_id": hardware.id, "runtime": runtime, "precision": precision, "batch": batch, "p50_ms": ms,
                        "p90_ms": ms, "p99_ms": ms, "runs": 0, "spread": 0.0, "provenance": "predicted", "source": source})
    return records


def _keep_own_files(out: Path, staging: Path) -> None:
    """Carry over top-level files someone put beside the members (a README): Triton ignores them, the swap must not drop them."""
    if out.is_dir():
        for path in out.iterdir():
            if path.is_file() and not path.name.startswith(".") and path.name != MANIFEST_FILE:
                shutil.copy2(path, staging / path.name)


def build_repository(family_file: Path, checkpoints: Path, out: Path, settings: RepoSettings, machine: Machine, store,
                     say: Callable[[str], None] = print, partial_of: int | None = None) -> dict:
    """Build (or rebuild) the repository at `out`; returns the manifest written.

    `partial_of`: this build is one step of a family of that many members still being trained (a server watching `out`
    serves each step): members without a finished checkpoint are left out, and the manifest says `partial` while fewer
    than `partial_of` are in it."""
    with needs_extra("train", "build-repo"):  # the export: torch and onnx
        from training.arch.export import INPUT_NAME, OUTPUT_NAME

    if settings.backend not in triton_config.BACKENDS:
        raise UserError(f"unknown Triton backend '{settings.backend}' (known: {', '.join(triton_config.BACKENDS)})")
    refusal = atomic_dir.replace_refusal(out, MANIFEST_FILE, files_kept=True)
    if refusal:
        raise UserError(f"--out {out} {refusal}; give a new or empty folder, or a previous repository")
    if 1 not in settings.batches:
        raise UserError("--batches must include 1 (the batching plan and the router start from it)")
    if max(settings.batches) > MAX_BATCH:
        raise UserError(f"--batches {max(settings.batches)} is more than {MAX_BATCH}: profiling it holds that many images at once")
    for hardware_id in settings.hardware_ids:  # an unknown id is refused now, not after every member is exported and timed
        get_hardware(hardware_id)
    target = settings.target or machine.hardware_id
    if target not in (machine.hardware_id, *settings.hardware_ids):
        raise UserError(f"--target {target} has no latency records to plan batching from; add it to --hardware")
    family = read_family(family_file)
    members = find_members(family, checkpoints, family_file, trained_only=partial_of is not None)
    try:
        staging = atomic_dir.begin(out)
    except OSError as error:
        raise UserError(f"cannot write beside {out}: {error.strerror or error} ({error.filename}); choose another --out") from None
    previous = _previous(out)
    target_class = hardware_class(target)
    cores = max(1, len(os.sched_getaffinity(0)))
    try:
        entries, exports, here = {}, {}, {}
        for index, member in enumerate(members, 1):
            started = time.perf_counter()
            model_dir = staging / member.name / "1"
            model_dir.mkdir(parents=True)
            diff, reused = _export(member, model_dir, settings.opset, previous, out)
            exports[member.name] = diff
            if settings.backend == "python":
                shutil.copyfile(PYTHON_MODEL, model_dir / "model.py")
            here[member.name] = _measured(member.spec, model_dir / "model.onnx", machine, store, settings.batches)
            say(f"[{index}/{len(members)}] {member.name}: {'reused' if reused else 'exported'} model.onnx, "
                f"top-1 {100 * member.meta['metrics']['ema_top1']:.1f}%, {next(r for r in here[member.name] if r.key.batch == 1).p50_ms:.3f} ms at batch 1 "
                f"({time.perf_counter() - started:.1f} s)")
        names = [m.name for m in members]
        complete = partial_of is None or len(members) >= partial_of
        if complete and len(members) > 1 and not _timed_together([r for rs in here.values() for r in rs], names):
            here = _retimed(members, staging, machine, store, settings.batches, say)  # the router compares members: one moment
        for member in members:
            model_dir, diff = staging / member.name / "1", exports[member.name]
            latency = [_row(record) for record in here[member.name]]
            for hardware_id in settings.hardware_ids:
                if hardware_id != machine.hardware_id:
                    latency += _predicted(member.spec, hardware_id, settings.batches)
            batching = triton_config.BatchingPlan.from_profile({r["batch"]: r["p50_ms"] for r in latency if r["hardware_id"] == target})
            config = triton_config.model_config(member.name, settings.backend, member.spec.resolution, len(member.labels), batching,
                                                target_class, cores, INPUT_NAME, OUTPUT_NAME)
            (staging / member.name / "config.pbtxt").write_text(triton_config.render(config))
            (staging / member.name / "labels.txt").write_text("".join(f"{label}\n" for label in member.labels))
            roofline = analyze(member.spec, machine.hardware, 1)
            metrics = member.meta.get("metrics", {})
            entries[member.name] = {
                "phi": member.phi, "arch_hash": member.spec.arch_hash(), "spec": member.spec.to_dict(), "resolution": member.spec.resolution,
                "params": roofline.params, "macs": roofline.macs, "intensity": roofline.intensity,
                "accuracy": {"top1": metrics["ema_top1"], "top5": metrics["ema_top5"], "dataset": settings.dataset_name or member.meta["data_fingerprint"],
                             "split": "val", "provenance": "measured"},
                "model": {"path": f"{member.name}/1/model.onnx", "sha256": sha256_file(model_dir / "model.onnx"), "opset": settings.opset,
                          "input": {"name": INPUT_NAME, "dims": [3, member.spec.resolution, member.spec.resolution]},
                          "output": {"name": OUTPUT_NAME, "dims": [len(member.labels)]}, "max_batch_size": batching.max_batch_size,
                          "checkpoint_sha256": member.meta["weights"]["sha256"]} | ({} if diff is None else {"export_max_abs_diff": diff}),
                "latency": latency,
            }
        data = {
            "manifest_version": MANIFEST_VERSION, "created_by": "effx-serve build-repo", "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "triton_backend": settings.backend, "target_hardware": target,
            "dataset": {"name": settings.dataset_name or members[0].meta["data_fingerprint"], "fingerprint": members[0].meta["data_fingerprint"],
                        "labels": members[0].labels},
            "preprocessing": {"layout": "NCHW", "color": "RGB", "dtype": "float32", "mean": list(MEAN), "std": list(STD),
                              "crop_fraction": DEFAULT_CROP_FRACTION, "resize": "shorter-side-bicubic-then-center-crop"},
            "families": [{"name": family.get("name") or members[0].name.rsplit("-", 1)[0], "searched_for": family["hardware"],
                          "hardware_classes": sorted({hardware_class(h) for h in (family["hardware"], machine.hardware_id, *settings.hardware_ids)}),
                          "coefficients": list(family["coefficients"]), "members": [m.name for m in members]}],
            "members": entries,
        } | ({"partial": {"members_planned": partial_of}} if partial_of is not None and len(members) < partial_of else {})
        manifest.validate(data, "the manifest being built")
        _keep_own_files(out, staging)
        (staging / MANIFEST_FILE).write_text(json.dumps(data, indent=2))
        atomic_dir.swap_in(staging, out)
    except OSError as error:  # disk full, permissions, a vanished folder: the old repository is untouched
        shutil.rmtree(staging, ignore_errors=True)
        where = f" ({error.filename})" if error.filename else ""
        raise UserError(f"building the repository failed: {error.strerror or error}{where}; {out} is unchanged") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return data
