"""Where a case instance lives, and what its nodes share: one place for these settings (environment variables, with
defaults).

- ``LEUKOSTAGE_INSTANCE``: the instance folder (default ``./instance``), home of the SQLite file, the images and the
  session secret (with SQLite).
- ``LEUKOSTAGE_DATABASE_URL``: a SQLAlchemy URL (default ``sqlite:///<instance>/leukostage.sqlite3``); PostgreSQL as
  ``postgresql+psycopg://user@host/db`` (psycopg 3; a plain ``postgresql://`` URL is read as psycopg 3 too).
- ``LEUKOSTAGE_IMAGE_STORE``: ``database`` or ``files``; by default ``database`` on PostgreSQL (every app node sees
  the images, written in the same transaction as their rows) and ``files`` on SQLite.
- ``LEUKOSTAGE_STORAGE``: the folder of the ``files`` store (default ``<instance>/images``); several app nodes with
  the ``files`` store must all name one shared folder here.
- ``LEUKOSTAGE_TOKEN_DAYS``: how long a new bearer token is valid (default 90 days).
- ``LEUKOSTAGE_SECRET_KEY``: the session signing key, at least 32 bytes; unset, PostgreSQL keeps one in the database
  (shared by every node) and SQLite in ``<instance>/secret_key``.
"""

from __future__ import annotations

import os
from pathlib import Path

INSTANCE_ENV = "LEUKOSTAGE_INSTANCE"
DATABASE_URL_ENV = "LEUKOSTAGE_DATABASE_URL"
STORAGE_ENV = "LEUKOSTAGE_STORAGE"
IMAGE_STORE_ENV = "LEUKOSTAGE_IMAGE_STORE"
TOKEN_DAYS_ENV = "LEUKOSTAGE_TOKEN_DAYS"
SECRET_KEY_ENV = "LEUKOSTAGE_SECRET_KEY"
IMAGE_STORES = ("database", "files")
DEFAULT_TOKEN_DAYS = 90
MIN_SECRET_BYTES = 32
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


def is_postgresql(url: str) -> bool:
    return url.startswith("postgresql")


def image_store_kind(url: str | None = None, setting: str | None = None) -> str:
    """``database`` or ``files``: ``setting`` (else $LEUKOSTAGE_IMAGE_STORE), else by the database.

    Raises:
        ValueError: a setting other than ``database`` or ``files``.
    """
    kind = (setting if setting is not None else os.environ.get(IMAGE_STORE_ENV, "")).strip().lower()
    if not kind:
        return "database" if is_postgresql(url or database_url()) else "files"
    if kind not in IMAGE_STORES:
        raise ValueError(f"{IMAGE_STORE_ENV}={kind[:40]!r}: expected one of {', '.join(IMAGE_STORES)}")
    return kind


def token_days() -> int:
    """Days a new bearer token stays valid ($LEUKOSTAGE_TOKEN_DAYS, default 90).

    Raises:
        ValueError: not a whole number of days of at least 1.
    """
    raw = os.environ.get(TOKEN_DAYS_ENV, "").strip()
    if not raw:
        return DEFAULT_TOKEN_DAYS
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{TOKEN_DAYS_ENV}={raw[:20]!r}: give a whole number of days, at least 1")
    return int(raw)


def check_secret_key(value: object) -> str:
    """The session signing key as given (an environment value may have been parsed as a number: it is text).

    Raises:
        ValueError: shorter than MIN_SECRET_BYTES bytes (a short key can be guessed, and with it any session forged).
    """
    key = str(value)
    if len(key.encode()) < MIN_SECRET_BYTES:
        raise ValueError(
            f"{SECRET_KEY_ENV} is {len(key.encode())} bytes long; use at least {MIN_SECRET_BYTES} random bytes, e.g. "
            "`python -c 'import secrets; print(secrets.token_hex(32))'`, or unset it to let leukostage keep one"
        )
    return key


def redacted(url: str) -> str:
    """The URL without its password, for messages."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
