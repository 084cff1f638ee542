"""Batch throughput: one local worker process against N, in the same run (and, with --dask, a local Dask cluster of
1 worker against N), on real 224x224 Taleqani JPEGs.

Each configuration scores the same archive (links to the first --images JPEGs of the data folder) into a fresh JSONL
file; the figure is the median images/s over --repeats runs, pool start-up included (what a user waits for).

    python benchmarks/bench_batch.py [--images 400] [--workers N] [--repeats 3] [--dask] [--json out.json]
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
from leukostage.batch.engines import cpu_count
from leukostage.data import default_data_dir


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


def images_per_second(root: Path, tmp: Path, repeats: int, **engine) -> float:
    """Median images/s of ``repeats`` full runs (start-up included)."""
    rates = []
    for i in range(repeats):
        out = tmp / f"run-{time.time_ns()}-{i}.jsonl"
        t0 = time.perf_counter()
        summary = run_batch(BatchConfig([str(root)], out, progress=False, **engine))
        rates.append(summary["rows_written"] / (time.perf_counter() - t0))
    return statistics.median(rates)


def dask_rates(root: Path, tmp: Path, repeats: int, workers: int) -> dict:
    """Images/s on a local Dask cluster of 1 worker and of ``workers`` workers (1 thread each; cluster start-up
    excluded: a cluster is started once and serves many batches)."""
    from distributed import LocalCluster

    rates = {}
    for n in sorted({1, workers}):
        with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                          host="127.0.0.1") as cluster:
            images_per_second(root, tmp, 1, scheduler=cluster.scheduler_address)  # warm: plugin loads the model
            rates[n] = images_per_second(root, tmp, repeats, scheduler=cluster.scheduler_address)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--workers", type=int, default=cpu_count())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dask", action="store_true", help="also a local Dask cluster, 1 worker vs --workers")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="leukostage-bench-batch-") as tmp:
        tmp = Path(tmp)
        root = archive(tmp / "archive", args.images)
        one = images_per_second(root, tmp, args.repeats, workers=1)
        many = images_per_second(root, tmp, args.repeats, workers=args.workers)
        results = {
            "local": {"images_per_second_1_worker": round(one, 1),
                      f"images_per_second_{args.workers}_workers": round(many, 1),
                      "speedup": round(many / one, 2)},
            "setup": {"images": args.images, "repeats": args.repeats, "cores": cpu_count(),
                      "input": "224x224 JPEG (Taleqani), read + hash + decode + validate + infer + write JSONL"},
        }
        if args.dask:
            rates = dask_rates(root, tmp, args.repeats, args.workers)
            results["dask_local_cluster"] = {f"images_per_second_{n}_workers": round(r, 1) for n, r in rates.items()}
            results["dask_local_cluster"]["added_by_each_worker"] = round(
                (rates[args.workers] - rates[1]) / max(1, args.workers - 1), 1)
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
