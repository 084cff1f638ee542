"""The case database itself: the audit trail is append-only in the database (UPDATE, DELETE, and TRUNCATE on
PostgreSQL), and the app can run as a PostgreSQL role that may use every table but cannot change, empty, alter or
drop the audit trail (`leukostage db grant ROLE`), on a real PostgreSQL server."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import uuid

import pytest
from cases_fixtures import PASSWORD, People
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from leukostage.cases import db, service, users


def _one_event(url: str) -> None:
    with db.session_scope(url) as s:
        user = users.add_user(s, "ann", "technician", PASSWORD)
        case = service.create_case(s, user, {"accession": "AUDIT-1"}, {"name": "m", "version": "1"})
        service.record(s, "viewed", user, case.id, what="audit")


def _refused(url: str, statement: str) -> str:
    """The database's error message for ``statement`` (which must fail)."""
    engine = create_engine(url)
    try:
        with pytest.raises(DBAPIError) as err, engine.begin() as conn:
            conn.execute(text(statement))
        return str(err.value.orig)
    finally:
        engine.dispose()


def test_the_audit_trail_refuses_update_delete_and_truncate(instance):
    """Even for the schema's owner (here a superuser): triggers, not privileges, refuse these."""
    _one_event(instance.url)
    statements = ["UPDATE audit_events SET action = 'x'", "DELETE FROM audit_events"]
    if instance.url.startswith("postgresql"):
        statements += ["TRUNCATE audit_events", "TRUNCATE cases CASCADE"]  # CASCADE would empty the trail too
    for statement in statements:
        assert "append-only" in _refused(instance.url, statement), statement
    with db.session_scope(instance.url) as s:
        assert len(service.audit_events(s, 1)) == 2  # created, viewed: all still there


def cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "leukostage.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


@pytest.fixture
def app_role(pg_cluster) -> tuple[str, str, str]:
    """A migrated PostgreSQL database (owned by the cluster's superuser), an ordinary login role for the app with
    `leukostage db grant` applied; returns (owner URL, app URL, role)."""
    url = pg_cluster.create_database()
    db.upgrade(url)
    role = f"app_{uuid.uuid4().hex[:8]}"
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"CREATE ROLE {role} LOGIN"))
    engine.dispose()
    r = cli("db", "grant", role, env={"LEUKOSTAGE_DATABASE_URL": url})
    assert r.returncode == 0, r.stderr
    assert f"REVOKE UPDATE, DELETE, TRUNCATE ON audit_events FROM {role};" in r.stdout
    yield url, make_url(url).set(username=role).render_as_string(hide_password=False), role
    db.dispose_all()


def test_the_app_role_runs_the_whole_workflow(app_role, model_path, case_fields, tmp_path):
    """Every table the app writes is granted: users, tokens, cases, fields (images in the database), results,
    review, exports, audit events, failed sign-ins, the shared session secret."""
    from leukostage.web import create_app

    _, app_url, _ = app_role
    with db.session_scope(app_url) as s:
        tokens = {
            n: users.issue_token(s, users.add_user(s, n, r, PASSWORD))
            for n, r in (("t", "technician"), ("r", "reviewer"))
        }
    app = create_app(
        {
            "TESTING": True,
            "MODEL_PATH": str(model_path),
            "DATABASE_URL": app_url,
            "INSTANCE": str(tmp_path),
            "WARM_UP": False,
        }
    )
    c = app.test_client()
    tech, rev = People.auth(tokens["t"]), People.auth(tokens["r"])
    cid = c.post("/api/v1/cases", json={"accession": "ROLE-1"}, headers=tech).json["id"]
    r = c.post(
        f"/api/v1/cases/{cid}/images",
        headers=tech,
        content_type="multipart/form-data",
        data={"files": [(io.BytesIO(case_fields["mid"][0]), "f.jpg")]},
    )
    assert r.status_code == 201 and r.json[0]["image_id"]
    assert c.get(f"/api/v1/cases/{cid}/images/{r.json[0]['image_id']}", headers=tech).data == case_fields["mid"][0]
    assert c.post(f"/api/v1/cases/{cid}/review", json={"final_call": "mid"}, headers=rev).status_code == 200
    assert c.get(f"/api/v1/cases/{cid}/export.csv", headers=rev).status_code == 200
    events = c.get(f"/api/v1/cases/{cid}/audit", headers=rev).json["events"]
    assert [e["action"] for e in events][:3] == ["created", "image_added", "viewed"]
    page = c.get("/login").get_data(as_text=True)
    csrf = page.split('name="csrf_token" value="')[1].split('"')[0]
    assert c.post("/login", data={"username": "t", "password": "wrong", "csrf_token": csrf}).status_code == 401
    assert c.post("/login", data={"username": "t", "password": PASSWORD, "csrf_token": csrf}).status_code == 302


@pytest.mark.parametrize(
    ("statement", "says"),
    [
        ("TRUNCATE audit_events", "permission denied"),
        ("TRUNCATE cases CASCADE", "permission denied"),
        ("DELETE FROM audit_events", "permission denied"),
        ("UPDATE audit_events SET action = 'x'", "permission denied"),
        ("ALTER TABLE audit_events DISABLE TRIGGER ALL", "must be owner"),
        ("DROP TRIGGER audit_events_no_truncate ON audit_events", "must be owner"),
        ("DROP TABLE audit_events", "must be owner"),
        ("UPDATE alembic_version SET version_num = 'x'", "permission denied"),
    ],
)
def test_the_app_role_cannot_change_empty_or_alter_the_audit_trail(app_role, statement, says):
    owner_url, app_url, _ = app_role
    _one_event(owner_url)
    assert says in _refused(app_url, statement)


def test_db_grant_refuses_roles_that_could_empty_the_trail(app_role):
    owner_url, _, role = app_role
    owner = make_url(owner_url).username
    for name, message in (
        (owner, "is a superuser"),  # the cluster's superuser owns the tables here
        ("nobody_here", "no role 'nobody_here'; create it first"),
        ("Robert'); DROP TABLE cases;--", "use a lower-case identifier"),
    ):
        r = cli("db", "grant", name, env={"LEUKOSTAGE_DATABASE_URL": owner_url})
        assert r.returncode == 2 and message in r.stderr, r.stderr
    engine = create_engine(owner_url)
    with engine.begin() as conn:  # an ordinary role that owns the tables (it ran the migrations) is refused too
        conn.execute(text(f"ALTER TABLE audit_events OWNER TO {role}"))
    engine.dispose()
    r = cli("db", "grant", role, env={"LEUKOSTAGE_DATABASE_URL": owner_url})
    assert r.returncode == 2 and f"role {role!r} owns the tables" in r.stderr


def test_db_grant_is_for_postgresql(tmp_path):
    r = cli("db", "grant", "app", env={"LEUKOSTAGE_DATABASE_URL": f"sqlite:///{tmp_path}/x.sqlite3"})
    assert r.returncode == 2 and "database roles are PostgreSQL's" in r.stderr


def test_db_grant_needs_a_migrated_database(pg_cluster):
    r = cli("db", "grant", "app", env={"LEUKOSTAGE_DATABASE_URL": pg_cluster.create_database()})
    assert r.returncode == 2 and "run `leukostage db upgrade` first" in r.stderr
