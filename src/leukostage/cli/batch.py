"""The ``leukostage batch`` verb: flags -> :class:`leukostage.batch.BatchConfig` -> ``run_batch`` -> summary."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..classes import DISCLAIMER
from ..validate import DEFAULT_PRESET, PRESETS

EXIT_INTERRUPTED = 130  # the shell's code for a run stopped by a signal


def add_batch(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "batch",
        help="score image archives into a results file: streaming, resumable, on local "
        "worker processes or a Dask cluster",
        description="Score every image under INPUT (files, folders at any depth, @LIST.txt) into "
        "RESULTS, one row per input (refused inputs too, with their code), written as chunks finish; "
        "--resume skips inputs already there. Runs on local worker processes by default, or on a "
        "Dask cluster with --scheduler.",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image files, folders (searched at any depth; hidden entries skipped) or @LIST.txt (one path per line)",
    )
    p.add_argument("--out", required=True, help="results: a .jsonl or .csv file, or a folder for parquet")
    p.add_argument(
        "--format",
        choices=("csv", "jsonl", "parquet"),
        default=None,
        help="default: from the --out suffix (.jsonl, .csv, .parquet)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="skip inputs already in --out with the same content (sha256) and append the rest",
    )
    p.add_argument("--workers", type=int, default=None, help="local worker processes (default: one per core)")
    p.add_argument(
        "--threads-per-worker",
        type=int,
        default=None,
        metavar="T",
        help="ONNX Runtime and OpenCV threads in each local worker (default: cores / workers; fewer "
        "leave cores free on a shared machine)",
    )
    p.add_argument(
        "--scheduler",
        default=None,
        metavar="tcp://HOST:PORT",
        help="run on this Dask scheduler's workers instead (they read the inputs: same paths everywhere)",
    )
    p.add_argument(
        "--model",
        default=None,
        help="ONNX model (default: the model shipped in the package; with "
        "--scheduler, a path that exists on every worker)",
    )
    p.add_argument("--chunk-size", type=int, default=None, help="inputs per task and per flush (default 32)")
    p.add_argument("--preset", default=DEFAULT_PRESET, choices=PRESETS, help="validation preset")
    p.add_argument("--summary-json", default=None, metavar="FILE", help="also write the summary here as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")


def cmd_batch(args: argparse.Namespace) -> int:
    from ..batch import DEFAULT_CHUNK_SIZE, BatchConfig, format_summary, run_batch

    cfg = BatchConfig(
        inputs=args.inputs,
        out=args.out,
        format=args.format,
        resume=args.resume,
        workers=args.workers,
        threads_per_worker=args.threads_per_worker,
        scheduler=args.scheduler,
        model=args.model,
        preset=args.preset,
        chunk_size=args.chunk_size or DEFAULT_CHUNK_SIZE,
        progress=False if args.no_progress else None,
    )
    summary = run_batch(cfg)
    print(format_summary(summary), file=sys.stderr)
    print(DISCLAIMER, file=sys.stderr)
    if args.summary_json:
        Path(args.summary_json).write_text(json.dumps(summary, indent=2) + "\n")
    if summary["interrupted"]:
        return EXIT_INTERRUPTED
    return 1 if summary["refused"] else 0


def register(sub: argparse._SubParsersAction) -> None:
    add_batch(sub)
    sub.choices["batch"].set_defaults(func=cmd_batch)
