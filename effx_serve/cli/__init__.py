"""`effx-serve`: the command line, one module per pipeline stage. Each sub-command is a thin layer over a library function.

The only module that imports every stage; nothing imports it (import-linter's layer contract).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from effx_serve import __version__
from effx_serve.cli import loadtest, models, perf, repository, scale, search, serve, train
from effx_serve.cli.common import terminate_as_interrupt
from effx_serve.core.errors import UserError

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
    try:
        with terminate_as_interrupt():  # a process manager's stop runs the `finally` blocks: children stopped, outputs written
            return func(args)
    except UserError as error:
        print(f"effx-serve: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM
        print("effx-serve: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (e.g. `| head`): not an error of ours
        sys.stderr.close()
        return 0

