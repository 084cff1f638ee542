"""What the verbs share: input expansion, progress on a terminal, line output, shared options."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TypeVar

from ..batch.discover import expand_inputs  # noqa: F401  folders at any depth: the same discovery as `batch`
from ..validate import DEFAULT_PRESET, PRESETS, VALIDATOR_ENV

T = TypeVar("T")

PRESET_HELP = (
    "validation preset: 'default' = colour thresholds calibrated on genuine smears plus the learned "
    "smear-vs-other content check (the validator JSON); 'paper' = the seed paper's fixed colour rule "
    "(Code Snippet 4) only, at full resolution, kept for comparison"
)


def add_model_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default=None,
        metavar="FILE",
        help="ONNX model with its <name>.card.json beside it (default: $LEUKOSTAGE_MODEL, else the model "
        "shipped in the package)",
    )


def add_validation_options(p: argparse.ArgumentParser) -> None:
    """--preset and --validator: which input gate runs, and with which calibration file."""
    p.add_argument("--preset", default=DEFAULT_PRESET, choices=PRESETS, help=PRESET_HELP)
    p.add_argument(
        "--validator",
        default=None,
        metavar="FILE",
        help=f"validator calibration JSON for the default preset (default: ${VALIDATOR_ENV}, else the "
        "validator.json shipped in the package); written by `leukostage calibrate-validator --out FILE`",
    )


def use_validator(path: str | None) -> None:
    """Point this process (and processes it starts, e.g. gunicorn workers) at a validator calibration file.

    Raises:
        FileNotFoundError: the file does not exist.
    """
    if path is None:
        return
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"validator file {path} not found; write one with `leukostage calibrate-validator "
            "--out FILE` or leave out --validator"
        )
    os.environ[VALIDATOR_ENV] = str(p.resolve())


def progress(items: list[T], what: str) -> Iterable[T]:
    """A progress bar on stderr, only when stderr is a terminal and there is more than one item: pipes, logs and
    --json consumers see clean output."""
    if len(items) < 2 or not sys.stderr.isatty():
        return items
    from tqdm import tqdm

    return tqdm(items, desc=what, unit="image", file=sys.stderr, leave=False, dynamic_ncols=True)


def emit(line: str) -> None:
    """One line of results on stdout, written as soon as it is known (so `| head` sees it, and a bar on stderr
    is redrawn below it rather than through it)."""
    from tqdm import tqdm

    tqdm.write(line, file=sys.stdout)
    sys.stdout.flush()
