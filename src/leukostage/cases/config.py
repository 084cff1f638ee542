"""Where a case instance lives: one place for the three settings (environment variables, with defaults).

- ``LEUKOSTAGE_INSTANCE``: the instance folder (default ``./instance``), home of the SQLite file, the images and the
  session secret.
- ``LEUKOSTAGE_DATABASE_URL``: a SQLAlchemy URL (default ``sqlite:///<instance>/leukostage.sqlite3``); PostgreSQL as
  ``postgresql+psycopg://user@host/db`` (psycopg 3; a plain ``postgresql://`` URL is read as psycopg 3 too).
- ``LEUKOSTAGE_STORAGE``: the image store (default ``<instance>/images``).
"""

from __future__ import annotations

import os
from pathlib import Path

INSTANCE_ENV = "LEUKOSTAGE_INSTANCE"
DATABASE_URL_ENV = "LEUKOSTAGE_DATABASE_URL"
STORAGE_ENV = "LEUKOSTAGE_STORAGE"
DEFAULT_INSTANCE = Path("instance")
SQLITE_NAME = "leukostage.sqlite3"


def instance_dir() -> Path:
    return Path(os.environ.get(INSTANCE_ENV) or DEFAULT_INSTANCE).absolute()


def database_url() -> str:
    """The configured URL; ``postgresql://`` and ``postgres://`` are mapped to the psycopg 3 driver."""
    url = os.environ.get(DATABASE_URL_ENV) or f"sqlite:///{instance_dir() / SQLITE_NAME}"
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def storage_dir() -> Path:
    return Path(os.environ.get(STORAGE_ENV) or instance_dir() / "images").absolute()


def redacted(url: str) -> str:
    """The URL without its password, for messages."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
