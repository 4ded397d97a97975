"""The deployment files (Dockerfile, .dockerignore, compose.yaml), checked without a Docker engine.

Static checks read the files as Docker would read them (instructions, stages, the ignore file's
last-match-wins rules) and hand the entrypoint's and compose's arguments to the real CLI parser. One slow
test checks the image's premise for real: the project installed from the files the Dockerfile copies,
without extras, into a fresh virtual environment (real dependency resolution) has no torch and serves.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
import tomllib
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import pytest
import yaml

from effx_serve.cli import build_parser
from effx_serve.core.photos import synthetic_photo
from effx_serve.core.proc import free_port, running
from tests.helpers import ROOT

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "compose.yaml"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
EXTRA_PACKAGES = ("torch", "onnx", "onnxscript", "safetensors", "nvidia-pytriton", "locust", "matplotlib")
INSTALL_BUDGET_S = 90  # venv + pip install of the serving install; more is worth knowing in CI


# --- Dockerfile -------------------------------------------------------------------------------------

def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments and blank lines dropped."""
    found, pending = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue  # Docker drops comment lines even inside a continuation
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        word, _, args = (pending + stripped).partition(" ")
        found.append((word.upper(), args.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continuation line"
    return found


def stages(text: str) -> list[list[tuple[str, str]]]:
    """The instructions of each build stage (each starting with its FROM), global ARG defaults substituted."""
    global_args, result = {}, []
    for word, args in instructions(text):
        if word == "FROM":
            for name, value in global_args.items():
                args = args.replace(f"${{{name}}}", value).replace(f"${name}", value)
            result.append([(word, args)])
        elif not result:
            assert word == "ARG", f"only ARG may come before the first FROM, not {word}"
            name, _, value = args.partition("=")
            global_args[name] = value
        else:
            result[-1].append((word, args))
    return result


STAGES = stages(DOCKERFILE.read_text())
FINAL = STAGES[-1]


def one(stage, word: str) -> str:
    values = [args for w, args in stage if w == word]
    assert len(values) == 1, f"expected one {word} in the final stage, found {len(values)}"
    return values[0]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), f"not the exec (JSON) form: {args}"
    return value


ENTRYPOINT = exec_form(one(FINAL, "ENTRYPOINT"))


def serve_args(extra: list[str] = ()):
    assert ENTRYPOINT[0] == "effx-serve", ENTRYPOINT
    return build_parser().parse_args(ENTRYPOINT[1:] + list(extra))


def shell_commands(stage) -> list[list[str]]:
    """Every simple command of the stage's RUN instructions (split on && ; ||), as words."""
    commands = []
    for word, args in stage:
        if word == "RUN":
            for part in re.split(r"&&|;|\|\|", args):
                if part.strip():
                    commands.append(shlex.split(part))
    return commands


def test_every_stage_builds_on_a_python_311_slim_tag():
    for stage in STAGES:
        image = stage[0][1].split()[0]
        assert re.fullmatch(r"python:3\.11-slim(-\w+)?", image), f"{image}: expected python:3.11-slim-<debian release>, by tag"
    # The venv made in the build stage is copied whole: its interpreter must exist at the same path after.
    assert len({stage[0][1].split()[0] for stage in STAGES}) == 1


def test_the_final_image_runs_as_a_non_root_user():
    words = [w for w, _ in FINAL]
    assert "USER" in words, "the final stage never leaves root"
    assert words.index("USER") < words.index("ENTRYPOINT")
    user = one(FINAL, "USER").split(":")[0]
    assert user not in ("root", "0"), user


def test_the_image_installs_the_project_without_any_extra():
    installs = [cmd for stage in STAGES for cmd in shell_commands(stage)
                if "install" in cmd and any(Path(w).name.startswith("pip") for w in cmd[: cmd.index("install")])]
    assert installs, "no pip install in the Dockerfile"
    targets = [word for cmd in installs for word in cmd[cmd.index("install") + 1:] if not word.startswith("-")]
    assert "." in targets, f"the project itself is not installed: {installs}"
    for word in targets:
        assert "[" not in word, f"an extra is installed: {word}"
        assert not any(word.lower().startswith(p) for p in EXTRA_PACKAGES), f"a training/extra package is installed: {word}"
    assert not any(flag in cmd for cmd in installs for flag in ("-e", "--editable")), "an editable install needs the source at run time"


def test_the_build_stage_copies_what_the_wheel_is_built_from():
    copied = {Path(src).name for w, args in STAGES[0] if w == "COPY" for src in args.split()[:-1] if not src.startswith("--")}
    packages = [p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]]
    needed = {"pyproject.toml", PYPROJECT["project"]["readme"], *packages}
    assert needed <= copied, f"the build stage does not copy {sorted(needed - copied)}"
    assert "training" in packages  # the CLI registers every stage's commands: the wheel must carry them


