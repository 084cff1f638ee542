"""Streaming result writers (jsonl, csv, parquet) and the reader that tells ``--resume`` what is already done.

Every writer appends one chunk of rows at a time and flushes it, so a run killed at any moment leaves a valid file up
to the last completed chunk, at worst followed by one torn row: ``--resume`` never counts it as done (only rows that
parse completely count) and cuts it off before appending, so its input is scored again. Rows are
written generically: JSONL keeps each result dict whole (nested ``probabilities``, ``domain``, ``checks``); CSV and
parquet flatten one level (``probabilities_normal``, ``domain_score``, ``in_domain``) into fixed columns and keep
anything else as JSON in ``extra``, so a field a newer model adds is never dropped.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

from ..classes import CLASS_KEYS, probability_column

FORMATS = ("jsonl", "csv", "parquet")
SUFFIX_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}
PARQUET_ROWS_PER_PART = 8192  # parquet: rows per part file (chunks wait in a JSONL journal until a part is full)
PARQUET_JOURNAL = "_pending.jsonl"  # "_" prefix: parquet readers skip it
FLAT_COLUMNS: tuple[tuple[str, str], ...] = (  # (column, type) for csv and parquet, in order
    ("file", "string"),
    ("folder", "string"),
    ("valid", "bool"),
    ("code", "string"),
    ("reason", "string"),
    ("label", "string"),
    ("display_label", "string"),
    ("dataset_label", "string"),
    ("confidence", "float64"),
    ("top_class", "string"),
    *((probability_column(k), "float64") for k in CLASS_KEYS),
    ("uncertain_reason", "string"),
    ("domain_score", "float64"),
    ("domain_threshold", "float64"),
    ("in_domain", "bool"),
    ("sha256", "string"),
    ("width", "int64"),
    ("height", "int64"),
    ("extra", "string"),
)
COLUMN_NAMES = tuple(name for name, _ in FLAT_COLUMNS)


class BatchError(ValueError):
    """A batch that cannot start or go on; the message says what to change."""


def format_for(out: str | Path, fmt: str | None) -> str:
    """``--format``, or the one the output's suffix names.

    Raises:
        BatchError: neither says which format.
    """
    if fmt:
        if fmt not in FORMATS:
            raise BatchError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
        return fmt
    guessed = SUFFIX_FORMATS.get(Path(out).suffix.lower())
    if guessed is None:
        raise BatchError(
            f"cannot tell the format of {out} from its suffix; pass --format {'|'.join(FORMATS)} "
            f"or name it {' / '.join(SUFFIX_FORMATS)}"
        )
    return guessed


# --- flattening (csv, parquet) ----------------------------------------------------------------------------------------
def _flat_name(parent: str, child: str) -> str:
    """domain.score -> domain_score, domain.in_domain -> in_domain (no stutter), probabilities.mid ->
    probabilities_mid."""
    return child if parent in child else f"{parent}_{child}"


def flatten(row: dict) -> dict:
    """One level of nesting into the fixed columns; whatever has no column goes, as JSON, into ``extra``."""
    flat: dict = {}
    extra: dict = {}
    for key, value in row.items():
        if isinstance(value, dict) and all(not isinstance(v, (dict, list)) for v in value.values()):
            for sub, v in value.items():
                name = _flat_name(key, sub)
                if name in COLUMN_NAMES:
                    flat[name] = v
                else:
                    extra.setdefault(key, {})[sub] = v
        elif key in COLUMN_NAMES and not isinstance(value, (dict, list)):
            flat[key] = value
        else:
            extra[key] = value
    flat["extra"] = json.dumps(extra, separators=(",", ":")) if extra else None
    return flat


# --- writers ----------------------------------------------------------------------------------------------------------
class RowWriter(Protocol):
    repairs: list[str]  # what opening it mended (a torn last row cut, a damaged part set aside), for the summary

    def write(self, rows: list[dict]) -> None: ...
    def close(self) -> None: ...


def repair_tail(path: Path) -> int:
    """Cut a torn last line (a run killed mid-write) so appended rows start on a line of their own (JSONL: no JSON
    line holds a raw newline). Returns the number of bytes cut."""
    if not path.is_file() or path.stat().st_size == 0:
        return 0
    with open(path, "rb+") as fh:
        fh.seek(-1, os.SEEK_END)
        if fh.read(1) == b"\n":
            return 0
        size = fh.seek(0, os.SEEK_END)
        pos = size
        while pos > 0:  # walk back to the last newline, a block at a time
            step = min(65536, pos)
            fh.seek(pos - step)
            block = fh.read(step)
            nl = block.rfind(b"\n")
            if nl >= 0:
                fh.truncate(pos - step + nl + 1)
                return size - (pos - step + nl + 1)
            pos -= step
        fh.truncate(0)
        return size


def repair_csv_tail(path: Path) -> int:
    """Cut whatever follows the last complete CSV record (see :func:`_csv_records`): a quoted cell may hold a newline
    (a file name can), so the last newline is not always a row's end. Returns the number of bytes cut."""
    if not path.is_file():
        return 0
    size = path.stat().st_size
    end = max((record_end for _fields, record_end in _csv_records(path)), default=0)
    if end < size:
        with open(path, "rb+") as fh:
            fh.truncate(end)
    return size - end


