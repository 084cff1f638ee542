"""Where chunks are scored: local worker processes (default) or a Dask distributed cluster.

Both run :func:`score.score_chunk` and keep a bounded number of chunks in flight, so discovery stays lazy and memory
flat; both yield each chunk's rows exactly once, in completion order, to the caller that writes them.
"""

from __future__ import annotations

import itertools
import multiprocessing
import signal
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from urllib.parse import urlparse

from ..cores import limit_opencv_threads, threads_per_worker
from .discover import BatchInput
from .score import score_chunk
from .writers import BatchError

IN_FLIGHT_PER_WORKER = 3  # chunks queued per worker: enough to keep it busy, few enough to keep memory flat


def _init_local_worker(threads: int) -> None:
    """Ctrl-C is the parent's to handle (it stops the run cleanly); the model loads on the first image to infer and
    stays for the life of the process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    limit_opencv_threads(threads)


class LocalEngine:
    """A pool of local worker processes, each holding one model."""

    def __init__(self, workers: int, model: str | None, preset: str, threads: int | None = None):
        self.workers = workers
        self.model = model
        self.preset = preset
        self.threads = threads or threads_per_worker(workers)

    def describe(self) -> dict:
        return {"engine": "local", "workers": self.workers, "onnx_threads_per_worker": self.threads}

    def map_chunks(self, chunks: Iterable[list[BatchInput]]) -> Iterator[list[dict]]:
        """Rows of each chunk, as chunks complete. The pool starts only when the first chunk arrives."""
        chunks = iter(chunks)
        first = next(chunks, None)
        if first is None:
            return
        ctx = multiprocessing.get_context("spawn")  # no fork of a parent holding threads (progress bar, counter)
        pool = ProcessPoolExecutor(
            self.workers, mp_context=ctx, initializer=_init_local_worker, initargs=(self.threads,)
        )
        pending: set = set()
        try:
            for chunk in itertools.chain([first], chunks):
                pending.add(pool.submit(score_chunk, chunk, self.model, self.preset, self.threads))
                if len(pending) >= self.workers * IN_FLIGHT_PER_WORKER:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    yield from (f.result() for f in done)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                yield from (f.result() for f in done)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def dask_threads_on_hosts(workers_info: dict) -> dict[str, int]:
    """Dask threads per host, from the scheduler's view of its workers (a host may run several worker processes)."""
    threads: dict[str, int] = {}
    for address, info in workers_info.items():
        host = urlparse(address).hostname or ""
        threads[host] = threads.get(host, 0) + int(info.get("nthreads", 1))
    return threads


class DaskEngine:
    """The same chunks on a Dask distributed cluster. Workers read the inputs (they need the same paths), score
    them, and send rows back; only this client writes. A chunk whose worker dies is recomputed by the scheduler,
    and each chunk's result is received once, so a lost worker loses no row and duplicates none."""

    def __init__(self, scheduler: str, model: str | None, preset: str, retries: int = 2):
        self.scheduler = scheduler
        self.model = model
        self.preset = preset
        self.retries = retries
        self.info: dict = {}

    def describe(self) -> dict:
        return {"engine": "dask", "scheduler": self.scheduler, **self.info}

    def _client(self):
        try:
            from distributed import Client
        except ImportError as exc:  # pragma: no cover - a base install has it
            raise BatchError("--scheduler needs dask[distributed]: pip install 'dask[distributed]'") from exc
        try:
            return Client(self.scheduler, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise BatchError(
                f"cannot reach the Dask scheduler at {self.scheduler} ({exc}); start one with "
                "`dask scheduler` and give its tcp://HOST:PORT"
            ) from exc

    def map_chunks(self, chunks: Iterable[list[BatchInput]]) -> Iterator[list[dict]]:
        from distributed import as_completed

        from .dask_plugin import ModelPlugin

        client = self._client()
        try:
            workers = client.scheduler_info()["workers"]
            try:
                client.register_plugin(ModelPlugin(self.model, dask_threads_on_hosts(workers)), name=ModelPlugin.name)
            except FileNotFoundError as exc:
                raise _model_missing(exc) from exc
            self.info = {"workers": len(workers), "threads": sum(int(w.get("nthreads", 1)) for w in workers.values())}
            in_flight = max(2, self.info["threads"] * IN_FLIGHT_PER_WORKER)
            run = uuid.uuid4().hex[:8]
            pending = as_completed()
            for n, chunk in enumerate(chunks):
                pending.add(
                    client.submit(
                        score_chunk,
                        chunk,
                        self.model,
                        self.preset,
                        key=f"leukostage-{run}-{n}",
                        pure=False,
                        retries=self.retries,
                    )
                )
                if pending.count() >= in_flight:
                    yield self._result(next(pending))
            for future in pending:
                yield self._result(future)
        finally:
            client.close()

    @staticmethod
    def _result(future) -> list[dict]:
        try:
            rows = future.result()
        except FileNotFoundError as exc:
            raise _model_missing(exc) from exc
        future.release()
        return rows


def _model_missing(exc: FileNotFoundError) -> BatchError:
    return BatchError(
        f"a Dask worker could not load the model: {exc}. Every worker needs leukostage installed and "
        "the model at the same path (--model, or $LEUKOSTAGE_MODEL in the worker's environment)"
    )
