"""What the command-line modules share: argument types, the text table, progress reporters, the training-extra check."""

from __future__ import annotations

import argparse
import math
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from effx_serve.core.errors import UserError, needs_extra
from effx_serve.core.proc import available_cpus
from training.recipe import MAX_EPOCHS

T = TypeVar("T")


def checked(parse: Callable[[str], T], ok: Callable[[T], bool], expected: str, rule: str) -> Callable[[str], T]:
    """An argparse type: `parse` the text (else "expected <expected>"), then require `ok` (else "must be <rule>")."""

    def convert(text: str) -> T:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got '{text}'") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {value}")
        return value

    return convert


positive_int = checked(int, lambda value: value >= 1, "a whole number", "at least 1")
count = checked(int, lambda value: value >= 0, "a whole number", "0 or more")
# checked before a long measurement, not when its figures are written at the end
output_file = checked(Path, lambda path: path.parent.is_dir() and not path.is_dir(), "a file path", "a file in an existing folder")
epochs = checked(int, lambda value: 1 <= value <= MAX_EPOCHS, "a whole number", f"from 1 to {MAX_EPOCHS}")
port = checked(int, lambda value: 1 <= value <= 65535, "a port number", "from 1 to 65535")
reward_exponent = checked(float, lambda value: -10 <= value <= 0, "a number", "in [-10, 0] (a positive exponent rewards slower models)")
positive_float = checked(float, lambda value: 0 < value < math.inf, "a positive number", "a positive number")


def check_workers(workers: int) -> None:
    """Worker processes on this machine: each trains or loads with a process of its own, so more than the CPUs only compete."""
    if workers > available_cpus():
        raise UserError(f"--workers {workers} is more than this machine's {available_cpus()} CPUs; run at most {available_cpus()}")


def run_script(main: Callable[[], int | None]) -> None:
    """A benchmark script's entry point: bad input (a UserError) is one line and exit 2, as in the CLI, not a traceback."""
    try:
        code = main()
    except UserError as error:
        print(f"{Path(sys.argv[0]).name}: error: {error}", file=sys.stderr)
        code = 2
    sys.exit(code or 0)


@contextmanager
def terminate_as_interrupt(interrupted: threading.Event) -> Iterator[None]:
    """A stop from a process manager (SIGTERM) ends the command the way Ctrl-C does, with KeyboardInterrupt: its `finally`
    blocks run (children stopped, reports written) rather than the process ending where it stands. Either signal sets
    `interrupted`, for a library that turns the KeyboardInterrupt into an error of its own (torch.onnx.export, interrupted
    while it imports, reports a failed export). Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame) -> None:
        interrupted.set()
        raise KeyboardInterrupt

    previous = {signum: signal.signal(signum, interrupt) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Fixed-width text table; columns are (header, key, format)."""
    cells = [[format(row[key], fmt) for _, key, fmt in columns] for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, (h, _, _) in enumerate(columns)]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, ((h, _, _), w) in enumerate(zip(columns, widths, strict=False)))]
    for row in cells:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=False))))
    return "\n".join(lines)


def int_list(text: str) -> list[int]:
    """'1,8,32' -> [1, 8, 32] (sorted, no repeats); every value at least 1."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers such as 1,8,32, got '{text}'") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"every value must be at least 1, got '{text}'")
    return sorted(set(values))


def progress_lines(quiet: bool) -> Callable[[str], None]:
    """Where long jobs report progress: stderr, one line each (nothing with --json, whose output is the result)."""
    return (lambda line: None) if quiet else (lambda line: print(line, file=sys.stderr, flush=True))


def progress_line(prefix: str):
    """A progress reporter on stderr: rewritten in place on a terminal, one line per 10% in a log."""
    tty = sys.stderr.isatty()
    shown = [-1]

    def report(done: int, total: int) -> None:
        percent = 100 * done // max(total, 1)
        step = percent if tty else percent // 10 * 10
        if step == shown[0] and done < total:
            return
        shown[0] = step
        line = f"{prefix}: {done}/{total} ({percent}%)"
        print(f"\r{line}" if tty else line, end="\n" if (done >= total or not tty) else "", file=sys.stderr, flush=True)

    return report


def require_training(what: str) -> None:
    """Fail at once, naming the extra to install, when the training stack is missing (rather than minutes into a job)."""
    with needs_extra("train", what):
        import safetensors  # noqa: F401
        import torch  # noqa: F401
