"""Fixtures for the case tests (loaded by conftest's ``pytest_plugins``): a real throw-away PostgreSQL cluster,
a migrated database per test on SQLite and on PostgreSQL (``db_url`` is parametrised over both), an instance folder,
users with tokens, and a Flask app on that database.

PostgreSQL comes from Debian's ``postgresql`` package (``make test`` installs it): ``initdb`` + ``pg_ctl`` on a free
loopback port, run as the ``postgres`` user when the tests run as root (initdb refuses root). Missing binaries skip
the PostgreSQL half locally and fail it under CI=true.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from missing import missing

PG_USER = "leuko"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PgCluster:
    port: int

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{PG_USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A fresh, empty database; returns its SQLAlchemy URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user={PG_USER} dbname=postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@pytest.fixture(scope="session", autouse=True)
def default_instance(tmp_path_factory):
    """Every test runs against a migrated throw-away SQLite instance unless it asks for another (``instance``):
    `serve` refuses an unmigrated database, and no test may write ./instance or use the operator's database."""
    from leukostage.cases import db

    root = tmp_path_factory.mktemp("default-instance")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LEUKOSTAGE_INSTANCE", str(root))
        mp.delenv("LEUKOSTAGE_DATABASE_URL", raising=False)
        mp.delenv("LEUKOSTAGE_STORAGE", raising=False)
        db.upgrade()
        yield root


@pytest.fixture(scope="session")
def pg_cluster():
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if not bins:
        missing("PostgreSQL", "no initdb under /usr/lib/postgresql (apt-get install postgresql; `make test` does)")
    bindir = bins[-1].parent
    root = Path(tempfile.mkdtemp(prefix="leukostage-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    run_as: list[str] = []
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        for path in (root, sock):
            shutil.chown(path, "postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    subprocess.run(
        run_as + [str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", PG_USER, "--no-sync"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        run_as
        + [
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(root / "pg.log"),
            "-w",
            "-o",
            f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield PgCluster(port)
    finally:
        from leukostage.cases import db

        db.dispose_all()
        subprocess.run(
            run_as + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """An empty database URL, once per backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'instance' / 'leukostage.sqlite3'}"
    return request.getfixturevalue("pg_cluster").create_database()


@dataclass
class Instance:
    url: str
    root: Path
    storage: Path

    def store(self):
        """The image store the app uses on this database (the database on PostgreSQL, files on SQLite)."""
        from leukostage.cases.store import open_store

        return open_store(self.url, self.storage)

    @property
    def env(self) -> dict[str, str]:
        return {
            "LEUKOSTAGE_INSTANCE": str(self.root),
            "LEUKOSTAGE_DATABASE_URL": self.url,
            "LEUKOSTAGE_STORAGE": str(self.storage),
        }


@pytest.fixture
def instance(db_url, tmp_path, monkeypatch) -> Instance:
    """A migrated database and an instance folder; the environment points at them (CLI subprocesses inherit it)."""
    from leukostage.cases import db

    inst = Instance(db_url, tmp_path / "instance", tmp_path / "instance" / "images")
    for key, value in inst.env.items():
        monkeypatch.setenv(key, value)
    db.upgrade(db_url)
    yield inst
    db.dispose_all()


@dataclass
class People:
    tech: str
    rev: str
    admin: str

    @staticmethod
    def auth(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}


PASSWORD = "correct horse battery 9"


@pytest.fixture
def people(instance) -> People:
    """A technician, a reviewer and an admin (password PASSWORD), with one bearer token each."""
    from leukostage.cases import db, users

    tokens = {}
    with db.session_scope(instance.url) as s:
        for name, role in (("tech", "technician"), ("rev", "reviewer"), ("admin", "admin")):
            tokens[name] = users.issue_token(s, users.add_user(s, name, role, PASSWORD))
    return People(**tokens)


@pytest.fixture
def case_app(instance, model_path):
    from leukostage.web import create_app

    return create_app(
        {
            "TESTING": True,
            "MODEL_PATH": str(model_path),
            "DATABASE_URL": instance.url,
            "STORAGE": str(instance.storage),
            "INSTANCE": str(instance.root),
            "WARM_UP": False,
        }
    )


@pytest.fixture
def case_client(case_app):
    return case_app.test_client()


@pytest.fixture(scope="session")
def case_fields(taleqani) -> dict[str, list[bytes]]:
    """Real fields per class (the first 10 of each class folder), as bytes."""
    from leukostage.classes import CLASSES

    return {c.key: [p.read_bytes() for p in sorted((taleqani / c.folder).glob("*.jpg"))[:10]] for c in CLASSES}
