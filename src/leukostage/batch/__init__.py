"""Batch scoring of image archives: lazy discovery, chunks scored by local worker processes or a Dask cluster,
streaming resumable output (jsonl, csv, parquet). The serving path: no torch here.

    from leukostage.batch import BatchConfig, run_batch
    summary = run_batch(BatchConfig(["archive/"], out="results.jsonl", workers=2))
"""

from __future__ import annotations

from .discover import BatchInput, expand_inputs, iter_inputs
from .run import DEFAULT_CHUNK_SIZE, BatchConfig, format_summary, run_batch
from .writers import FORMATS, BatchError

__all__ = [
    "BatchConfig",
    "BatchError",
    "BatchInput",
    "DEFAULT_CHUNK_SIZE",
    "FORMATS",
    "expand_inputs",
    "format_summary",
    "iter_inputs",
    "run_batch",
]
