"""Scoring a chunk of inputs into rows: the one function both engines run (local processes and Dask workers), so the
two cannot disagree. Each process loads the model once and keeps it for every chunk it scores.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from ..imaging import ImageError, read_bytes, read_header
from ..outcomes import uncertain_reason
from ..predict import Predictor, analyse_bytes, default_model_path
from ..validate import DEFAULT_PRESET
from .discover import BatchInput

SKIPPED = "skipped"  # key of the resume marker
_PREDICTORS: dict[str, Predictor] = {}  # per process: model path -> loaded model


def load_predictor(model: str | None = None, threads: int | None = None) -> Predictor:
    """The process's model, loaded on first use. ``threads``: ONNX Runtime threads (cores / workers on this host).

    Raises:
        FileNotFoundError: the model (or its card) is not at that path on this machine.
    """
    path = str(model or default_model_path())
    if path not in _PREDICTORS:
        _PREDICTORS[path] = Predictor.load(path, threads=threads)
    return _PREDICTORS[path]


def image_size(data: bytes, rgb) -> tuple[int | None, int | None]:
    """Width and height as decoded (EXIF orientation applied), else as the header declares, else unknown."""
    if rgb is not None:
        return int(rgb.shape[1]), int(rgb.shape[0])
    try:
        header = read_header(data)
    except ImageError:
        return None, None
    return header.width, header.height


def batch_fields(result: dict, inp: BatchInput, sha256: str | None, size: tuple[int | None, int | None]) -> dict:
    """A prediction result (passed through whole, whatever fields the model adds) plus the batch fields."""
    row = {**result, "folder": inp.folder, "sha256": sha256, "width": size[0], "height": size[1]}
    if row.get("valid"):  # a model before issue 9 gives no reason: its only uncertain outcome is low confidence
        row.setdefault("uncertain_reason", uncertain_reason(row))
    return row


def skipped(inp: BatchInput) -> dict:
    """The marker a worker returns for an input RESULTS already holds unchanged (not written again)."""
    return {"file": inp.path, SKIPPED: True}


def score_input(inp: BatchInput, predictor: Callable[[], Predictor], preset: str = DEFAULT_PRESET) -> dict:
    """One input's row, or the ``skipped`` marker when ``--resume`` finds the same content already scored.

    Never raises for an input: unreadable, refused and even unexpected failures become coded rows. ``predictor``
    is called only when there is something to infer, so a resumed chunk loads no model.
    """
    try:
        data = read_bytes(inp.path)
    except ImageError as exc:
        if inp.resumed and inp.previous_sha256 is None:
            return skipped(inp)
        return batch_fields(
            {"file": inp.path, "valid": False, "code": exc.code, "reason": exc.message}, inp, None, (None, None)
        )
    digest = hashlib.sha256(data).hexdigest()
    if inp.resumed and inp.previous_sha256 == digest:
        return skipped(inp)
    try:
        analysis = analyse_bytes(data, inp.path, predictor(), preset)
    except Exception as exc:  # noqa: BLE001 - one bad input must not stop an archive of a million
        result = {
            "file": inp.path,
            "valid": False,
            "code": "internal_error",
            "reason": f"unexpected {type(exc).__name__} while analysing this file: {exc}",
        }
        return batch_fields(result, inp, digest, image_size(data, None))
    return batch_fields(analysis.result, inp, digest, image_size(data, analysis.rgb))


def score_chunk(
    inputs: list[BatchInput], model: str | None = None, preset: str = DEFAULT_PRESET, threads: int | None = None
) -> list[dict]:
    """Rows for a chunk, in input order. Runs in a worker process (local pool or Dask)."""

    def predictor() -> Predictor:
        return load_predictor(model, threads)

    return [score_input(BatchInput(*inp), predictor, preset) for inp in inputs]
