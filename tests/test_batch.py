"""Batch scoring (issue 11) on real images: discovery, rows equal to ``predict --json``, formats, flat memory, resume
after SIGKILL, a hostile archive, and a real Dask LocalCluster (2 worker processes, one killed mid-run)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import pwd
import signal
import struct
import subprocess
import sys
import tempfile
import time
import tracemalloc
import zlib
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from leukostage.batch import BatchConfig, BatchError, BatchInput, expand_inputs, iter_inputs, run_batch
from leukostage.batch.score import score_input
from leukostage.batch.writers import (
    COLUMN_NAMES,
    PARQUET_JOURNAL,
    PARQUET_ROWS_PER_PART,
    DoneIndex,
    ParquetWriter,
    flatten,
    open_writer,
    repair_tail,
)
from leukostage.classes import CLASSES

BATCH_FIELDS = {"folder", "sha256", "width", "height", "uncertain_reason"}


def run_cli(*args, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "leukostage.cli", *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def read_jsonl(path: Path) -> list[dict]:
    """Complete lines only (a torn last line after SIGKILL is not a row)."""
    text = path.read_text() if path.exists() else ""
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n") and line.strip()]


def png_bytes(width: int, height: int, rows: int = 1) -> bytes:
    """A PNG whose header declares width x height, with only ``rows`` rows of (zero) pixel data."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    pixels = zlib.compress((b"\x00" + b"\x00" * (width * 3)) * rows)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", pixels)
        + chunk(b"IEND", b"")
    )


# --- fixtures ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def table2(tmp_path_factory, taleqani) -> Path:
    """A Table 2 layout (normal/, cancerous/early/ ...) of links to 2 real images per class."""
    root = tmp_path_factory.mktemp("table2")
    for c in CLASSES:
        (root / c.folder).mkdir(parents=True)
        for src in sorted((taleqani / c.folder).glob("*.jpg"))[:2]:
            (root / c.folder / src.name).symlink_to(src.resolve())
    return root


def make_tree(root: Path, n: int, real: list[Path], every: int = 25) -> Path:
    """``n`` links in folders of 100: every ``every``-th to a real JPEG (inferred), the rest to one real 8x8 PNG
    (refused by the header check), so a 10,000-input run stays fast on two cores."""
    tiny = root / "tiny.png"
    tiny.write_bytes(png_bytes(8, 8, rows=8))
    tree = root / "tree"
    for i in range(n):
        folder = tree / f"sample{i // 100:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        target = real[(i // every) % len(real)] if i % every == 0 else tiny
        (folder / f"field{i:05d}{target.suffix}").symlink_to(target)
    return tree


@pytest.fixture(scope="module")
def real_files(sample_smears) -> list[Path]:
    return [sample_smears[k].resolve() for k in ("normal", "early", "mid", "advanced")]


@pytest.fixture(scope="module")
def tree_2k(tmp_path_factory, real_files) -> Path:
    return make_tree(tmp_path_factory.mktemp("t2k"), 2_000, real_files)


@pytest.fixture(scope="module")
def tree_10k(tmp_path_factory, real_files) -> Path:
    return make_tree(tmp_path_factory.mktemp("t10k"), 10_000, real_files)


# --- discovery --------------------------------------------------------------------------------------------------------
def test_discovery_recursive_hidden_skipped_links_once_and_lists(tmp_path, real_files):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "x.jpg").write_bytes(b"")
    (tmp_path / "a" / "y.PNG").write_bytes(b"")
    (tmp_path / "a" / "readme.txt").write_text("not an input")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "z.jpg").write_bytes(b"")
    (tmp_path / "a" / ".z.jpg").write_bytes(b"")
    (tmp_path / "a" / "b" / "loop").symlink_to(tmp_path / "a")  # a cycle: walked once
    (tmp_path / "empty").mkdir()
    got = list(iter_inputs([str(tmp_path / "a")]))
    assert [(i.path, i.folder) for i in got] == [
        (str(tmp_path / "a" / "b" / "x.jpg"), "b"),
        (str(tmp_path / "a" / "y.PNG"), "."),
    ]
    listing = tmp_path / "list.txt"
    listing.write_text(f"# a comment\n{tmp_path / 'a' / 'y.PNG'}\n\n{tmp_path / 'empty'}\n{tmp_path / 'nope.jpg'}\n")
    items = expand_inputs([f"@{listing}"])
    assert items[0] == str(tmp_path / "a" / "y.PNG")
    assert items[1]["code"] == "unreadable" and "no images" in items[1]["reason"]
    assert items[2] == str(tmp_path / "nope.jpg")  # named explicitly: kept, reading will report it
    with pytest.raises(FileNotFoundError, match="input list"):
        list(iter_inputs([f"@{tmp_path / 'missing.txt'}"]))


