"""User errors end in one line on stderr and exit code 2, never a traceback."""

import subprocess
import sys

import pytest

from effx_serve.cli import main


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


def test_console_script_is_installed():
    bin_dir = sys.executable.rsplit("/", 1)[0]
    result = subprocess.run([f"{bin_dir}/effx-serve", "models", "--family", "efficientnet-x"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "efficientnet-x-b7" in result.stdout
