"""User errors end in one line on stderr and exit code 2, never a traceback."""

import errno
import os
import signal
import subprocess
import sys
import time

import pytest

from effx_serve.cli import main, models


@pytest.mark.parametrize(
    "argv, message",
    [
        (["roofline", "efficientnet-b9", "--hardware", "tpu-v3", "--precision", "bf16"], "unknown model 'efficientnet-b9'; closest:"),
        (["roofline", "efficientnet-b0", "--hardware", "tpu-v9"], "unknown hardware 'tpu-v9'"),
        (["roofline", "efficientnet-b0", "--hardware", "tpu-v3"], "no fp32 peak figure"),
        (["roofline", '{"stages": ["r1_k3_s11_e1_i32_o16_d2"]}', "--hardware", "tpu-v3", "--precision", "bf16"], "d2 without d1"),
        (["roofline", "efficientnet-b0", "--hardware", "tpu-v3", "--precision", "bf16", "--resolution", "16"], "below the network's total stride"),
        (["roofline", "missing/arch.json", "--hardware", "tpu-v3"], "does not exist"),
        (["export", "efficientnet-b0", "--out", "."], "is a directory"),
    ],
)
def test_user_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("effx-serve: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("argv", [["roofline", "efficientnet-b0", "--hardware", "tpu-v3", "--batch", "0"], ["models", "--family", "resnet"]])
def test_bad_arguments_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("command", [["lacs", "--base", "efficientnet-b0"], ["search"]])
@pytest.mark.parametrize("value", ["21", "-1", "many"])
def test_a_race_limit_out_of_range_is_a_usage_error_naming_it(command, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--data", str(tmp_path), "--out", str(tmp_path / "out"), "--max-repeats", value])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "argument --max-repeats" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # refused before any work


@pytest.mark.parametrize("value", ["1", "21", "all"])
def test_a_finalist_limit_out_of_range_is_a_usage_error_naming_it(value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["lacs", "--base", "efficientnet-b0", "--data", str(tmp_path), "--out", str(tmp_path / "out"), "--max-finalists", value])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "argument --max-finalists" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option, value", [("--grid-step", "1e-7"), ("--fine-step", "0.001"), ("--tolerance", "nan"), ("--w", "5"),
                                           ("--w", "nan"), ("--target-ms", "-1"), ("--epochs", "1000000000")])
def test_a_lacs_option_out_of_range_is_a_usage_error_naming_it(option, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["lacs", "--base", "efficientnet-b0", "--data", str(tmp_path), "--out", str(tmp_path / "out"), option, value])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"argument {option}" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_console_script_is_installed():
    bin_dir = sys.executable.rsplit("/", 1)[0]
    result = subprocess.run([f"{bin_dir}/effx-serve", "models", "--family", "efficientnet-x"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "efficientnet-x-b7" in result.stdout


@pytest.mark.parametrize(
    "make_argv, message",
    [
        (lambda tmp: ["export", "efficientnet-b0", "--out", "/proc/effx/x.onnx"], "cannot write /proc/effx/x.onnx"),
        (lambda tmp: ["export", "efficientnet-b0", "--out", str(tmp / "x.onnx"), "--opset", "11"], "opset 11 is too old"),
        (lambda tmp: ["roofline", "efficientnet-b0", "--hardware", "nvidia-h200", "--plot", str(tmp / "no" / "r.png")], "does not exist"),
        (lambda tmp: ["roofline", "efficientnet-b0", "--hardware", "nvidia-h200", "--plot", str(tmp / "binary.json" / "r.png")],
         "binary.json is a file, not a folder"),
        (lambda tmp: ["roofline", "efficientnet-b0", "--hardware", "nvidia-h200", "--plot", str(tmp / "r.txt")], "unsupported picture format 'txt'"),
        (lambda tmp: ["roofline", str(tmp), "--hardware", "tpu-v3", "--precision", "bf16"], "is a directory"),
        (lambda tmp: ["roofline", str(tmp / "binary.json"), "--hardware", "tpu-v3", "--precision", "bf16"], "cannot be read"),
        (lambda tmp: ["roofline", "[]", "--hardware", "tpu-v3", "--precision", "bf16"], "must be a JSON object"),
        (lambda tmp: ["roofline", '{"stages": ["r1_k3_s11_e1_i32_o16"], "depth": 1e300}', "--hardware", "tpu-v3", "--precision", "bf16"], "depth must be in"),
    ],
)
def test_bad_paths_and_absurd_values_are_one_line_errors(tmp_path, make_argv, message, capsys):
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00\x81" * 10)
    assert main(make_argv(tmp_path)) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_unusable_cache_folder_is_a_one_line_error(monkeypatch, capsys):
    monkeypatch.setenv("EFFX_CACHE_DIR", "/proc/effx-cache")
    assert main(["roofline", "efficientnet-b0", "--hardware", "host"]) == 2
    assert "set EFFX_CACHE_DIR to a writable folder" in capsys.readouterr().err


def test_a_stop_from_a_process_manager_ends_a_command_as_ctrl_c_does(monkeypatch, capsys):
    """SIGTERM raises KeyboardInterrupt inside the command, so its `finally` blocks run; then exit 130, one line."""
    cleaned = []

    def long_job(args) -> int:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises in this thread at the next bytecode
            return 0
        finally:
            cleaned.append(True)

    monkeypatch.setattr(models, "cmd_models", long_job)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["models"]) == 130
    assert cleaned == [True] and capsys.readouterr().err == "effx-serve: interrupted\n"
    assert signal.getsignal(signal.SIGTERM) is before  # put back once the command ends


def test_an_interrupt_a_library_words_as_its_own_error_still_ends_as_interrupted(monkeypatch, capsys):
    """torch.onnx.export, stopped by Ctrl-C while it imports, raised TorchExportError ("submit a PR to PyTorch"): rc 1
    and a traceback that blamed the model."""
    def export_like(args) -> int:
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except KeyboardInterrupt:
            raise RuntimeError("Failed to export the model with torch.export") from None
        return 0

    monkeypatch.setattr(models, "cmd_models", export_like)
    assert main(["models"]) == 130
    assert capsys.readouterr().err == "effx-serve: interrupted\n"


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES, errno.ENOSPC])
def test_a_place_that_cannot_be_written_is_one_line_naming_it(monkeypatch, capsys, code):
    def write(args) -> int:
        raise OSError(code, os.strerror(code), "/somewhere/out/.labels.txt.tmp")

    monkeypatch.setattr(models, "cmd_models", write)
    assert main(["models"]) == 2
    assert capsys.readouterr().err == f"effx-serve: error: /somewhere/out/.labels.txt.tmp: {os.strerror(code)}\n"


def test_other_os_errors_stay_tracebacks(monkeypatch):
    def bug(args) -> int:
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(models, "cmd_models", bug)
    with pytest.raises(OSError):
        main(["models"])