# --- .dockerignore ------------------------------------------------------------------------------------

def ignore_rules() -> list[tuple[bool, re.Pattern]]:
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        regex = regex.replace(r"\[", "[").replace(r"\]", "]")  # character classes stay classes
        rules.append((negated, re.compile(regex)))
    return rules


def ignored(path: str, rules) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for negated, regex in rules:
        if any(regex.fullmatch(p) for p in prefixes):
            verdict = not negated
    return verdict


def test_dockerignore_sends_the_sources_and_nothing_else():
    rules = ignore_rules()
    kept = ["pyproject.toml", "README.md", "effx_serve/serve/http/app.py", "effx_serve/repository/schemas/manifest.schema.json", "training/errors.py", "search/scaling/lacs.py", "loadtest/runner.py"]
    assert [p for p in kept if ignored(p, rules)] == []
    dropped = [".venv/bin/python", ".git/HEAD", "runs/demo/family.json", "data/demo/0/a.png", "model_repository/manifest.json",
               "model_repository/m/1/model.onnx", "effx_serve/__pycache__/app.cpython-311.pyc", ".pytest_cache/v", ".hypothesis/x",
               "effx_serve.egg-info/PKG-INFO", "tests/test_app.py", "benchmarks/x.py", "training/stray.pyc"]
    assert [p for p in dropped if not ignored(p, rules)] == []


def test_everything_the_dockerfile_copies_is_in_the_build_context():
    sources = [src for word, args in STAGES[0] if word == "COPY" for src in args.split()[:-1]]
    assert sources and [src for src in sources if ignored(src.rstrip("/"), ignore_rules())] == []


# --- entrypoint, port, healthcheck ----------------------------------------------------------------------

def test_the_entrypoint_serves_the_exposed_port_on_every_interface_from_models():
    args = serve_args()
    assert args.func.__name__ == "cmd_serve"
    assert (args.host, args.repo, args.backend) == ("0.0.0.0", "/models", "onnxruntime")
    assert str(args.port) in one(FINAL, "EXPOSE").split()
    cmd = one(FINAL, "CMD")
    assert exec_form(cmd) == [], "CMD would replace the arguments compose and docker run append"


def test_arguments_appended_to_the_entrypoint_override_its_defaults():
    args = serve_args(["--repo", "/elsewhere", "--backend", "triton"])
    assert (args.repo, args.backend, args.host) == ("/elsewhere", "triton", "0.0.0.0")


def healthcheck_command() -> list[str]:
    text = one(FINAL, "HEALTHCHECK")
    assert "CMD" in text.split(), text
    return exec_form(text[text.index("CMD") + 3:].strip())


