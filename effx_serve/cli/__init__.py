"""`effx-serve`: the command line, one module per pipeline stage. Each sub-command is a thin layer over a library function.

The only module that imports every stage; nothing imports it (import-linter's layer contract).
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Callable, Sequence

from effx_serve import __version__
from effx_serve.cli import loadtest, models, perf, repository, scale, search, serve, train
from effx_serve.cli.common import terminate_as_interrupt
from effx_serve.core.errors import PLACE_ERRNOS, UserError

STAGES = (models, perf, train, scale, search, repository, serve, loadtest)  # the order `effx-serve --help` lists them in


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="effx-serve", description="Hardware-aware EfficientNet-X families, served by SLA.")
    parser.add_argument("--version", action="version", version=f"effx-serve {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for stage in STAGES:
        stage.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # as typed, for reports that record their command
    func: Callable[[argparse.Namespace], int] = args.func
    interrupted = threading.Event()
    try:
        with terminate_as_interrupt(interrupted):  # a process manager's stop runs the `finally` blocks: children stopped, outputs written
            return func(args)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM
        return _interrupted()
    except BrokenPipeError:  # the reader went away (e.g. `| head`): not an error of ours
        sys.stderr.close()
        return 0
    except Exception as error:
        if interrupted.is_set():  # the interrupt, worded by a library as its own failure
            return _interrupted()
        if isinstance(error, UserError):
            print(f"effx-serve: error: {error}", file=sys.stderr)
            return 2
        if isinstance(error, OSError) and error.errno in PLACE_ERRNOS:
            # The place the user chose cannot be written (a read-only or full disk, no permission): theirs to change.
            print(f"effx-serve: error: {error.filename or 'a file'}: {error.strerror}", file=sys.stderr)
            return 2
        raise


def _interrupted() -> int:
    print("effx-serve: interrupted", file=sys.stderr)
    return 130