def test_discovery_is_lazy(tmp_path):
    """The first input comes before later folders are listed: a file added after it is still found."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    (tmp_path / "a" / "1.jpg").write_bytes(b"")
    stream = iter_inputs([str(tmp_path)])
    assert next(stream).path.endswith("1.jpg")
    (tmp_path / "b" / "2.jpg").write_bytes(b"")
    assert [i.path for i in stream] == [str(tmp_path / "b" / "2.jpg")]


def test_predict_descends_into_table2_layout(table2):
    proc = run_cli("predict", "--json", table2)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    assert len(results) == 2 * len(CLASSES)
    assert {Path(r["file"]).parent.relative_to(table2).as_posix() for r in results} == {c.folder for c in CLASSES}


# --- rows -------------------------------------------------------------------------------------------------------------
def test_table2_rows_equal_predict_json(table2, tmp_path):
    out = tmp_path / "r.jsonl"
    proc = run_cli(
        "batch", table2, "--out", out, "--workers", "2", "--chunk-size", "3", "--summary-json", tmp_path / "s.json"
    )
    assert proc.returncode == 0, proc.stderr  # every row valid: exit 0 (1 only when some input was refused)
    rows = {r["file"]: r for r in read_jsonl(out)}
    reference = json.loads(run_cli("predict", "--json", table2).stdout)
    assert len(rows) == len(reference) == 2 * len(CLASSES)
    assert all(r["valid"] for r in reference)  # real images, not links gone wrong
    for ref in reference:
        row = rows[ref["file"]]
        assert {k: row[k] for k in ref} == ref  # every field predict gives, identical
        assert set(row) - set(ref) <= BATCH_FIELDS
        assert row["folder"] == Path(ref["file"]).parent.relative_to(table2).as_posix()
        assert (row["width"], row["height"]) == (224, 224) and len(row["sha256"]) == 64
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["rows_written"] == 8 and summary["refused"] == 0
    folder_key = {c.folder: c.key for c in CLASSES}
    given = [(folder_key[rows[r["file"]]["folder"]], r["label"]) for r in reference]
    assert all(label in (key, "uncertain") for key, label in given)  # its own class, or none: never another
    assert sum(key == label for key, label in given) >= 6  # training-hospital fields: most get their class
    assert summary["labels"] == {k: n for k, n in Counter(label for _, label in given).items()}
    assert "rows written" in proc.stderr and "not a diagnosis" in proc.stderr


def test_a_cell_from_another_laboratory_is_an_uncertain_row_with_its_reason(foreign_cell, sample_smears, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "foreign.jpg").symlink_to(foreign_cell)
    (tmp_path / "in" / "ours.jpg").symlink_to(sample_smears["early"].resolve())
    proc = run_cli(
        "batch", tmp_path / "in", "--out", tmp_path / "r.csv", "--workers", "1", "--summary-json", tmp_path / "s.json"
    )
    assert proc.returncode == 0, proc.stderr  # uncertain is an answer, not a refusal
    with open(tmp_path / "r.csv", newline="") as fh:
        rows = {Path(r["file"]).name: r for r in csv.DictReader(fh)}
    foreign = rows["foreign.jpg"]
    assert (foreign["valid"], foreign["label"], foreign["uncertain_reason"], foreign["in_domain"]) == (
        "True",
        "uncertain",
        "outside_training_domain",
        "False",
    )
    assert float(foreign["domain_score"]) > float(foreign["domain_threshold"]) and foreign["dataset_label"] == ""
    assert (rows["ours.jpg"]["label"], rows["ours.jpg"]["in_domain"]) == ("early", "True")
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["labels"] == {"early": 1, "uncertain": 1}
    assert summary["uncertain_by_reason"] == {"outside_training_domain": 1}
    assert "(uncertain: outside_training_domain 1)" in proc.stderr


def test_csv_and_parquet_hold_the_same_rows(table2, tmp_path):
    assert run_cli("batch", table2, "--out", tmp_path / "r.jsonl", "--workers", "1").returncode == 0
    rows = {r["file"]: flatten(r) for r in read_jsonl(tmp_path / "r.jsonl")}
    assert run_cli("batch", table2, "--out", tmp_path / "r.csv", "--workers", "1").returncode == 0
    with open(tmp_path / "r.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == COLUMN_NAMES
        from_csv = {r["file"]: r for r in reader}
    assert run_cli("batch", table2, "--out", tmp_path / "r.parquet", "--workers", "1").returncode == 0
    from_parquet = {r["file"]: r for r in pq.read_table(tmp_path / "r.parquet").to_pylist()}
    assert set(from_csv) == set(from_parquet) == set(rows)
    for f, row in rows.items():
        assert from_parquet[f] == {c: row.get(c) for c in COLUMN_NAMES}
        assert from_csv[f]["label"] == row["label"] and float(from_csv[f]["confidence"]) == row["confidence"]
        assert json.loads(from_parquet[f]["extra"])["checks"] == json.loads(row["extra"])["checks"]


def test_flatten_is_generic():
    """Issue 9's fields flow through: domain flattened, unknown fields kept in ``extra``."""
    row = {
        "file": "x.jpg",
        "valid": True,
        "label": "uncertain",
        "uncertain_reason": "outside_training_domain",
        "probabilities": {"normal": 0.1, "early": 0.2, "mid": 0.3, "advanced": 0.4},
        "domain": {"score": 0.2, "threshold": 0.5, "in_domain": False},
        "new_field": [1, 2],
    }
    flat = flatten(row)
    assert (flat["domain_score"], flat["domain_threshold"], flat["in_domain"]) == (0.2, 0.5, False)
    assert flat["probabilities_advanced"] == 0.4 and flat["uncertain_reason"] == "outside_training_domain"
    assert json.loads(flat["extra"]) == {"new_field": [1, 2]}
    assert set(flat) <= set(COLUMN_NAMES)


