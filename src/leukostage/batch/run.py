"""One batch run: discover lazily -> chunk -> score on an engine -> write each chunk as it completes -> summary."""

from __future__ import annotations

import resource
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

from ..classes import UNCERTAIN_KEY
from ..cores import cpu_count
from ..outcomes import Tally
from ..predict import Predictor, default_model_path
from ..validate import DEFAULT_PRESET
from .discover import BatchInput, count_inputs, iter_inputs
from .engines import DaskEngine, LocalEngine
from .score import SKIPPED
from .writers import BatchError, DoneIndex, format_for, open_writer

DEFAULT_CHUNK_SIZE = 32  # inputs per task: the unit of work, of flushing, and of what a kill can lose


@dataclass
class BatchConfig:
    """What ``leukostage batch`` was asked to do (CLI flags map one to one)."""

    inputs: list[str]
    out: str | Path
    format: str | None = None
    resume: bool = False
    workers: int | None = None  # local engine; default one per core
    threads_per_worker: int | None = None  # local engine: ONNX Runtime + OpenCV threads each; default cores / workers
    scheduler: str | None = None  # tcp://HOST:PORT of a Dask scheduler: use the cluster instead
    model: str | None = None
    preset: str = DEFAULT_PRESET
    chunk_size: int = DEFAULT_CHUNK_SIZE
    progress: bool | None = None  # None: a bar when stderr is a terminal


@dataclass
class RunTally:
    """Running counts for the summary: rows by outcome (``outcomes.Tally``), never the rows, so memory stays flat."""

    written: int = 0
    skipped: int = 0
    first_chunk_at: float | None = None  # perf_counter when the first chunk came back (start-up is before it)
    outcomes: Tally = field(default_factory=Tally)

    def add(self, row: dict) -> None:
        self.written += 1
        self.outcomes.add(row)


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _check_model(model: str | None) -> str:
    """The local engine's model path, loaded once here (one thread, then dropped) so a typo, a missing card or a
    corrupt file fails at once with one line, not as an error row for every input."""
    path = Path(model) if model else default_model_path()
    Predictor.load(path, threads=1)
    return str(path)


def _engine(cfg: BatchConfig):
    if cfg.scheduler:
        return DaskEngine(cfg.scheduler, cfg.model, cfg.preset)  # None: each worker's own installed model
    workers = cfg.workers or cpu_count()
    if workers < 1:
        raise BatchError(f"--workers must be at least 1, not {workers}")
    if cfg.threads_per_worker is not None and cfg.threads_per_worker < 1:
        raise BatchError(f"--threads-per-worker must be at least 1, not {cfg.threads_per_worker}")
    return LocalEngine(workers, _check_model(cfg.model), cfg.preset, cfg.threads_per_worker)


class _Progress:
    """A tqdm bar (files done, images/s, ETA) on a terminal; the total arrives from a second, parallel walk so the
    first results do not wait for a million-file listing."""

    def __init__(self, cfg: BatchConfig):
        enabled = sys.stderr.isatty() if cfg.progress is None else cfg.progress
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=None, unit="img", desc="batch", file=sys.stderr, dynamic_ncols=True)
            threading.Thread(target=self._count, args=(list(cfg.inputs),), daemon=True).start()

    def _count(self, inputs: list[str]) -> None:
        try:
            total = count_inputs(inputs)
        except OSError:
            return
        if self.bar is not None:
            self.bar.total = total
            self.bar.refresh()

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _with_resume(stream: Iterable[BatchInput | dict], done: DoneIndex, pre: list[dict]) -> Iterator[BatchInput]:
    """Mark inputs RESULTS already holds (the worker decides by content hash); error entries (a folder with no
    images) go to ``pre`` to be written by the client, unless already written."""
    for item in stream:
        if isinstance(item, dict):
            if not done.lookup(item["file"])[0]:
                pre.append({**item, "folder": ".", "sha256": None, "width": None, "height": None})
            continue
        found, sha = done.lookup(item.path) if len(done) else (False, None)
        yield item._replace(resumed=True, previous_sha256=sha) if found else item


