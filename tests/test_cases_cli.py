"""The case verbs of the command line, run as a user runs them (subprocesses), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def cli(*args: str, stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "leukostage.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_db_upgrade_creates_then_is_idempotent(db_url, tmp_path):
    env = {"LEUKOSTAGE_DATABASE_URL": db_url, "LEUKOSTAGE_INSTANCE": str(tmp_path / "inst")}
    first = cli("db", "upgrade", env=env)
    assert first.returncode == 0 and "upgraded from an empty database to revision" in first.stdout
    again = cli("db", "upgrade", env=env)
    assert again.returncode == 0 and "already at revision" in again.stdout


def test_serve_refuses_an_unmigrated_database(db_url, tmp_path):
    env = {"LEUKOSTAGE_DATABASE_URL": db_url, "LEUKOSTAGE_INSTANCE": str(tmp_path / "inst")}
    r = cli("serve", "--port", "1", env=env)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "leukostage db upgrade" in lines[0] and "not migrated" in lines[0]


def test_serve_never_migrates_an_existing_default_database(tmp_path):
    """The README's rule: only a new instance's database is created by `serve`; an existing SQLite file in the
    instance folder that is not migrated (an older version's, an empty one) is refused and left as it was."""
    import sqlite3

    inst = tmp_path / "inst"
    inst.mkdir()
    with sqlite3.connect(inst / "leukostage.sqlite3") as conn:
        conn.execute("CREATE TABLE notes (x TEXT)")
    assert "LEUKOSTAGE_DATABASE_URL" not in os.environ  # the default database (the default_instance fixture)
    r = cli("serve", "--port", "1", env={"LEUKOSTAGE_INSTANCE": str(inst)})
    assert r.returncode == 2 and "not migrated" in r.stderr and "leukostage db upgrade" in r.stderr, r.stderr
    assert "created a new case database" not in r.stderr
    with sqlite3.connect(inst / "leukostage.sqlite3") as conn:  # no table added (not even alembic_version)
        assert conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall() == [("notes",)]


def test_users_add_and_token_alone_on_the_last_line(instance):
    r = cli("users", "add", "tech", "--role", "technician", "--password-stdin", stdin="long enough pw\n")
    assert r.returncode == 0, r.stderr
    assert "long enough pw" not in r.stdout + r.stderr
    again = cli("users", "add", "tech", "--role", "technician", "--password-stdin", stdin="long enough pw\n")
    assert again.returncode == 2 and "already exists" in again.stderr
    bad_role = cli("users", "add", "x", "--role", "chief", "--password-stdin", stdin="long enough pw\n")
    assert bad_role.returncode == 2 and "invalid choice" in bad_role.stderr
    t = cli("users", "token", "tech")
    token = t.stdout.strip().splitlines()[-1]
    assert t.returncode == 0 and len(token) >= 40 and " " not in token

    from leukostage.cases import db, users

    with db.session_scope(instance.url) as s:
        assert users.user_for_token(s, token).username == "tech"
    revoke = cli("users", "token", "tech", "--revoke")
    assert revoke.returncode == 0 and "revoked 1 token" in revoke.stdout
    with db.session_scope(instance.url) as s:
        assert users.user_for_token(s, token) is None
    missing = cli("users", "token", "nobody")
    assert missing.returncode == 2 and "users add nobody" in missing.stderr


def test_users_list_and_set_and_an_existing_name_is_explained(instance):
    """Issue 21: adding an existing name just failed; accounts could not be listed, disabled or reset."""
    assert (
        cli("users", "add", "ann", "--role", "technician", "--password-stdin", stdin="long enough pw\n").returncode == 0
    )
    again = cli("users", "add", "ann", "--role", "reviewer", "--password-stdin", stdin="long enough pw\n")
    assert again.returncode == 2 and len(again.stderr.strip().splitlines()) == 1
    assert "already exists (technician, active)" in again.stderr and "leukostage users set ann" in again.stderr
    assert cli("users", "set", "ann", "--role", "reviewer").stdout.strip() == "ann: reviewer, active"
    token = cli("users", "token", "ann").stdout.strip().splitlines()[-1]
    done = cli("users", "set", "ann", "--disable", "--password-stdin", stdin="another long pw\n")
    assert done.returncode == 0 and done.stdout.strip() == "ann: reviewer, disabled, password reset"
    assert "another long pw" not in done.stdout + done.stderr
    assert cli("users", "list").stdout.strip().splitlines() == ["ann\treviewer\tdisabled"]

    from sqlalchemy import select

    from leukostage.cases import db, users
    from leukostage.cases.models import AuditEvent

    with db.session_scope(instance.url) as s:
        assert users.user_for_token(s, token) is None
        assert users.get_user(s, "ann").session_epoch == 2  # the role change, then the disable: sessions ended
        actions = [(e.action, e.detail["via"]) for e in s.scalars(select(AuditEvent).order_by(AuditEvent.id))]
    assert actions == [
        ("user_created", "cli"),
        ("role_changed", "cli"),
        ("user_disabled", "cli"),
        ("password_reset", "cli"),
    ]
    nothing = cli("users", "set", "ann")
    assert nothing.returncode == 2 and "nothing to change" in nothing.stderr
    missing = cli("users", "set", "nobody", "--enable")
    assert missing.returncode == 2 and "no user 'nobody'" in missing.stderr


def test_users_token_prints_its_expiry(instance):
    import re
    from datetime import UTC, datetime, timedelta

    assert (
        cli("users", "add", "tech", "--role", "technician", "--password-stdin", stdin="long enough pw\n").returncode
        == 0
    )

    def expiry(r) -> timedelta:
        assert r.returncode == 0, r.stderr
        until = re.search(r"valid until (\S+Z)", r.stderr).group(1)
        return datetime.fromisoformat(until.replace("Z", "+00:00")) - datetime.now(UTC)

    assert timedelta(days=89, hours=23) < expiry(cli("users", "token", "tech")) <= timedelta(days=90)
    assert timedelta(days=6, hours=23) < expiry(cli("users", "token", "tech", "--days", "7")) <= timedelta(days=7)
    by_setting = cli("users", "token", "tech", env={"LEUKOSTAGE_TOKEN_DAYS": "3"})
    assert timedelta(days=2, hours=23) < expiry(by_setting) <= timedelta(days=3)
    token = by_setting.stdout.strip().splitlines()[-1]
    assert len(token) >= 40 and " " not in token  # still alone on the last line
    bad = cli("users", "token", "tech", env={"LEUKOSTAGE_TOKEN_DAYS": "a week"})
    assert bad.returncode == 2 and "LEUKOSTAGE_TOKEN_DAYS='a week'" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_serve_refuses_a_short_secret_key_in_one_line():
    r = cli("serve", "--port", "1", env={"LEUKOSTAGE_SECRET_KEY": "too short"})
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1
    assert "LEUKOSTAGE_SECRET_KEY is 9 bytes long; use at least 32 random bytes" in lines[0]


def test_db_check_removes_orphans_and_reports_rows_without_files(instance, people, case_fields, model_path):
    from sqlalchemy import select

    from leukostage.cases import db, service
    from leukostage.cases.models import Image, User
    from leukostage.predict import Predictor, analyse_bytes

    predictor = Predictor.load(model_path)
    with db.session_scope(instance.url) as s:
        tech = s.scalar(select(User).where(User.username == "tech"))
        cid = service.create_case(s, tech, {"accession": "CHK"}, predictor.info).id
        for i, data in enumerate(case_fields["normal"][:2]):
            field = service.Field(f"{i}.jpg", data, analyse_bytes(data, f"{i}.jpg", predictor).result)
            service.add_image(s, tech, cid, field, instance.store(), predictor.info)
    store = instance.store()
    orphan = store.put(b"written, then the worker died before its rows")
    with db.session_scope(instance.url) as s:
        lost = s.scalars(select(Image).where(Image.case_id == cid)).all()[1]
        store.delete(lost.sha256)
        lost_id = lost.id
    dry = cli("db", "check", "--dry-run")
    report = json.loads(dry.stdout)
    assert dry.returncode == 1 and report["orphan_files"] == [orphan] and report["removed"] == []
    young = json.loads(cli("db", "check").stdout)
    assert young["removed"] == []  # under a minute old: could be an upload in flight
    fixed = cli("db", "check", "--min-age", "0")
    report = json.loads(fixed.stdout)
    assert report["removed"] == [orphan] and not store.exists(orphan)
    assert report["rows_without_file"] == [{"image_id": lost_id, "case_id": cid}]
    assert fixed.returncode == 1  # a row still has no file: reported, never deleted


@pytest.mark.parametrize("verb", [("users", "token", "x"), ("db", "check")])
def test_verbs_on_an_unmigrated_database_name_the_upgrade(verb, tmp_path):
    r = cli(*verb, env={"LEUKOSTAGE_DATABASE_URL": f"sqlite:///{tmp_path}/none.db"})
    assert r.returncode == 2 and "leukostage db upgrade" in r.stderr


def test_serve_on_a_fresh_install_creates_the_default_database(tmp_path):
    """No database configured and none there yet: nothing to migrate, so serve creates it and goes on starting (here
    it then stops at the busy port, before forking); a configured database is never created this way (above)."""
    import socket

    env = {k: v for k, v in os.environ.items() if k != "LEUKOSTAGE_DATABASE_URL"}
    env["LEUKOSTAGE_INSTANCE"] = str(tmp_path / "fresh")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        r = subprocess.run(
            [sys.executable, "-m", "leukostage.cli", "serve", "--port", str(busy.getsockname()[1])],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
    assert (tmp_path / "fresh" / "leukostage.sqlite3").is_file()
    assert "created a new case database" in r.stderr
    assert r.returncode == 2 and "not migrated" not in r.stderr  # it got as far as the port check
