"""Shared timing helper for the benchmark scripts (run them as `python benchmarks/<name>.py`)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 10) -> float:
    """Median wall time of ``fn`` in milliseconds over ``repeats`` calls, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def report(result: dict, json_path: str | None) -> None:
    """Print a benchmark's result as JSON, and also write it to ``json_path`` when one is given."""
    import json
    from pathlib import Path

    text = json.dumps(result, indent=2)
    print(text)
    if json_path:
        Path(json_path).write_text(text + "\n")