# --- streaming, memory, resume ----------------------------------------------------------------------------------------
def _client_peak_bytes(tree: Path, out: Path) -> tuple[int, dict]:
    tracemalloc.start()
    try:
        summary = run_batch(BatchConfig([str(tree)], out, workers=2, chunk_size=50, progress=False))
        return tracemalloc.get_traced_memory()[1], summary
    finally:
        tracemalloc.stop()


def test_10k_inputs_flat_memory_then_resume_does_no_work(tree_2k, tree_10k, tmp_path):
    peak_2k, _ = _client_peak_bytes(tree_2k, tmp_path / "2k.jsonl")
    peak_10k, summary = _client_peak_bytes(tree_10k, tmp_path / "10k.jsonl")
    assert summary["rows_written"] == 10_000 and summary["refused_by_code"]["too_small"] == 9_600
    # rows are written as they complete: 5x the inputs must not mean 5x the memory (keeping rows would)
    assert peak_10k < 1.5 * peak_2k, (peak_2k, peak_10k)
    out = tmp_path / "10k.jsonl"
    again = run_batch(BatchConfig([str(tree_10k)], out, resume=True, workers=2, chunk_size=500, progress=False))
    assert again["rows_written"] == 0 and again["skipped_already_done"] == 10_000
    rows = read_jsonl(out)
    assert len(rows) == 10_000 and len({r["file"] for r in rows}) == 10_000


def test_resume_rescores_changed_content(tmp_path, real_files):
    (tmp_path / "in").mkdir()
    img = tmp_path / "in" / "a.jpg"
    img.write_bytes(real_files[0].read_bytes())
    out = tmp_path / "r.jsonl"
    run_batch(BatchConfig([str(tmp_path / "in")], out, workers=1, progress=False))
    img.write_bytes(real_files[1].read_bytes())
    summary = run_batch(BatchConfig([str(tmp_path / "in")], out, resume=True, workers=1, progress=False))
    assert summary["rows_written"] == 1
    index = DoneIndex.read(out, "jsonl")
    assert index.lookup(str(img)) == (True, hashlib.sha256(real_files[1].read_bytes()).hexdigest())  # last row wins