class JsonlWriter:
    """One JSON object per line, nested fields kept; each chunk is one write, then flushed."""

    def __init__(self, path: Path):
        cut = repair_tail(path)
        self.repairs = [f"cut a torn last row ({cut} bytes) from {path}"] if cut else []
        self.fh = open(path, "a", encoding="utf-8")

    def write(self, rows: list[dict]) -> None:
        self.fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


class CsvWriter:
    """Fixed columns (``COLUMN_NAMES``), header once; each chunk written then flushed."""

    def __init__(self, path: Path):
        cut = repair_csv_tail(path)  # also checks the header (BatchError for another version's columns)
        self.repairs = [f"cut a torn last row ({cut} bytes) from {path}"] if cut else []
        fresh = not path.is_file() or path.stat().st_size == 0
        self.fh = open(path, "a", newline="", encoding="utf-8")
        self.writer = csv.DictWriter(self.fh, COLUMN_NAMES)
        if fresh:
            self.writer.writeheader()
            self.fh.flush()

    def write(self, rows: list[dict]) -> None:
        self.writer.writerows(flatten(r) for r in rows)
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


def _arrow_schema():
    import pyarrow as pa

    types = {"string": pa.string(), "bool": pa.bool_(), "float64": pa.float64(), "int64": pa.int64()}
    return pa.schema([(name, types[t]) for name, t in FLAT_COLUMNS])


