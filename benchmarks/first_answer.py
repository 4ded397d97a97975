"""How long a new user waits: `make run` on a fresh clone, timed to its first answer and to the whole demo family.

    .venv/bin/python benchmarks/first_answer.py [--source .] [--port 8123] [--until-complete] [--json F]

Clones `--source` (a git repository; default this checkout's committed HEAD) into a temporary folder and
runs `make run` there, as the README tells a new user, with an empty effx cache (no latency measured
before). Meanwhile it sends one 640x480 JPEG to /v1/classify every second and prints when the first one is
answered (200) and by which member, with the time each build stage was announced. With
`--until-complete` it waits on until /readyz no longer says `building` (every member served) and prints
that time too. Issue 18's target: the first answer within 10 minutes of the clone, set-up included.
The package installs come from this machine's pip cache when it has one, so a machine that downloads
everything takes longer by its download time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from effx_serve.cli.common import output_file, port, positive_float, run_script
from effx_serve.core.errors import UserError
from effx_serve.core.photos import synthetic_photo

TARGET_S = 600.0
STAGES = {"set-up done, the build starts": "no demo family", "b0 trains": "first member:", "the server starts": ": http://",
          "LACS starts": "LACS:", "LACS done": "LACS done", "the LACS family trains": " members for ",
          "the repository grows": "now has", "the build is done": "the demo build finished"}  # what, and the line that says it


def _stage_times(log: Path, started_at: float, seen: dict[str, float]) -> None:
    """The first time each stage's line appeared in make's output (by when we read it: within a second)."""
    text = log.read_text(errors="replace") if log.exists() else ""
    for stage, line in STAGES.items():
        if stage not in seen and line in text:
            seen[stage] = time.monotonic() - started_at


def _try_classify(base: str, photo: bytes) -> str | None:
    try:
        response = httpx2.post(f"{base}/v1/classify", content=photo, headers={"content-type": "image/jpeg"}, timeout=10)
    except httpx2.HTTPError:
        return None
    return response.json()["member"] if response.status_code == 200 else None


def _building(base: str) -> str | None:
    """What /readyz says is still being built; None once the repository is complete."""
    try:
        return httpx2.get(f"{base}/readyz", timeout=5).json().get("building")
    except (httpx2.HTTPError, ValueError):
        return "not ready"


def run(source: str, port: int, until_complete: bool, timeout_s: float, keep: Path | None) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="effx-first-answer-"))
    clone, log = folder / "clone", folder / "make-run.log"
    started = time.monotonic()
    cloned = subprocess.run(["git", "clone", "--quiet", source, str(clone)], capture_output=True, text=True, check=False)
    if cloned.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        raise UserError(f"cannot clone --source {source}: {cloned.stderr.strip() or f'git exit {cloned.returncode}'}")
    env = os.environ | {"EFFX_CACHE_DIR": str(folder / "cache")}
    env.pop("VIRTUAL_ENV", None)
    with log.open("w") as out:
        make = subprocess.Popen(["make", "run", f"PORT={port}"], cwd=clone, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base, photo, seen = f"http://127.0.0.1:{port}", synthetic_photo(640, 480, "JPEG"), {}
    result: dict = {"source": source, "target_s": TARGET_S}
    try:
        while time.monotonic() - started < timeout_s:
            time.sleep(1.0)
            _stage_times(log, started, seen)
            if make.poll() is not None:
                raise SystemExit(f"make run ended (exit {make.returncode}) before it answered; its output: {log}")
            if "first_answer_s" not in result:
                member = _try_classify(base, photo)
                if member is not None:
                    result |= {"first_answer_s": time.monotonic() - started, "first_member": member}
                    print(f"first answer after {result['first_answer_s']:.0f} s, from {member}", flush=True)
                    if not until_complete:
                        break
            elif _building(base) is None:
                result["complete_s"] = time.monotonic() - started
                break
    finally:
        os.killpg(make.pid, signal.SIGINT)  # what Ctrl-C does: the server stops, and the build with it
        try:
            make.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(make.pid, signal.SIGKILL)
            make.wait()
        _stage_times(log, started, seen)
        if keep is not None:
            keep.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log, keep)
        shutil.rmtree(folder, ignore_errors=True)
    return result | {"stages_s": seen}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default=str(Path(__file__).resolve().parents[1]), help="what to clone (default: this checkout)")
    parser.add_argument("--port", type=port, default=8123)
    parser.add_argument("--until-complete", action="store_true", help="also wait until every member is served")
    parser.add_argument("--timeout-s", type=positive_float, default=3600.0)
    parser.add_argument("--log", type=output_file, help="keep make's output here")
    parser.add_argument("--json", type=output_file, help="write the figures here")
    args = parser.parse_args()
    result = run(args.source, args.port, args.until_complete, args.timeout_s, args.log)
    for stage, seconds in sorted(result["stages_s"].items(), key=lambda item: item[1]):
        print(f"  {seconds:7.0f} s  {stage}")
    if "first_answer_s" not in result:
        print(f"no answer within {args.timeout_s:.0f} s")
        return 1
    verdict = "met" if result["first_answer_s"] <= TARGET_S else "missed"
    print(f"first answer: {result['first_answer_s']:.0f} s after the clone (target {TARGET_S:.0f} s: {verdict}), from {result['first_member']}")
    if "complete_s" in result:
        print(f"whole family served: {result['complete_s']:.0f} s after the clone")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if verdict == "met" else 1


if __name__ == "__main__":
    run_script(main)
