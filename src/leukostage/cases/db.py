"""Engine, sessions and migrations for the case database (SQLite by default, PostgreSQL via psycopg 3).

SQLite is set up for several gunicorn workers writing at once: WAL (readers do not block the writer), a 30 s busy
timeout, foreign keys on, and every transaction opened with ``BEGIN IMMEDIATE`` so two writers queue for the lock
instead of deadlocking on a read-to-write upgrade. PostgreSQL serialises writers to one case with row locks
(``SELECT ... FOR UPDATE``, see ``service``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from .config import database_url, redacted

SQLITE_BUSY_TIMEOUT_S = 30
MIGRATIONS = Path(str(resources.files("leukostage") / "cases" / "migrations"))
UPGRADE_HINT = "leukostage db upgrade"

_engines: dict[str, Engine] = {}
_owners: dict[str, int] = {}  # the pid that built each engine
_lock = threading.Lock()


class DatabaseNotReady(RuntimeError):
    """The database is missing, unreachable, or not at the code's migration revision."""


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record) -> None:  # pragma: no cover - exercised by every SQLite test
        dbapi_conn.isolation_level = None  # let the "begin" hook below open transactions
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_S * 1000}")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def get_engine(url: str | None = None) -> Engine:
    """One engine per URL per process. A process forked after the parent opened connections (gunicorn workers after
    ``serve``'s migration check) must not share the parent's sockets: it drops the inherited pool, unclosed, and
    builds its own."""
    url = url or database_url()
    with _lock:
        engine = _engines.get(url)
        if engine is not None and _owners.get(url) != os.getpid():
            engine.dispose(close=False)  # the parent's connections stay the parent's
            engine = None
        if engine is None:
            parsed = make_url(url)
            if parsed.get_backend_name() == "sqlite":
                if parsed.database and parsed.database != ":memory:":
                    Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
                engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
                _sqlite_setup(engine)
            else:
                engine = create_engine(url, pool_pre_ping=True)
            _engines[url], _owners[url] = engine, os.getpid()
        return engine


def dispose_all() -> None:
    """Close every pooled connection (tests, and before a fork)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on any exception."""
    session = sessionmaker(get_engine(url), expire_on_commit=False)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def _alembic_config(connection=None):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def current_revision(url: str | None = None) -> str | None:
    """The database's revision; None for an empty database (or a SQLite file that does not exist yet)."""
    from alembic.runtime.migration import MigrationContext

    url = url or database_url()
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and not Path(parsed.database).exists():
        return None
    with get_engine(url).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(url: str | None = None) -> tuple[str | None, str]:
    """Apply every pending migration; returns (revision before, revision after)."""
    from alembic import command

    url = url or database_url()
    before = current_revision(url)
    with get_engine(url).begin() as conn:
        command.upgrade(_alembic_config(conn), "head")
    return before, head_revision()


def require_current(url: str | None = None) -> None:
    """Raise ``DatabaseNotReady`` (one line naming ``leukostage db upgrade``) unless the schema is at head."""
    from sqlalchemy.exc import SQLAlchemyError

    url = url or database_url()
    try:
        current = current_revision(url)
    except SQLAlchemyError as exc:
        raise DatabaseNotReady(
            f"cannot open the case database {redacted(url)} "
            f"({type(exc.orig or exc).__name__}); check LEUKOSTAGE_DATABASE_URL"
        ) from None
    head = head_revision()
    if current != head:
        state = "is not migrated" if current is None else f"is at revision {current}, this version needs {head}"
        raise DatabaseNotReady(f"the case database {redacted(url)} {state}; run `{UPGRADE_HINT}` first")