def _write_part(folder: Path, rows: list[dict]) -> None:
    """A complete parquet file, written under a hidden name then renamed: readers never see half a part."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    flat = [flatten(r) for r in rows]
    table = pa.Table.from_pylist([{c: f.get(c) for c in COLUMN_NAMES} for f in flat], schema=_arrow_schema())
    name = f"part-{time.time_ns():020d}-{os.getpid()}"  # names sort in writing order: the last row wins on resume
    tmp = folder / f".{name}.tmp"
    pq.write_table(table, tmp)
    with open(tmp, "rb") as fh:  # on disk before the journal is emptied: a power cut keeps one of the two
        os.fsync(fh.fileno())
    os.replace(tmp, folder / f"{name}.parquet")
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename too
    finally:
        os.close(dir_fd)


class ParquetWriter:
    """A parquet dataset folder: complete part files of ``PARQUET_ROWS_PER_PART`` rows; rows of a part not yet full
    wait in a JSONL journal (flushed per chunk), so a killed run loses no completed chunk either."""

    def __init__(self, folder: Path, rows_per_part: int = PARQUET_ROWS_PER_PART):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.rows_per_part = rows_per_part
        self.journal_path = folder / PARQUET_JOURNAL
        for tmp in folder.glob(".part-*.tmp"):  # a part whose writing was killed: its rows are still in the journal
            tmp.unlink()
        self.repairs = [
            f"set aside the unreadable part file {part.name} as {_set_aside(part).name}; its inputs are scored again"
            for part in _damaged_parts(folder)
        ]
        self.pending = self._unwritten(folder, [json.loads(line) for line in _journal_lines(self.journal_path)])
        cut = repair_tail(self.journal_path)
        self.repairs += [f"cut a torn last row ({cut} bytes) from {self.journal_path}"] if cut else []
        self.journal = open(self.journal_path, "a", encoding="utf-8")

    @staticmethod
    def _unwritten(folder: Path, journal: list[dict]) -> list[dict]:
        """Journal rows not yet in a part (a kill between writing a part and emptying the journal leaves both)."""
        if not journal or not any(folder.glob("*.parquet")):
            return journal
        parts = DoneIndex(_parquet_pairs(folder))
        return [r for r in journal if parts.lookup(r["file"]) != (True, r.get("sha256"))]

    def write(self, rows: list[dict]) -> None:
        self.journal.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        self.journal.flush()
        self.pending.extend(rows)
        if len(self.pending) >= self.rows_per_part:
            self._flush_part()

    def _flush_part(self) -> None:
        if self.pending:
            _write_part(self.folder, self.pending)
        self.pending = []
        self.journal.truncate(0)  # rows now in a part; a kill between the two is deduplicated on resume
        self.journal.seek(0)

    def close(self) -> None:
        self._flush_part()
        self.journal.close()
        self.journal_path.unlink(missing_ok=True)


def open_writer(out: Path, fmt: str, resume: bool) -> RowWriter:
    """A writer that appends to ``out``.

    Raises:
        BatchError: ``out`` exists and ``resume`` is off (nothing is overwritten), or it cannot hold this format.
    """
    exists = any(out.iterdir()) if out.is_dir() else (out.exists() and out.stat().st_size > 0)
    if exists and not resume:
        raise BatchError(
            f"{out} already exists; pass --resume to skip what it holds and add the rest, or choose another --out"
        )
    if fmt == "parquet":
        if out.exists() and not out.is_dir():
            raise BatchError(f"parquet output is a folder of part files, and {out} is a file; choose another --out")
        return ParquetWriter(out)
    if out.is_dir():
        raise BatchError(f"{out} is a folder; {fmt} output is one file")
    out.parent.mkdir(parents=True, exist_ok=True)
    return JsonlWriter(out) if fmt == "jsonl" else CsvWriter(out)


# --- what is done (for --resume) --------------------------------------------------------------------------------------
def _journal_lines(path: Path) -> Iterator[str]:
    """Complete lines of a JSONL file (a torn last line after a kill is not a row). Read as bytes and decoded line by
    line: a cut can fall inside a multi-byte character of the torn line, which then is never decoded."""
    if not path.is_file():
        return
    with open(path, "rb") as fh:
        for line in fh:
            if line.endswith(b"\n") and line.strip():
                yield line.decode("utf-8")


_SHA256_CHARS = frozenset("0123456789abcdef")
_FILE_COLUMN, _SHA256_COLUMN = COLUMN_NAMES.index("file"), COLUMN_NAMES.index("sha256")


def _complete_csv_record(fields: list[str]) -> bool:
    """A data row as :class:`CsvWriter` writes it: every column, and a ``sha256`` cell empty or a whole digest."""
    sha = fields[_SHA256_COLUMN] if len(fields) == len(COLUMN_NAMES) else None
    return bool(fields[0]) and sha is not None and (sha == "" or (len(sha) == 64 and set(sha) <= _SHA256_CHARS))


def _csv_records(path: Path) -> Iterator[tuple[list[str], int]]:
    """(fields, byte offset where the record ends) of each complete record of a results CSV, header included.

    A run killed mid-write leaves at most one torn record, at the end: one without its final newline, cut inside a
    quoted cell (``strict`` parsing stops there), or short of columns or of its ``sha256``. Iteration stops before
    it. Anything damaged before the last record is not a torn write, and raises rather than being cut away.

    Raises:
        BatchError: the header is another version's, or a record before the last one is damaged.
    """
    with open(path, "rb") as fh:
        state = {"end": 0, "complete": True}

        def lines() -> Iterator[str]:
            for raw in fh:
                state["end"] += len(raw)
                state["complete"] = raw.endswith(b"\n")
                yield raw.decode("utf-8", "surrogateescape")  # a character cut in two stays out of the records

        reader = csv.reader(lines(), strict=True)
        first = True
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error:  # end of the file inside a quoted cell: the torn last record
                fields = None
            ok = fields is not None and state["complete"]
            if first:
                if ok and tuple(fields) != COLUMN_NAMES:
                    raise BatchError(f"{path} has other columns than this version writes; resume into a new file")
            elif ok:
                ok = _complete_csv_record(fields)
            if not ok:
                if fh.read(1):  # more after it: damage in the middle, not a torn end
                    raise BatchError(
                        f"{path} is damaged before its last row (record ending at byte {state['end']}); "
                        "resume into a new file"
                    )
                return
            first = False
            yield fields, state["end"]


def _done_pairs(out: Path, fmt: str) -> Iterator[tuple[str, str | None]]:
    """(file, sha256) of every complete row already written (never a torn last row)."""
    if fmt == "jsonl":
        for line in _journal_lines(out):
            row = json.loads(line)
            yield row["file"], row.get("sha256")
    elif fmt == "csv":
        records = _csv_records(out)
        next(records, None)  # the header
        for fields, _end in records:
            yield fields[_FILE_COLUMN], fields[_SHA256_COLUMN] or None
    else:
        yield from _parquet_pairs(out)
        for line in _journal_lines(out / PARQUET_JOURNAL):
            row = json.loads(line)
            yield row["file"], row.get("sha256")


def _parquet_pairs(folder: Path) -> Iterator[tuple[str, str | None]]:
    """(file, sha256) of every row in the folder's readable part files (an unreadable one is set aside by
    :class:`ParquetWriter` when the run resumes, and its inputs scored again)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for part in sorted(folder.glob("*.parquet")):  # one part at a time: memory stays at one part's two columns
        try:
            table = pq.read_table(part, columns=["file", "sha256"])
        except (OSError, pa.ArrowException):
            continue
        yield from zip(table.column("file").to_pylist(), table.column("sha256").to_pylist())


