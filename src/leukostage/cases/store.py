"""The stored field images, content-addressed: one interface (:class:`ImageStore`), two implementations.

- :class:`DatabaseStore` (the default on PostgreSQL): the bytes in the ``image_blobs`` table, keyed by SHA-256,
  written in the caller's transaction, so a field's bytes and its rows commit together (a crash leaves no orphan)
  and every app node on the database sees them.
- :class:`FileStore` (the default on SQLite): files ``<root>/<aa>/<bb>/<sha256>``, written to a temporary file then
  renamed. A rename is atomic, so a reader sees a whole file or none; a writer killed mid-write leaves only a
  ``.tmp-*`` file in ``<root>/tmp``, which ``sweep_temporary`` (``leukostage db check``) removes. Several app nodes
  with this store must share ``<root>`` (a network file system).

:func:`open_store` chooses one from the database URL and ``LEUKOSTAGE_IMAGE_STORE`` (see ``config``). In both, the
SHA-256 of the bytes is the only name a field gets (the client's file name is metadata in the database and never
touches the file system), and the same bytes uploaded twice are stored once.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path
from typing import Protocol

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from .config import image_store_kind, redacted
from .db import dialect_insert, session_scope
from .models import ImageBlob, utcnow

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
TMP_DIR = "tmp"
STALE_TMP_S = 3600  # a temporary file this old belongs to no live upload


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_digest(sha256: str) -> str:
    """``sha256`` if it is a lower-case hex SHA-256 (so no caller can name a stored field by anything else).

    Raises:
        ValueError: it is not.
    """
    if not SHA256_RE.match(sha256):
        raise ValueError(f"not a SHA-256 digest: {sha256[:80]!r}")
    return sha256


class ImageStore(Protocol):
    """What the case service, the web views and ``db check`` need of a store of field images."""

    def put(self, data: bytes, session: Session | None = None) -> str:
        """Store ``data`` (if not already there), in ``session``'s transaction where the store is the database;
        returns its SHA-256."""

    def read(self, sha256: str) -> bytes:
        """The stored bytes. Raises FileNotFoundError when they are missing."""

    def exists(self, sha256: str) -> bool: ...

    def age_s(self, sha256: str) -> float:
        """Seconds since the bytes were stored (or, for files, stored again)."""

    def delete(self, sha256: str) -> None: ...

    def digests(self) -> Iterator[str]:
        """Every stored SHA-256."""

    def sweep_temporary(self, older_than_s: float = STALE_TMP_S) -> list:
        """Remove what killed writers left behind; returns what was removed."""

    def describe(self) -> str:
        """Where the images are, for messages (`db check`)."""


def open_store(database_url: str, storage: str | Path, kind: str | None = None) -> ImageStore:
    """The store a deployment configured: ``kind`` (``database`` or ``files``; None: ``config.image_store_kind``)."""
    if image_store_kind(database_url, kind) == "database":
        return DatabaseStore(database_url)
    return FileStore(storage)


class FileStore:
    """Field images as files under ``root`` (see the module docstring)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def describe(self) -> str:
        return str(self.root)

    def path_for(self, sha256: str) -> Path:
        """Where the file for ``sha256`` lives.

        Raises:
            ValueError: not a lower-case hex SHA-256 (so no caller can build a path from anything else).
        """
        check_digest(sha256)
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def put(self, data: bytes, session: Session | None = None) -> str:
        """Store ``data`` (if not already there) and return its SHA-256 (the file is written before the caller's
        rows commit: a crash between the two leaves an orphan file, which ``db check`` removes)."""
        sha256 = digest(data)
        target = self.path_for(sha256)
        if target.is_file():
            os.utime(target)  # fresh again: `db check` leaves young orphans alone while their rows are written
            return sha256
        tmp_dir = self.root / TMP_DIR
        tmp_dir.mkdir(parents=True, exist_ok=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=tmp_dir)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)  # atomic; two writers of the same bytes both end with the same whole file
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return sha256

    def read(self, sha256: str) -> bytes:
        """The stored bytes. Raises FileNotFoundError when the file is missing."""
        return self.path_for(sha256).read_bytes()

    def exists(self, sha256: str) -> bool:
        return self.path_for(sha256).is_file()

    def age_s(self, sha256: str) -> float:
        """Seconds since the file was last written (or stored again)."""
        return time.time() - self.path_for(sha256).stat().st_mtime

    def delete(self, sha256: str) -> None:
        self.path_for(sha256).unlink(missing_ok=True)

    def digests(self) -> Iterator[str]:
        """Every stored SHA-256 (files with other names are not the store's and are left alone)."""
        if not self.root.is_dir():
            return
        for path in self.root.glob("??/??/*"):
            if path.is_file() and SHA256_RE.match(path.name) and path.parent.parent.name == path.name[:2]:
                yield path.name

    def sweep_temporary(self, older_than_s: float = STALE_TMP_S) -> list[Path]:
        """Remove temporary files left by killed writers (only old ones: a live upload may own a young one)."""
        removed = []
        cutoff = time.time() - older_than_s
        for path in (self.root / TMP_DIR).glob(".tmp-*"):
            if path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)
                removed.append(path)
        return removed


class DatabaseStore:
    """Field images in the ``image_blobs`` table of the case database (see the module docstring)."""

    def __init__(self, database_url: str):
        self.url = database_url

    def describe(self) -> str:
        return f"{redacted(self.url)} (table image_blobs)"

    def put(self, data: bytes, session: Session | None = None) -> str:
        """Insert the bytes in ``session``'s transaction (committed with the field's rows; without a session, in
        a transaction of their own). Two uploads of the same bytes at once: the second waits for the first and
        inserts nothing."""
        if session is None:
            with self._session() as own:
                return self.put(data, own)
        sha256 = digest(data)
        insert = dialect_insert(session)
        session.execute(insert(ImageBlob).values(sha256=sha256, data=data).on_conflict_do_nothing())
        return sha256

    def read(self, sha256: str) -> bytes:
        check_digest(sha256)
        with self._session() as session:
            data = session.scalar(select(ImageBlob.data).where(ImageBlob.sha256 == sha256))
        if data is None:
            raise FileNotFoundError(f"no stored image {sha256} in the database")
        return bytes(data)

    def exists(self, sha256: str) -> bool:
        with self._session() as session:
            return session.scalar(select(ImageBlob.sha256).where(ImageBlob.sha256 == check_digest(sha256))) is not None

    def age_s(self, sha256: str) -> float:
        with self._session() as session:
            created = session.scalar(select(ImageBlob.created_at).where(ImageBlob.sha256 == check_digest(sha256)))
        if created is None:
            raise FileNotFoundError(f"no stored image {sha256} in the database")
        created = created if created.tzinfo else created.replace(tzinfo=UTC)  # SQLite hands back naive UTC
        return (utcnow() - created).total_seconds()

    def delete(self, sha256: str) -> None:
        with self._session() as session:
            session.execute(delete(ImageBlob).where(ImageBlob.sha256 == check_digest(sha256)))

    def digests(self) -> Iterator[str]:
        with self._session() as session:
            found = list(session.scalars(select(ImageBlob.sha256)))
        yield from found

    def sweep_temporary(self, older_than_s: float = STALE_TMP_S) -> list:
        return []  # a transaction that dies leaves nothing behind

    def _session(self):
        return session_scope(self.url)