def _start(tree: Path, out: Path, *extra: str) -> subprocess.Popen:
    """A batch run in its own process group, stderr to ``<out>.log``."""
    with open(f"{out}.log", "w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "leukostage.cli", "batch", str(tree), "--out", str(out), *extra],
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )


def _wait_for_rows(out: Path, n: int, proc: subprocess.Popen, fmt: str = "jsonl") -> None:
    """Until ``out`` holds ``n`` complete rows (read as ``--resume`` reads them: a torn last row is not one)."""
    while not (out.exists() and len(DoneIndex.read(out, fmt)) >= n):
        assert proc.poll() is None, "the run ended before it could be interrupted"
        time.sleep(0.05)


def read_rows(out: Path, fmt: str) -> list[dict]:
    """Every row of a results file or folder, in writing order (csv as strings, parquet typed)."""
    if fmt == "jsonl":
        return read_jsonl(out)
    if fmt == "csv":
        with open(out, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    return pq.read_table(out).to_pylist()  # the dataset reader, as users read it (it skips "_" and "." names)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_interrupted_run_then_resume_gives_one_row_per_input(tree_2k, tmp_path, sig):
    out = tmp_path / "k.jsonl"
    proc = _start(tree_2k, out, "--workers", "2", "--chunk-size", "8")
    _wait_for_rows(out, 40, proc)
    os.killpg(proc.pid, sig) if sig == signal.SIGKILL else proc.send_signal(sig)
    proc.wait(timeout=60)
    if sig == signal.SIGTERM:
        assert proc.returncode == 130 and "--resume" in Path(f"{out}.log").read_text()
    before = read_jsonl(out)
    assert 40 <= len(before) < 2_000
    resumed = run_cli("batch", tree_2k, "--out", out, "--resume", "--workers", "2")
    assert resumed.returncode == 1, resumed.stderr  # the tiny PNGs are refused
    rows = read_jsonl(out)
    assert out.read_text().endswith("\n")  # a torn line was cut, not continued
    files = [r["file"] for r in rows]
    assert len(files) == 2_000 and len(set(files)) == 2_000
    assert {r["file"]: r for r in rows[: len(before)]} == {r["file"]: r for r in before}


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_killed_csv_or_parquet_run_then_resume_gives_one_row_per_input(tree_2k, tmp_path, fmt):
    """SIGKILL mid-run (parquet: rows still in the journal, no part file yet), then ``--resume``."""
    out = tmp_path / f"k.{fmt}"
    proc = _start(tree_2k, out, "--workers", "2", "--chunk-size", "8")
    _wait_for_rows(out, 40, proc, fmt)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    before = DoneIndex.read(out, fmt)
    assert 40 <= len(before) < 2_000
    if fmt == "parquet":
        assert not list(out.glob("*.parquet")) and (out / PARQUET_JOURNAL).is_file()
    resumed = run_cli("batch", tree_2k, "--out", out, "--resume", "--workers", "2")
    assert resumed.returncode == 1, resumed.stderr  # the tiny PNGs are refused
    assert f"{len(before)} already done" in resumed.stderr
    files = [r["file"] for r in read_rows(out, fmt)]
    assert len(files) == 2_000 and len(set(files)) == 2_000
    if fmt == "parquet":
        assert not (out / PARQUET_JOURNAL).exists()


def test_killed_parquet_run_past_one_part_file_then_resume(tree_10k, tmp_path):
    """Past ``PARQUET_ROWS_PER_PART`` rows a complete part file exists beside the journal when the kill comes; the
    resumed run keeps the part as it was and adds the rest."""
    out = tmp_path / "k.parquet"
    proc = _start(tree_10k, out, "--workers", "2", "--chunk-size", "64")
    try:
        while not (list(out.glob("part-*.parquet")) and len(list(_journal(out))) >= 64):
            assert proc.poll() is None, "the run ended before it could be interrupted"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    (part,) = out.glob("part-*.parquet")
    first_part = pq.read_table(part).to_pylist()
    assert len(first_part) == PARQUET_ROWS_PER_PART
    resumed = run_cli("batch", tree_10k, "--out", out, "--resume", "--workers", "2", timeout=600)
    assert resumed.returncode == 1, resumed.stderr
    rows = read_rows(out, "parquet")
    assert len(rows) == 10_000 and len({r["file"] for r in rows}) == 10_000
    assert pq.read_table(part).to_pylist() == first_part


def _journal(folder: Path) -> list[str]:
    path = folder / PARQUET_JOURNAL
    return [line for line in (path.read_text().splitlines(keepends=True) if path.exists() else []) if "\n" in line]


def _rows(names: list[str]) -> list[dict]:
    return [
        {"file": n, "valid": False, "code": "unreadable", "reason": "r", "sha256": f"{i + 1:064x}"}
        for i, n in enumerate(names)
    ]


def test_parquet_journal_recovery_after_a_kill_between_part_and_journal(tmp_path):
    """A kill after a part file was renamed into place but before the journal was emptied leaves the same rows in
    both, and maybe a torn journal line and a half-written part: each row must come out once. (The kill cannot be
    timed between two system calls, so the files it leaves are made directly.)"""
    folder = tmp_path / "r.parquet"
    writer = ParquetWriter(folder, rows_per_part=3)
    writer.write(_rows(["a", "b", "c"]))  # a full part: written, journal emptied
    writer.journal.close()
    journal = folder / PARQUET_JOURNAL
    journal.write_text("".join(json.dumps(r) + "\n" for r in _rows(["a", "b", "c", "d"])) + '{"file": "e", "va')
    (folder / ".part-00000000000000000001-1.tmp").write_bytes(b"PAR1 half")
    done = DoneIndex.read(folder, "parquet")
    assert {f: done.lookup(f)[0] for f in "abcde"} == {"a": True, "b": True, "c": True, "d": True, "e": False}
    writer = ParquetWriter(folder)
    assert [r["file"] for r in writer.pending] == ["d"] and not list(folder.glob(".part-*"))
    writer.close()
    assert sorted(r["file"] for r in read_rows(folder, "parquet")) == ["a", "b", "c", "d"]


def test_an_unreadable_parquet_part_is_set_aside_and_its_inputs_scored_again(tree_2k, tmp_path):
    """A part file cut short (a power cut before parts were synced, a damaged disk): resume does not crash, sets the
    part aside under a name parquet readers skip, and scores its inputs again."""
    out = tmp_path / "r.parquet"
    inputs = sorted(p for p in (tree_2k / "sample000").iterdir())[:40]
    listing = tmp_path / "inputs.txt"
    listing.write_text("".join(f"{p}\n" for p in inputs))
    assert run_cli("batch", f"@{listing}", "--out", out, "--workers", "1").returncode == 1
    (part,) = out.glob("part-*.parquet")
    part.write_bytes(part.read_bytes()[:-100])
    resumed = run_cli("batch", f"@{listing}", "--out", out, "--resume", "--workers", "1")
    assert resumed.returncode == 1, resumed.stderr
    assert "set aside the unreadable part file" in resumed.stderr
    assert (out / f"_damaged-{part.name}").is_file()
    rows = read_rows(out, "parquet")
    assert sorted(r["file"] for r in rows) == sorted(map(str, inputs))


def test_repair_tail_cuts_a_torn_line(tmp_path):
    out = tmp_path / "r.jsonl"
    out.write_text('{"file": "a"}\n{"file": "b", "va')
    repair_tail(out)
    assert out.read_text() == '{"file": "a"}\n'


@pytest.fixture(scope="module")
def finished(tmp_path_factory, real_files) -> dict:
    """Finished CSV and JSONL results of a small archive whose names are not ASCII (a cut can fall inside a character)
    and whose last row is a refused input with a long ``reason`` and ``extra``: {fmt: (path, bytes)}."""
    root = tmp_path_factory.mktemp("finished")
    arch = root / "archiv-ü"
    arch.mkdir()
    for i, src in enumerate(real_files[:2]):
        (arch / f"a{i}-blut-µ.jpg").write_bytes(src.read_bytes())
    (arch / "z-notiz-ä.jpg").write_text("not an image " * 50)  # discovered last, so the last row
    out = {}
    for fmt in ("csv", "jsonl"):
        path = root / f"full.{fmt}"
        run_batch(BatchConfig([str(arch)], path, workers=1, progress=False))
        out[fmt] = (path, path.read_bytes())
    return {"archive": arch, **out}


def _last_record_start(data: bytes) -> int:
    return data.rstrip(b"\r\n").rfind(b"\n") + 1


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_torn_last_row_is_never_done_and_is_cut_before_appending(finished, tmp_path, fmt):
    """Every byte position inside the last row (a kill mid-write): the index counts the rows before it, never the
    torn one and never crashes; opening the writer cuts exactly the torn row."""
    full, data = finished[fmt]
    done = DoneIndex.read(full, fmt)
    files = [Path(p) for p in sorted(str(p) for p in finished["archive"].iterdir())]
    assert len(done) == 3 and all(done.lookup(str(f))[0] for f in files)
    last, start = files[-1], _last_record_start(data)
    assert last.name.encode() in data[start:]
    torn = tmp_path / f"torn.{fmt}"
    for cut in range(start, len(data)):
        torn.write_bytes(data[:cut])
        index = DoneIndex.read(torn, fmt)
        assert len(index) == 2 and index.lookup(str(last)) == (False, None), cut
        assert [index.lookup(str(f)) for f in files[:2]] == [done.lookup(str(f)) for f in files[:2]], cut
        open_writer(torn, fmt, resume=True).close()
        assert torn.read_bytes() == data[:start], cut


@pytest.mark.parametrize("where", ["sha256", "extra"])
def test_resume_after_a_csv_row_torn_inside_a_cell_gives_every_row(finished, tmp_path, where):
    """The issue's two cuts: inside ``sha256`` (resume crashed in fromhex) and inside ``extra`` (the row was counted
    as done, then cut: lost)."""
    full, data = finished["csv"]
    start = _last_record_start(data)
    rows = list(csv.DictReader(io.StringIO(data.decode())))
    cut = data.index(rows[-1]["sha256"].encode(), start) + 20 if where == "sha256" else len(data) - 40
    torn = tmp_path / "torn.csv"
    torn.write_bytes(data[:cut])
    summary = run_batch(BatchConfig([str(finished["archive"])], torn, resume=True, workers=1, progress=False))
    assert (summary["rows_written"], summary["skipped_already_done"]) == (1, 2)
    assert torn.read_bytes() == data  # the same rows, in the same order, byte for byte


# --- hostile archive --------------------------------------------------------------------------------------------------
def test_hostile_archive_gives_a_coded_row_per_entry_and_finishes(tmp_path, real_files):
    bad = tmp_path / "hostile"
    bad.mkdir()
    good = real_files[2].read_bytes()
    (bad / "good.jpg").write_bytes(good)
    (bad / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (bad / "notes.jpg").write_text("not an image\n" * 40)
    (bad / "bomb.png").write_bytes(png_bytes(40_000, 40_000))  # 1.6 gigapixels declared
    (bad / "empty.png").write_bytes(b"")
    (bad / "broken.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (bad / "loop.jpg").symlink_to(bad / "loop.jpg")
    os.mkfifo(bad / "pipe.jpg")  # unreadable even for root (a blocking read would hang the run)
    proc = run_cli("batch", bad, "--out", tmp_path / "h.jsonl", "--workers", "2", "--chunk-size", "2", timeout=120)
    assert proc.returncode == 1, proc.stderr
    rows = {Path(r["file"]).name: r for r in read_jsonl(tmp_path / "h.jsonl")}
    assert set(rows) == {p.name for p in bad.iterdir()}
    assert rows["good.jpg"]["valid"] and rows["good.jpg"]["sha256"]
    expected = {
        "truncated.jpg": "unreadable",
        "notes.jpg": "unreadable",
        "bomb.png": "too_large",
        "empty.png": "unreadable",
        "broken.jpg": "unreadable",
        "loop.jpg": "unreadable",
        "pipe.jpg": "unreadable",
    }
    for name, code in expected.items():
        assert (rows[name]["valid"], rows[name]["code"]) == (False, code), rows[name]
        assert rows[name]["reason"]
    assert "broken symbolic link" in rows["broken.jpg"]["reason"]
    assert "not a regular file" in rows["pipe.jpg"]["reason"]


def _row_as_nobody(inp: BatchInput) -> dict:
    """Score one input in a forked child that has dropped root (chmod 000 does not stop root), reading the row back
    through a pipe. The predictor must not be needed: reading fails first."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(r)
            if os.geteuid() == 0:
                nobody = pwd.getpwnam("nobody")
                os.setgroups([])
                os.setgid(nobody.pw_gid)
                os.setuid(nobody.pw_uid)
            row = score_input(inp, predictor=lambda: None)
            os.write(w, json.dumps(row).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    return json.loads(data)


def test_unreadable_file_gives_a_coded_row(real_files):
    """A file its reader may not open (chmod 000, read by an unprivileged user)."""
    with tempfile.TemporaryDirectory(prefix="leukostage-batch-") as tmp:
        os.chmod(tmp, 0o755)  # the unprivileged reader may reach the folder, not the file
        locked = Path(tmp) / "locked.jpg"
        locked.write_bytes(real_files[0].read_bytes())
        os.chmod(locked, 0)
        row = _row_as_nobody(BatchInput(str(locked), "."))
    assert (row["valid"], row["code"], row["sha256"]) == (False, "unreadable", None)
    assert "Permission denied" in row["reason"]


# --- CLI errors and the serving-path rule -----------------------------------------------------------------------------
def test_existing_output_needs_resume_and_unknown_suffix_needs_format(table2, tmp_path):
    out = tmp_path / "r.jsonl"
    out.write_text('{"file": "x"}\n')
    proc = run_cli("batch", table2, "--out", out)
    assert proc.returncode == 2 and "--resume" in proc.stderr
    proc = run_cli("batch", table2, "--out", tmp_path / "r.txt")
    assert proc.returncode == 2 and "--format" in proc.stderr
    proc = run_cli("batch", table2, "--out", tmp_path / "r.csv", "--model", tmp_path / "none.onnx")
    assert proc.returncode == 2 and "none.onnx" in proc.stderr


def test_a_corrupt_model_or_a_missing_card_stops_the_run_at_once_with_one_line(table2, tmp_path, model_path):
    """Loaded once before any work (Predictor.load, as serve does): not one internal_error row per input."""
    from leukostage.predict import ModelLoadError, card_path_for

    broken = tmp_path / "broken.onnx"
    broken.write_bytes(model_path.read_bytes()[:5000])  # truncated
    card_path_for(broken).write_text(card_path_for(model_path).read_text())
    out = tmp_path / "r.jsonl"
    with pytest.raises(ModelLoadError, match="broken.onnx is not a loadable ONNX model"):
        run_batch(BatchConfig([str(table2)], out, model=str(broken), workers=1, progress=False))
    assert not read_jsonl(out)
    card_path_for(broken).unlink()
    proc = run_cli("batch", table2, "--out", tmp_path / "s.jsonl", "--model", broken)
    assert proc.returncode == 2 and "broken.card.json not found" in proc.stderr and "Traceback" not in proc.stderr


def test_threads_per_worker_defaults_to_cores_over_workers_and_can_be_set(table2, tmp_path):
    from leukostage.cores import cpu_count

    default = run_batch(BatchConfig([str(table2)], tmp_path / "a.jsonl", workers=1, progress=False))
    assert default["onnx_threads_per_worker"] == cpu_count()
    one = run_batch(BatchConfig([str(table2)], tmp_path / "b.jsonl", workers=1, threads_per_worker=1, progress=False))
    assert one["onnx_threads_per_worker"] == 1 and one["rows_written"] == default["rows_written"] == 2 * len(CLASSES)
    proc = run_cli("batch", table2, "--out", tmp_path / "c.jsonl", "--threads-per-worker", "0")
    assert proc.returncode == 2 and "--threads-per-worker must be at least 1" in proc.stderr


def test_batch_never_imports_torch(table2, tmp_path):
    code = (
        f"import sys; from leukostage.cli import main; main(['batch', {str(table2)!r}, '--out', "
        f"{str(tmp_path / 'r.jsonl')!r}, '--workers', '1']); import leukostage.batch.dask_plugin; "
        "sys.exit(3 if 'torch' in sys.modules else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


# --- Dask -------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dask_cluster():
    import distributed

    # dashboard on any free port: a fixed 8787 clashes with other clusters on the machine (a warning, so an error)
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", host="127.0.0.1"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield cluster, client


def test_dask_cluster_rows_equal_local_rows(dask_cluster, table2, tmp_path):
    cluster, _ = dask_cluster
    local = run_batch(BatchConfig([str(table2)], tmp_path / "l.jsonl", workers=1, chunk_size=3, progress=False))
    remote = run_batch(
        BatchConfig(
            [str(table2)], tmp_path / "d.jsonl", scheduler=cluster.scheduler_address, chunk_size=3, progress=False
        )
    )
    assert remote["engine"] == "dask" and remote["workers"] == 2
    key = lambda r: r["file"]  # noqa: E731
    assert sorted(read_jsonl(tmp_path / "d.jsonl"), key=key) == sorted(read_jsonl(tmp_path / "l.jsonl"), key=key)
    assert local["labels"] == remote["labels"]


def test_dask_worker_killed_mid_run_loses_no_row_and_duplicates_none(dask_cluster, tree_2k, tmp_path):
    cluster, client = dask_cluster
    out = tmp_path / "d.jsonl"
    proc = _start(tree_2k, out, "--scheduler", cluster.scheduler_address, "--chunk-size", "4")
    try:
        _wait_for_rows(out, 20, proc)
        victim = sorted(client.run(os.getpid).items())[0][1]
        os.kill(victim, signal.SIGKILL)  # the nanny restarts it; its chunks go to the scheduler again
        killed_at = len(read_jsonl(out))
        assert proc.wait(timeout=240) == 1, Path(f"{out}.log").read_text()[-2000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    files = [r["file"] for r in read_jsonl(out)]
    assert killed_at < 2_000
    assert len(files) == 2_000 and len(set(files)) == 2_000


def test_dask_worker_without_the_model_is_a_clear_error(dask_cluster, table2, tmp_path):
    cluster, _ = dask_cluster
    with pytest.raises(BatchError, match="same path"):
        run_batch(
            BatchConfig(
                [str(table2)],
                tmp_path / "d.jsonl",
                scheduler=cluster.scheduler_address,
                model=str(tmp_path / "missing.onnx"),
                progress=False,
            )
        )


def test_a_quality_refusal_keeps_its_code_reason_and_capture_in_every_format(
    sample_smears, predictor, tmp_path, monkeypatch
):
    """Issue 18's refusal codes pass through a batch row whole: csv and parquet carry the code and the reason in
    their columns and the capture in ``extra``; the summary counts the code. The validator that says ``out_of_focus``
    is built on another branch, so a real smear's analysis is given that refusal here (a fault this branch cannot
    cause for real)."""
    from dataclasses import replace

    from leukostage.batch import score as score_module
    from leukostage.batch.run import Tally
    from leukostage.batch.writers import open_writer

    reason = "The picture is out of focus (sharpness 3.1; sharp fields measure at least 12.0). Refocus and retake."
    capture = {"mode": "eyepiece", "background_level": 231.0, "dark_level": 9.0, "clipped_share": 0.0}
    real = score_module.analyse_bytes

    def out_of_focus(*args, **kwargs):
        analysis = real(*args, **kwargs)
        result = {"file": analysis.result["file"], "valid": False, "code": "out_of_focus", "reason": reason}
        return replace(analysis, result={**result, "capture": capture})

    monkeypatch.setattr(score_module, "analyse_bytes", out_of_focus)
    row = score_input(BatchInput(str(sample_smears["mid"]), "cancerous/mid"), lambda: predictor)
    assert (row["code"], row["reason"], row["capture"]) == ("out_of_focus", reason, capture)
    assert row["width"] and len(row["sha256"]) == 64  # the batch fields, as for any row

    for fmt, out in (("csv", tmp_path / "r.csv"), ("parquet", tmp_path / "r.parquet")):
        writer = open_writer(out, fmt, resume=False)
        writer.write([row])
        writer.close()
    with open(tmp_path / "r.csv", newline="") as fh:
        (from_csv,) = list(csv.DictReader(fh))
    (from_parquet,) = pq.read_table(tmp_path / "r.parquet").to_pylist()
    for written in (from_csv, from_parquet):
        assert (written["code"], written["reason"]) == ("out_of_focus", reason)
        assert json.loads(written["extra"])["capture"] == capture
    tally = Tally()
    tally.add(row)
    assert tally.refused == {"out_of_focus": 1}