def _damaged_parts(folder: Path) -> list[Path]:
    """Part files parquet cannot read (only a power cut before this version synced parts, or a damaged disk)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    damaged = []
    for part in sorted(folder.glob("*.parquet")):
        try:
            pq.read_metadata(part)
        except (OSError, pa.ArrowException):
            damaged.append(part)
    return damaged


def _set_aside(part: Path) -> Path:
    """Rename a damaged part with a "_" prefix, which parquet readers skip; kept for whoever wants to look."""
    target = part.with_name(f"_damaged-{part.name}")
    os.replace(part, target)
    return target


def _path_key(path: str) -> int:
    return int.from_bytes(hashlib.blake2b(path.encode("utf-8", "surrogateescape"), digest_size=8).digest(), "little")


class DoneIndex:
    """Files already in RESULTS, with the content hash they were scored with. Compact (40 bytes a row in numpy
    arrays, not Python dicts), so resuming over millions of rows does not grow memory much."""

    def __init__(self, pairs: Iterable[tuple[str, str | None]]):
        keys: list[int] = []
        hashes = bytearray()
        for path, sha in pairs:
            keys.append(_path_key(path))
            hashes += bytes.fromhex(sha) if sha else bytes(32)  # 32 zero bytes: a row without content (unreadable)
        order = np.argsort(np.array(keys, np.uint64), kind="stable")
        self.keys = np.array(keys, np.uint64)[order]
        self.hashes = np.frombuffer(bytes(hashes), np.uint8).reshape(-1, 32)[order]

    def __len__(self) -> int:
        return len(self.keys)

    def lookup(self, path: str) -> tuple[bool, str | None]:
        """(already done, its sha256 or None when that row had no readable content); the last row wins."""
        key = np.uint64(_path_key(path))
        i = int(np.searchsorted(self.keys, key, side="right")) - 1
        if i < 0 or self.keys[i] != key:
            return False, None
        digest = self.hashes[i].tobytes()
        return True, (digest.hex() if any(digest) else None)

    @classmethod
    def read(cls, out: Path, fmt: str) -> DoneIndex:
        exists = out.is_dir() if fmt == "parquet" else out.is_file()
        return cls(_done_pairs(out, fmt) if exists else iter(()))
