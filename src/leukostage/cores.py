"""How many cores this process may use, and how worker processes share them: the web server's gunicorn workers and
the batch engines' workers size their ONNX Runtime and OpenCV thread pools by the same rule."""
from __future__ import annotations

import os


def cpu_count() -> int:
    """Cores this process may run on (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """Threads for each of ``workers`` processes sharing ``cores``: cores / workers, at least 1, so that together
    they do not oversubscribe the cores."""
    return max(1, (cores or cpu_count()) // max(1, workers))


def limit_opencv_threads(threads: int) -> None:
    """OpenCV's own thread pool (decoding, resizing, the validator's filters) gets the worker's share of the cores
    too: N workers each running a pool as wide as the machine would fight over the same cores."""
    import cv2

    cv2.setNumThreads(threads)