def _write_chunk(rows: list[dict], writer, tally: RunTally) -> None:
    """Append a chunk's new rows (one write, flushed) and count them; resume markers are counted, not written."""
    if tally.first_chunk_at is None and rows:
        tally.first_chunk_at = time.perf_counter()
    fresh = [r for r in rows if not r.get(SKIPPED)]
    if fresh:
        writer.write(fresh)
    for r in fresh:
        tally.add(r)
    tally.skipped += len(rows) - len(fresh)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def run_batch(cfg: BatchConfig) -> dict:
    """Score every input into ``cfg.out``, streaming; returns the summary (also when interrupted).

    Raises:
        BatchError: the output exists without ``resume``, a bad format or worker count, a cluster out of reach.
        FileNotFoundError: the model, its card, or an ``@list`` file, is missing.
        ModelLoadError: (a ValueError) the model file or its card cannot be loaded.
    """
    out = Path(cfg.out)
    fmt = format_for(out, cfg.format)
    if cfg.chunk_size < 1:
        raise BatchError(f"--chunk-size must be at least 1, not {cfg.chunk_size}")
    engine = _engine(cfg)
    done = DoneIndex.read(out, fmt) if cfg.resume else DoneIndex(iter(()))
    writer = open_writer(out, fmt, cfg.resume)
    tally, progress, pre = RunTally(), _Progress(cfg), []
    interrupted, results = False, None
    in_main = threading.current_thread() is threading.main_thread()
    old_term = signal.signal(signal.SIGTERM, _raise_interrupt) if in_main else None  # SIGTERM stops like Ctrl-C
    t0 = time.perf_counter()
    try:
        chunks = _chunks(_with_resume(iter_inputs(cfg.inputs), done, pre), cfg.chunk_size)
        results = engine.map_chunks(chunks)
        for rows in results:
            rows, pre[:] = pre + rows, []  # error entries ride along with the next chunk
            _write_chunk(rows, writer, tally)
            progress.update(len(rows))
        _write_chunk(pre, writer, tally)  # error entries with no chunk after them
    except KeyboardInterrupt:
        interrupted = True
    except BrokenProcessPool as exc:
        raise BatchError(f"a worker process died ({exc}); rows so far are in {out}: rerun with --resume") from exc
    finally:
        if results is not None:
            results.close()  # stops the workers now, not at garbage collection
        writer.close()
        progress.close()
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    return {**summary(tally, t0, interrupted, out, fmt, engine.describe()), "repairs": writer.repairs}


def summary(tally: RunTally, t0: float, interrupted: bool, out: Path, fmt: str, engine: dict) -> dict:
    """The run in numbers: what was written, per label (those that occurred) and per refusal code, and how fast
    (``t0``: the start)."""
    seconds = time.perf_counter() - t0
    counted = tally.outcomes
    labels = {**counted.labels, UNCERTAIN_KEY: counted.n_uncertain}
    return {
        "out": str(out),
        "format": fmt,
        "interrupted": interrupted,
        "rows_written": tally.written,
        "skipped_already_done": tally.skipped,
        "valid": counted.n_valid,
        "refused": counted.n_refused,
        "labels": {k: v for k, v in sorted(labels.items()) if v},
        "uncertain_by_reason": {k: v for k, v in sorted(counted.uncertain.items()) if v},
        "refused_by_code": dict(sorted(counted.refused.items())),
        "seconds": round(seconds, 3),
        "seconds_to_first_chunk": round(tally.first_chunk_at - t0, 3) if tally.first_chunk_at else None,
        "images_per_second": round(tally.written / seconds, 2) if seconds > 0 else None,
        "peak_rss_mb_client": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        **engine,
    }


def format_summary(s: dict) -> str:
    """The summary for people (stderr)."""
    lines = [
        f"{'INTERRUPTED: ' if s['interrupted'] else ''}{s['rows_written']} rows written to {s['out']} "
        f"({s['format']}) in {s['seconds']:.1f} s, {s['images_per_second'] or 0:.1f} images/s"
        + (f"; {s['skipped_already_done']} already done, skipped" if s["skipped_already_done"] else "")
    ]
    if s["labels"]:
        lines.append(
            "labels: "
            + ", ".join(f"{k} {v}" for k, v in s["labels"].items())
            + (
                f" (uncertain: {', '.join(f'{k} {v}' for k, v in s['uncertain_by_reason'].items())})"
                if s["uncertain_by_reason"]
                else ""
            )
        )
    if s["refused_by_code"]:
        lines.append("refused: " + ", ".join(f"{k} {v}" for k, v in s["refused_by_code"].items()))
    lines += [f"resume: {note}" for note in s.get("repairs", [])]
    if s["interrupted"]:
        lines.append(f"rows up to the last completed chunk are in {s['out']}; rerun with --resume to finish")
    return "\n".join(lines)
