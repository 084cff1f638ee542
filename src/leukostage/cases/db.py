"""Engine, sessions and migrations for the case database (SQLite by default, PostgreSQL via psycopg 3).

SQLite is set up for several gunicorn workers writing at once: WAL (readers do not block the writer), a 30 s busy
timeout, foreign keys on, and every transaction opened with ``BEGIN IMMEDIATE`` so two writers queue for the lock
instead of deadlocking on a read-to-write upgrade. PostgreSQL serialises writers to one case with row locks
(``SELECT ... FOR UPDATE``, see ``service``).

On PostgreSQL the app should run as its own role, not as the role that owns the schema: :func:`grant_app_role`
(``leukostage db grant ROLE``, run as the owner after each ``db upgrade``) gives it rows to read and write but no
UPDATE, DELETE or TRUNCATE on the audit trail, and, not owning any table, it cannot ALTER, DROP or disable a
trigger either.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from .config import database_url, redacted

SQLITE_BUSY_TIMEOUT_S = 30
MIGRATIONS = Path(str(resources.files("leukostage") / "cases" / "migrations"))
UPGRADE_HINT = "leukostage db upgrade"
APPEND_ONLY_TABLES = ("audit_events",)  # the app role may read and add rows, never change or remove them
ROLE_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

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


def dialect_insert(session: Session):
    """The ``insert`` of the session's database, which has ``on_conflict_do_nothing`` (PostgreSQL or SQLite)."""
    from sqlalchemy.dialects import postgresql, sqlite

    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


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


def grant_app_role(role: str, url: str | None = None) -> list[str]:
    """Give the PostgreSQL role ``role`` what the app needs, and no more, on every table of the current schema and
    on the tables later migrations create (default privileges of the role running this, the schema's owner):
    SELECT, INSERT, UPDATE, DELETE on rows, except UPDATE and DELETE on the append-only tables (the audit trail)
    and any write to ``alembic_version``. Returns the statements it ran. Run it as the owner of the schema.

    Raises:
        ValueError: not PostgreSQL; a role name that is not a plain lower-case identifier; a role that does not
            exist, is a superuser, or owns the tables (then it could alter or empty the audit trail anyway).
    """
    url = url or database_url()
    if make_url(url).get_backend_name() != "postgresql":
        raise ValueError("database roles are PostgreSQL's: a SQLite file is protected by its file permissions")
    if not ROLE_RE.match(role):
        raise ValueError(f"role {role[:70]!r}: use a lower-case identifier (letters, digits, '_')")
    with get_engine(url).begin() as conn:
        owner = conn.execute(
            text("SELECT tableowner FROM pg_tables WHERE schemaname = current_schema() AND tablename = 'audit_events'")
        ).scalar()
        if owner is None:
            raise ValueError(f"the database is not migrated; run `{UPGRADE_HINT}` first (as the owner)")
        found = conn.execute(text("SELECT rolsuper FROM pg_roles WHERE rolname = :r"), {"r": role}).first()
        if found is None:
            raise ValueError(f"no role {role!r}; create it first: CREATE ROLE {role} LOGIN PASSWORD '...'")
        if found[0]:
            raise ValueError(f"role {role!r} is a superuser: it could empty the audit trail; use an ordinary role")
        if owner == role:
            raise ValueError(
                f"role {role!r} owns the tables (it ran `db upgrade`): the app needs a role of its own, "
                "which cannot alter or empty the audit trail"
            )
        database = _quoted(conn.execute(text("SELECT current_database()")).scalar())
        schema = _quoted(conn.execute(text("SELECT current_schema()")).scalar())
        statements = [
            f"GRANT CONNECT ON DATABASE {database} TO {role}",
            f"GRANT USAGE ON SCHEMA {schema} TO {role}",
            f"REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM {role}",
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role}",
            *(f"REVOKE UPDATE, DELETE, TRUNCATE ON {t} FROM {role}" for t in APPEND_ONLY_TABLES),
            f"REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON alembic_version FROM {role}",
            f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {role}",
            f"ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {role}",
            f"ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT USAGE, SELECT ON SEQUENCES TO {role}",
        ]
        for statement in statements:
            conn.execute(text(statement))
    return statements


def _quoted(name: str) -> str:
    """A PostgreSQL identifier, quoted."""
    return '"' + name.replace('"', '""') + '"'
