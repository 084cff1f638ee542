"""The content-addressed image store: names are digests only, writes are atomic, leftovers are swept."""

from __future__ import annotations

import hashlib
import os
import time

import pytest

from leukostage.cases.store import TMP_DIR, ImageStore


def test_put_read_by_digest(tmp_path):
    store = ImageStore(tmp_path)
    data = b"\xff\xd8\xff fake jpeg bytes"
    sha = store.put(data)
    assert sha == hashlib.sha256(data).hexdigest()
    assert store.read(sha) == data
    assert store.path_for(sha) == tmp_path / sha[:2] / sha[2:4] / sha
    assert list(store.digests()) == [sha]


def test_same_bytes_stored_once(tmp_path):
    store = ImageStore(tmp_path)
    assert store.put(b"abc") == store.put(b"abc")
    assert len(list(store.digests())) == 1
    assert not list((tmp_path / TMP_DIR).iterdir())  # no temporary file left behind


@pytest.mark.parametrize("name", ["../../etc/passwd", "x" * 64, "A" * 64, "", "abc/def"])
def test_only_digests_become_paths(tmp_path, name):
    with pytest.raises(ValueError, match="SHA-256"):
        ImageStore(tmp_path).path_for(name)


def test_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        ImageStore(tmp_path).read("0" * 64)


def test_killed_writer_leftovers_are_swept_when_old(tmp_path):
    store = ImageStore(tmp_path)
    store.put(b"keep")
    tmp = tmp_path / TMP_DIR / ".tmp-killed"
    tmp.write_bytes(b"half")
    assert store.sweep_temporary(older_than_s=3600) == []  # young: may be a live upload
    old = time.time() - 7200
    os.utime(tmp, (old, old))
    assert store.sweep_temporary(older_than_s=3600) == [tmp]
    assert not tmp.exists() and len(list(store.digests())) == 1


def test_foreign_files_are_not_listed(tmp_path):
    store = ImageStore(tmp_path)
    (tmp_path / "ab" / "cd").mkdir(parents=True)
    (tmp_path / "ab" / "cd" / "notes.txt").write_text("x")
    assert list(store.digests()) == []
