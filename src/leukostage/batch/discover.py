"""Lazy input discovery: files, folders (recursive) and ``@list.txt`` files become a stream of inputs.

Shared by ``leukostage batch`` and ``predict``/``validate``/``explain`` DIR, so every verb sees the same files.
Folders are walked by :func:`leukostage.imaging.iter_image_files` (as training data and calibration are): depth
first, one directory listing at a time, so the first inputs are ready long before a million-file tree has been
listed; memory holds one listing per open level, never the whole tree.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from ..imaging import IMAGE_SUFFIXES, iter_image_files

LIST_PREFIX = "@"  # "@paths.txt": a text file with one input per line


class BatchInput(NamedTuple):
    """One input: the path as it will be reported and its folder relative to the input root ("." at the root);
    with ``--resume``, whether RESULTS already has a row for this path and the content hash that row was made from
    (the worker that reads the file compares, so the client needs no access to the files)."""

    path: str
    folder: str = "."
    resumed: bool = False
    previous_sha256: str | None = None


def _list_file_items(spec: str) -> Iterator[str]:
    """Paths in an ``@list.txt`` file: one per line; blank lines and ``#`` comments skipped; relative paths are
    relative to the current directory, as if typed on the command line."""
    path = spec[len(LIST_PREFIX) :]
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if line and not line.startswith("#"):
                    yield line
    except OSError as exc:
        raise FileNotFoundError(f"cannot read the input list {path}: {exc.strerror or exc}") from exc


def _expand_items(items: Iterable[str]) -> Iterator[str]:
    for item in items:
        if item.startswith(LIST_PREFIX) and len(item) > 1:
            yield from _list_file_items(item)
        else:
            yield item


def iter_inputs(items: Iterable[str]) -> Iterator[BatchInput | dict]:
    """Every input named by ``items``, lazily.

    A file (whatever its extension, existing or not) is one input; a folder gives its image files at any depth
    (``folder`` = their directory relative to it), or an error entry (a ``valid: false`` dict) when it holds none,
    so nothing named on the command line disappears silently.

    Raises:
        FileNotFoundError: an ``@list.txt`` file cannot be read.
    """
    for item in _expand_items(items):
        if not os.path.isdir(item):
            yield BatchInput(item, ".")
            continue
        found = False
        for path, folder in iter_image_files(item):
            found = True
            yield BatchInput(path, folder)
        if not found:
            yield {
                "file": item,
                "valid": False,
                "code": "unreadable",
                "reason": f"{item} is a folder with no images ({', '.join(IMAGE_SUFFIXES)}) at any depth",
            }


def expand_inputs(items: list[str]) -> list[str | dict]:
    """The eager form the one-shot verbs (predict, validate, explain) use: paths, plus error entries for folders
    with no images."""
    return [x if isinstance(x, dict) else x.path for x in iter_inputs(items)]


def count_inputs(items: Iterable[str]) -> int:
    """How many inputs ``iter_inputs`` will give (a second walk, run beside the work for the progress bar's ETA)."""
    return sum(1 for _ in iter_inputs(items))
