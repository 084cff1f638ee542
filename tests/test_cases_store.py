"""The content-addressed image stores: files (names are digests only, writes are atomic, leftovers are swept) and the
database (written in the caller's transaction), and which one a deployment gets."""

from __future__ import annotations

import hashlib
import os
import time

import pytest

from leukostage.cases.store import TMP_DIR, DatabaseStore, FileStore, open_store


def test_put_read_by_digest(tmp_path):
    store = FileStore(tmp_path)
    data = b"\xff\xd8\xff fake jpeg bytes"
    sha = store.put(data)
    assert sha == hashlib.sha256(data).hexdigest()
    assert store.read(sha) == data
    assert store.path_for(sha) == tmp_path / sha[:2] / sha[2:4] / sha
    assert list(store.digests()) == [sha]


def test_same_bytes_stored_once(tmp_path):
    store = FileStore(tmp_path)
    assert store.put(b"abc") == store.put(b"abc")
    assert len(list(store.digests())) == 1
    assert not list((tmp_path / TMP_DIR).iterdir())  # no temporary file left behind


@pytest.mark.parametrize("name", ["../../etc/passwd", "x" * 64, "A" * 64, "", "abc/def"])
def test_only_digests_become_paths(tmp_path, name):
    with pytest.raises(ValueError, match="SHA-256"):
        FileStore(tmp_path).path_for(name)


def test_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        FileStore(tmp_path).read("0" * 64)


def test_killed_writer_leftovers_are_swept_when_old(tmp_path):
    store = FileStore(tmp_path)
    store.put(b"keep")
    tmp = tmp_path / TMP_DIR / ".tmp-killed"
    tmp.write_bytes(b"half")
    assert store.sweep_temporary(older_than_s=3600) == []  # young: may be a live upload
    old = time.time() - 7200
    os.utime(tmp, (old, old))
    assert store.sweep_temporary(older_than_s=3600) == [tmp]
    assert not tmp.exists() and len(list(store.digests())) == 1


def test_foreign_files_are_not_listed(tmp_path):
    store = FileStore(tmp_path)
    (tmp_path / "ab" / "cd").mkdir(parents=True)
    (tmp_path / "ab" / "cd" / "notes.txt").write_text("x")
    assert list(store.digests()) == []


def test_open_store_follows_the_database_and_the_setting(tmp_path, monkeypatch):
    monkeypatch.delenv("LEUKOSTAGE_IMAGE_STORE", raising=False)
    pg, lite = "postgresql+psycopg://u@h/db", f"sqlite:///{tmp_path}/x.sqlite3"
    assert isinstance(open_store(pg, tmp_path), DatabaseStore)
    assert isinstance(open_store(lite, tmp_path), FileStore)
    assert isinstance(open_store(pg, tmp_path, "files"), FileStore)  # a shared folder instead
    monkeypatch.setenv("LEUKOSTAGE_IMAGE_STORE", "database")
    assert isinstance(open_store(lite, tmp_path), DatabaseStore)
    with pytest.raises(ValueError, match="LEUKOSTAGE_IMAGE_STORE='s3': expected one of database, files"):
        open_store(pg, tmp_path, "s3")


def test_database_store_writes_in_the_callers_transaction(instance):
    """The bytes commit with the rows or not at all: a transaction that fails leaves no orphan."""
    from leukostage.cases import db

    store = DatabaseStore(instance.url)
    data = b"\xff\xd8\xff a field"
    with pytest.raises(RuntimeError), db.session_scope(instance.url) as s:
        sha = store.put(data, s)
        raise RuntimeError("the worker dies before the rows commit")
    assert not store.exists(sha) and list(store.digests()) == []
    with pytest.raises(FileNotFoundError):
        store.read(sha)
    with db.session_scope(instance.url) as s:
        assert store.put(data, s) == sha == hashlib.sha256(data).hexdigest()
        assert store.put(data, s) == sha  # the same bytes twice: stored once
    assert store.read(sha) == data and list(store.digests()) == [sha]
    assert 0 <= store.age_s(sha) < 60
    store.delete(sha)
    assert not store.exists(sha)
    with pytest.raises(ValueError, match="SHA-256"):
        store.read("../../etc/passwd")
