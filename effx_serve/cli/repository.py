"""`effx-serve build-repo` and `effx-serve check-repo`: the model repository commands."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from effx_serve.cli.common import int_list, progress_lines, require_training, table
from effx_serve.core.errors import UserError
from effx_serve.hardware.machine import this_machine
from effx_serve.perf.latency_store import LatencyStore
from effx_serve.repository.build import RepoSettings, build_repository
from effx_serve.repository.check import check_repository
from search.evaluators import MeasuredLatency
from search.scaling.build_family import RESULTS_FILE, run_demo

DEFAULT_REPOSITORY = "model_repository"
DEFAULT_DEMO_RUN = "runs/demo"
DEMO_DATASET = "effx-demo-shapes"


def build_demo_family(run_dir: Path, say, on_members: Callable[[Path, int], None] | None = None) -> Path:
    """The demo family's run folder, trained first when it has no results yet (minutes, resumable); `on_members` as in
    run_demo (each step of the family as its members are ready)."""
    if not (run_dir / RESULTS_FILE).exists():
        say(f"no demo family in {run_dir}: building it (it prints an estimate before each stage; a killed run resumes)")
        machine = this_machine()
        with LatencyStore() as store:
            run_demo(run_dir, MeasuredLatency(machine, store), machine.hardware_id, say=say, on_members=on_members)
    return run_dir


def cmd_build_repo(args: argparse.Namespace) -> int:
    require_training("build-repo")
    say = progress_lines(quiet=args.json)
    if args.demo == bool(args.family):
        raise UserError("give either --demo or --family FILE --checkpoints DIR")
    settings = RepoSettings(backend=args.triton_backend, hardware_ids=tuple(args.hardware), target=args.target, batches=tuple(args.batches),
                            dataset_name=args.dataset_name or (DEMO_DATASET if args.demo else None))
    machine, out = this_machine(), Path(args.out)

    def build(family: Path, checkpoints: Path, partial_of: int | None = None) -> dict:
        with LatencyStore() as store:
            return build_repository(family, checkpoints, out, settings, machine, store, say, partial_of)

    if args.demo:
        run_dir = Path(args.demo_run)

        def step(family: Path, planned: int) -> None:  # each step of the family is served as soon as it is ready
            data = build(family, run_dir / "checkpoints", planned)
            say(f"{out} now has {len(data['members'])} of {planned} members ({', '.join(data['members'])}); a watching server serves them")

        data = build(build_demo_family(run_dir, say, step) / "lacs" / "family.json", run_dir / "checkpoints")
    else:
        if not args.checkpoints:
            raise UserError("--family needs --checkpoints DIR (the folder with one trained run per member)")
        data = build(Path(args.family), Path(args.checkpoints))
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(f"repository {args.out}: {len(data['members'])} members, Triton backend {data['triton_backend']}")
    print(repository_table(data, machine.hardware_id))
    return 0


def repository_table(data: dict, hardware_id: str) -> str:
    rows = []
    for name, member in data["members"].items():
        batch1 = next((r for r in member["latency"] if r["hardware_id"] == hardware_id and r["batch"] == 1), None)
        rows.append({"name": name, "res": member["resolution"], "mparams": member["params"] / 1e6, "mmacs": member["macs"] / 1e6,
                     "ms": batch1["p50_ms"] if batch1 else float("nan"), "top1": 100 * member["accuracy"]["top1"],
                     "max_batch": member["model"]["max_batch_size"]})
    return table(rows, [("member", "name", ""), ("res", "res", "d"), ("params(M)", "mparams", ".3f"), ("MMACs", "mmacs", ".1f"),
                        (f"p50 ms b1 ({hardware_id})", "ms", ".3f"), ("top-1 %", "top1", ".1f"), ("max batch", "max_batch", "d")])


def cmd_check_repo(args: argparse.Namespace) -> int:
    data, problems = check_repository(Path(args.repository), run_models=not args.no_run)
    if args.json:
        print(json.dumps({"ok": not problems, "members": sorted(data["members"]) if data else [], "problems": [str(p) for p in problems]}, indent=2))
    elif problems:
        print(f"{args.repository}: {len(problems)} problem(s)")
        for problem in problems:
            print(f"  {problem}")
    else:
        print(f"{args.repository}: OK, {len(data['members'])} members ({', '.join(data['members'])}), Triton backend {data['triton_backend']}")
    return 1 if problems else 0


def add_parsers(sub) -> None:
    p = sub.add_parser("build-repo", help="export, check and profile a trained family into a Triton model repository with a manifest")
    p.add_argument("--demo", action="store_true", help="from the demo family (built first in --demo-run when missing)")
    p.add_argument("--demo-run", default=DEFAULT_DEMO_RUN, metavar="DIR", help=f"the demo family's run folder (default {DEFAULT_DEMO_RUN})")
    p.add_argument("--family", metavar="FILE", help="family.json written by 'effx-serve lacs'")
    p.add_argument("--checkpoints", metavar="DIR", help="one trained run per member: DIR/<member>/final.json (build-family's <out>/checkpoints)")
    p.add_argument("--out", default=DEFAULT_REPOSITORY, metavar="DIR", help=f"the repository (default {DEFAULT_REPOSITORY})")
    p.add_argument("--hardware", nargs="*", default=[], metavar="ID", help="also predict latency on these hardware ids (e.g. nvidia-h200 tpu-v3)")
    p.add_argument("--target", metavar="ID", help="write the configs for this hardware (one of --hardware; default: this machine), "
                   "e.g. nvidia-h200 for GPU instance groups and TensorRT")
    p.add_argument("--triton-backend", choices=["onnxruntime", "python"], default="onnxruntime",
                   help="onnxruntime (the official Triton container) or python (ONNX Runtime inside Triton's Python backend)")
    p.add_argument("--batches", type=int_list, default=[1, 4, 16], help="batch sizes to profile (default 1,4,16; must include 1)")
    p.add_argument("--dataset-name", help="the dataset's name in the manifest (default: its fingerprint; the demo's name with --demo)")
    p.add_argument("--json", action="store_true", help="print the manifest")
    p.set_defaults(func=cmd_build_repo)

    p = sub.add_parser("check-repo", help="check a model repository: structure, configs, manifest schema, ONNX models, one inference each")
    p.add_argument("repository", nargs="?", default=DEFAULT_REPOSITORY, metavar="DIR")
    p.add_argument("--no-run", action="store_true", help="skip the one ONNX Runtime inference per member")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_check_repo)