def test_the_healthcheck_asks_healthz_on_the_served_port_with_python():
    command = healthcheck_command()
    assert command[0] in ("python", "python3"), "slim has no curl or wget"
    code = command[-1]
    assert f"127.0.0.1:{serve_args().port}/healthz" in code or f"localhost:{serve_args().port}/healthz" in code, code


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize(("status", "exit_code"), [(200, 0), (503, 1)])
def test_the_healthcheck_command_exits_by_the_answer(status, exit_code):
    """The HEALTHCHECK's own Python, pointed at a stand-in /healthz: 0 when healthy, 1 when not."""
    handler = type("Health", (_Health,), {"status": status})
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as stub:
        threading.Thread(target=stub.serve_forever, daemon=True).start()
        command = healthcheck_command()
        code = re.sub(r"(127\.0\.0\.1|localhost):\d+", f"127.0.0.1:{stub.server_address[1]}", command[-1])
        done = subprocess.run([sys.executable, *command[1:-1], code], capture_output=True, timeout=30)
        stub.shutdown()
    assert done.returncode == exit_code, done.stderr.decode()[-500:]


# --- compose.yaml --------------------------------------------------------------------------------------

@functools.cache
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def services() -> dict:
    return compose()["services"]


def test_compose_parses():
    assert set(services()) == {"triton", "router"}


# NGC container release -> Triton version (NVIDIA's release notes; one Triton minor version per month in 2024).
TRITON_OF_RELEASE = {f"24.{month:02d}": f"2.{41 + month}" for month in range(1, 13)}  # 24.02 -> 2.43, 24.10 -> 2.51


def test_the_triton_image_is_the_version_the_docs_name():
    match = re.fullmatch(r"nvcr\.io/nvidia/tritonserver:(\d\d\.\d\d)-py3", services()["triton"]["image"])
    assert match, services()["triton"]["image"]
    documented = set(re.findall(r"tritonserver (\d+\.\d+)", (ROOT / "docs" / "repository.md").read_text()))
    assert documented, "docs/repository.md no longer names the tritonserver version"
    assert match.group(1) in TRITON_OF_RELEASE, f"add release {match.group(1)} to TRITON_OF_RELEASE"
    assert documented == {TRITON_OF_RELEASE[match.group(1)]}


