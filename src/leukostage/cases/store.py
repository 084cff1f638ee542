"""Content-addressed image files: ``<root>/<aa>/<bb>/<sha256>``, written to a temporary file then renamed.

The SHA-256 of the bytes is the only name a file ever gets: the client's file name is kept in the database as
metadata and never touches the file system. A rename is atomic, so a reader sees a whole file or none; a writer
killed mid-write leaves only a ``.tmp-*`` file in ``<root>/tmp``, which ``sweep_temporary`` (``leukostage db check``)
removes. The same bytes uploaded twice are stored once.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
TMP_DIR = "tmp"
STALE_TMP_S = 3600  # a temporary file this old belongs to no live upload


class ImageStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path_for(self, sha256: str) -> Path:
        """Where the file for ``sha256`` lives.

        Raises:
            ValueError: not a lower-case hex SHA-256 (so no caller can build a path from anything else).
        """
        if not SHA256_RE.match(sha256):
            raise ValueError(f"not a SHA-256 digest: {sha256[:80]!r}")
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def put(self, data: bytes) -> str:
        """Store ``data`` (if not already there) and return its SHA-256."""
        sha256 = hashlib.sha256(data).hexdigest()
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
