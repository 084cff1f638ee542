"""How many cores this process may use, and how worker processes share them: the web server's gunicorn workers and
the batch engines' workers size their ONNX Runtime and OpenCV thread pools by the same rule. Also whether the CPU
multiplies int8 exactly at full speed (VNNI), which decides how ONNX Runtime runs an int8 model."""

from __future__ import annotations

import functools
import os
from pathlib import Path

VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni"})  # /proc/cpuinfo names of the int8 dot-product instructions


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


def has_vnni(cpuinfo: str) -> bool:
    """Whether a /proc/cpuinfo text lists VNNI (AVX512-VNNI or AVX-VNNI) among the CPU's flags."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return bool(VNNI_FLAGS & set(line.partition(":")[2].split()))
    return False


@functools.cache
def cpu_has_vnni() -> bool:
    """This machine's answer to :func:`has_vnni`; False where /proc/cpuinfo cannot be read (not Linux), which only
    costs an int8 model speed, never correctness."""
    try:
        return has_vnni(Path("/proc/cpuinfo").read_text())
    except OSError:
        return False