def _gpu_reserved(service: dict) -> bool:
    devices = (((service.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices") or []
    return any(d.get("driver") == "nvidia" and d.get("count") == "all" and "gpu" in d.get("capabilities", []) for d in devices)


def _mounts(service: dict) -> dict[str, str]:
    """container path -> 'host:container[:mode]' for short-syntax volumes."""
    return {volume.split(":")[1]: volume for volume in service.get("volumes", [])}


def triton_http_port() -> int:
    flags = [word for word in services()["triton"]["command"] if word.startswith("--http-port")]
    return int(flags[-1].split("=")[1]) if flags else 8000  # tritonserver's default


def test_triton_serves_the_mounted_repository_on_a_gpu():
    triton = services()["triton"]
    assert triton["command"][0] == "tritonserver"
    assert "--model-repository=/models" in triton["command"]
    assert _mounts(triton)["/models"] == "./model_repository:/models:ro"
    assert _gpu_reserved(triton)
    test = triton["healthcheck"]["test"]
    assert test[0] == "CMD" and f":{triton_http_port()}/v2/health/ready" in " ".join(test)


def test_the_router_flags_parse_and_point_at_triton():
    router = services()["router"]
    assert router["build"] == "."  # this Dockerfile
    args = serve_args(router["command"])  # SystemExit (an unknown flag or choice) fails here
    assert args.backend == "triton"
    host, port = args.triton_url.rsplit(":", 1)
    assert (host, int(port)) == ("triton", triton_http_port())
    assert args.triton_protocol == "http"
    assert router["depends_on"] == {"triton": {"condition": "service_healthy"}}


def test_the_router_reads_the_same_repository_and_publishes_its_port():
    router, triton = services()["router"], services()["triton"]
    args = serve_args(router["command"])
    assert _mounts(router)[args.repo].split(":")[0] == _mounts(triton)["/models"].split(":")[0]
    assert _mounts(router)[args.repo].endswith(":ro")
    published = [str(p).rsplit(":", 1) for p in router["ports"]]
    assert [container for _, container in published] == [str(args.port)]
    # The router routes by the hardware it detects (server.make_backend), so it must see Triton's GPU too.
    assert _gpu_reserved(router)


# --- the serving install, for real -------------------------------------------------------------------

def _clean_env() -> dict[str, str]:
    """Nothing of this environment (the main .venv, a PYTHONPATH) may leak into the fresh one's processes."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


def _run(cmd, cwd: Path, timeout=600) -> subprocess.CompletedProcess:
    """cwd outside the checkout: `python -c` puts the working directory first on sys.path."""
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=_clean_env())


def _copy_build_context(dest: Path) -> Path:
    """What the Dockerfile's build stage copies, and nothing else (so no .venv, no egg-info)."""
    dest.mkdir()
    for word, args in STAGES[0]:
        if word == "COPY":
            for src in args.split()[:-1]:
                path = ROOT / src
                if path.is_dir():
                    shutil.copytree(path, dest / src, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
                else:
                    shutil.copy2(path, dest / src)
    return dest


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


@pytest.mark.slow
def test_the_serving_install_has_no_torch_and_serves(tmp_path, served_repository):
    started = time.monotonic()
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], tmp_path, timeout=120).check_returncode()  # no --system-site-packages
    python = venv / "bin" / "python"
    probe = _run([python, "-m", "pip", "download", "--no-deps", "--dest", tmp_path / "probe", "setuptools>=68"], tmp_path, timeout=300)
    if probe.returncode != 0:
        pytest.skip(f"pip cannot reach a package index: {probe.stderr.strip().splitlines()[-1:]}")
    source = _copy_build_context(tmp_path / "context")
    install = _run([python, "-m", "pip", "install", "--no-input", "--quiet", source], tmp_path)
    elapsed = time.monotonic() - started
    assert install.returncode == 0, install.stderr[-3000:]
    print(f"serving install: venv + pip install in {elapsed:.1f} s")
    if elapsed > INSTALL_BUDGET_S:
        warnings.warn(f"the serving install took {elapsed:.0f} s (venv + pip install), over {INSTALL_BUDGET_S} s", stacklevel=1)

    check = _run([python, "-m", "pip", "check"], tmp_path, timeout=120)
    assert check.returncode == 0, check.stdout
    listed = {d["name"].lower() for d in json.loads(_run([python, "-m", "pip", "list", "--format", "json"], tmp_path, timeout=120).stdout)}
    assert not listed & set(EXTRA_PACKAGES), f"the core install pulled in {sorted(listed & set(EXTRA_PACKAGES))}"
    no_torch = _run([python, "-c", "import torch"], tmp_path, timeout=60)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr, no_torch.stderr
    imports = _run([python, "-c", "import sys, effx_serve.serve.http.app, effx_serve.serve.server, effx_serve.cli; "
                    "assert 'torch' not in sys.modules; print(effx_serve.serve.http.app.__file__)"], tmp_path, timeout=120)
    assert imports.returncode == 0, imports.stderr[-3000:]
    assert str(venv) in imports.stdout, f"imported from outside the fresh venv: {imports.stdout}"

    port = free_port()
    argv = [str(venv / "bin" / "effx-serve"), "serve", "--repo", str(served_repository), "--host", "127.0.0.1", "--port", str(port)]
    base = f"http://127.0.0.1:{port}"
    with running(argv, f"{base}/readyz", tmp_path / "serve.log", 120, _clean_env(), tmp_path):
        assert _get(f"{base}/healthz") == 200
        request = urllib.request.Request(f"{base}/v1/classify", data=synthetic_photo(64, 48), headers={"content-type": "image/jpeg"}, method="POST")
        with urllib.request.urlopen(request, timeout=30) as answer:
            assert answer.status == 200
            body = json.loads(answer.read())
        assert body["predictions"], body
