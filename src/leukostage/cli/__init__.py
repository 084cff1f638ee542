"""Command line: parse arguments, call library functions, format output. Torch is imported only by training verbs.

Each verb group is a module with ``register(sub)``, which adds its sub-parsers and sets ``func`` on each; ``main``
is the one place that turns expected failures into a one-line error and an exit status.
"""

from __future__ import annotations

import argparse
import os
import sys

from .. import __version__
from ..classes import DISCLAIMER
from . import batch, cases, serving, training

GROUPS = (serving, training, cases, batch)  # verb groups, in help order; a new group module is appended here

EXIT_ERROR = 2  # a usage or input problem, reported in one line (argparse uses 2 as well)
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # what a shell reports for a process killed by SIGPIPE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="leukostage",
        description=f"Blood smear ALL subtype classifier. {DISCLAIMER}",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="VERB")
    for group in GROUPS:
        group.register(sub)
    return parser


def _quiet_stdout() -> None:
    """After the reader of a pipe has gone (`| head`), send what is still buffered nowhere instead of failing
    again at interpreter exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print(f"leukostage {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (OSError, ValueError) as exc:  # missing or unusable files, bad values: one actionable line
        print(f"leukostage {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
