"""Batch throughput: one local worker process against N, in the same run (and, with --dask, a local Dask cluster of
1 worker against N), on real 224x224 Taleqani JPEGs.

Each configuration scores the same archive (--images links to JPEGs spread over the data folder) into a fresh JSONL
file; the figure is the median images/s over --repeats rounds, each round running every configuration in turn (so a
change in the machine's other load hits them alike), local pool start-up included (what a user waits for).

    python benchmarks/bench_batch.py [--images 1000] [--workers N] [--repeats 3] [--dask] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from leukostage.batch import BatchConfig, run_batch
from leukostage.cores import cpu_count, threads_per_worker
from leukostage.training.data import default_data_dir


def archive(folder: Path, n: int) -> Path:
    """``n`` links to real 224x224 JPEGs in the Table 2 layout's folders."""
    src = default_data_dir() / "taleqani_all" / "original"
    every = sorted(src.rglob("*.jpg"))
    files = every[:: max(1, len(every) // n)][:n]  # spread over the four class folders
    if len(files) < n:
        sys.exit(f"need {n} JPEGs under {src}, found {len(files)} (set LEUKOSTAGE_DATA)")
    for f in files:
        dest = folder / f.parent.relative_to(src) / f.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.symlink_to(f.resolve())
    return folder


def one_run(root: Path, tmp: Path, **engine) -> tuple[float, float]:
    """One full run over the archive: images/s (start-up included) and seconds until the first chunk came back."""
    out = tmp / f"run-{time.time_ns()}.jsonl"
    t0 = time.perf_counter()
    summary = run_batch(BatchConfig([str(root)], out, progress=False, **engine))
    return summary["rows_written"] / (time.perf_counter() - t0), summary["seconds_to_first_chunk"]


def alternating(root: Path, tmp: Path, repeats: int, engines: dict) -> dict:
    """Median (images/s, seconds to the first chunk) per engine over ``repeats`` rounds that run every engine in
    turn, so a change in the machine's other load hits all of them alike."""
    runs: dict = {n: [] for n in engines}
    for _ in range(repeats):
        for n, engine in engines.items():
            runs[n].append(one_run(root, tmp, **engine))
    return {n: (statistics.median(r for r, _ in v), statistics.median(f for _, f in v)) for n, v in runs.items()}


def dask_rates(root: Path, tmp: Path, repeats: int, workers: int) -> dict[int, tuple[float, float]]:
    """Images/s on a local Dask cluster of 1 worker and one of ``workers`` workers (1 thread each), both up for the
    whole measurement (cluster start-up excluded: a cluster is started once and serves many batches)."""
    from distributed import LocalCluster

    clusters = {
        n: LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0", host="127.0.0.1")
        for n in sorted({1, workers})
    }
    try:
        engines = {n: {"scheduler": c.scheduler_address} for n, c in clusters.items()}
        alternating(root, tmp, 1, engines)  # warm: each worker's plugin loads the model
        return alternating(root, tmp, repeats, engines)
    finally:
        for c in clusters.values():
            c.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=cpu_count())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dask", action="store_true", help="also a local Dask cluster, 1 worker vs --workers")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="leukostage-bench-batch-") as tmp:
        tmp = Path(tmp)
        root = archive(tmp / "archive", args.images)
        # the comparison (threads = cores / workers: one worker gets every core), and one worker held to
        # the many workers' thread count, which shows how the pool itself scales
        single = threads_per_worker(args.workers)
        local = alternating(
            root,
            tmp,
            args.repeats,
            {
                "one": {"workers": 1},
                "one_thin": {"workers": 1, "threads_per_worker": single},
                "many": {"workers": args.workers},
            },
        )
        (one, start_one), (thin, _), (many, start_many) = local["one"], local["one_thin"], local["many"]
        results = {
            "local": {
                "images_per_second_1_worker": round(one, 1),
                f"images_per_second_{args.workers}_workers": round(many, 1),
                "speedup": round(many / one, 2),
                f"images_per_second_1_worker_{single}_threads": round(thin, 1),
                f"speedup_over_1_worker_{single}_threads": round(many / thin, 2),
                "seconds_to_first_chunk": {"1_worker": start_one, f"{args.workers}_workers": start_many},
            },
            "setup": {
                "images": args.images,
                "repeats": args.repeats,
                "cores": cpu_count(),
                "input": "224x224 JPEG (Taleqani), read + hash + decode + validate + infer + write JSONL",
            },
        }
        if args.dask:
            rates = dask_rates(root, tmp, args.repeats, args.workers)
            dask = {n: r for n, (r, _) in rates.items()}
            results["dask_local_cluster"] = {f"images_per_second_{n}_workers": round(r, 1) for n, r in dask.items()}
            results["dask_local_cluster"]["speedup"] = round(dask[args.workers] / dask[1], 2)
            results["dask_local_cluster"]["added_by_each_worker"] = round(
                (dask[args.workers] - dask[1]) / max(1, args.workers - 1), 1
            )
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
