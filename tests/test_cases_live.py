"""The case API under a real gunicorn server, on SQLite and PostgreSQL: many clients uploading to one case at once,
a worker killed (SIGKILL) in the middle of an upload, and two app nodes on one PostgreSQL database."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse

import pytest
from sqlalchemy import func, select
from web_server import HOST, LiveServer, multipart

from leukostage.cases import db
from leukostage.cases.models import AuditEvent, Image, Result

pytestmark = pytest.mark.slow
CLIENTS, PER_CLIENT = 8, 10


def call(
    port: int,
    method: str,
    path: str,
    token: str,
    body: bytes | None = None,
    content_type: str | None = None,
    timeout: float = 120.0,
) -> tuple[int, object]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        headers = {"Authorization": f"Bearer {token}"}
        if content_type:
            headers["Content-Type"] = content_type
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def new_case(port: int, token: str, accession: str) -> int:
    body = json.dumps({"accession": accession, "patient_ref": "Patient/SECRET-LIVE"}).encode()
    status, case = call(port, "POST", "/api/v1/cases", token, body, "application/json")
    assert status == 201, case
    return case["id"]


@pytest.fixture(scope="module")
def eighty_fields(taleqani) -> list[tuple[str, bytes]]:
    """80 real, distinct fields (20 per class)."""
    from leukostage.classes import CLASSES

    out, seen = [], set()
    for c in CLASSES:
        for p in sorted((taleqani / c.folder).glob("*.jpg")):
            data = p.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            if digest not in seen and sum(1 for n, _ in out if n.startswith(c.key)) < 20:
                seen.add(digest)
                out.append((f"{c.key}-{p.name}", data))
    assert len(out) == CLIENTS * PER_CLIENT
    return out


def test_eight_clients_ten_fields_each_into_one_case(instance, people, eighty_fields, model_path, tmp_path):
    log = tmp_path / "serve.log"
    with LiveServer(model_path, workers=2, log=log) as server:
        cid = new_case(server.port, people.tech, "ACC-SECRET-CONCURRENT")
        failures: list = []

        def client(k: int) -> None:
            for name, data in eighty_fields[k * PER_CLIENT : (k + 1) * PER_CLIENT]:
                body, ctype = multipart("files", [(name, data)])
                try:
                    status, out = call(server.port, "POST", f"/api/v1/cases/{cid}/images", people.tech, body, ctype)
                except OSError as exc:
                    failures.append(repr(exc))
                    continue
                if status != 201 or len(out) != 1:
                    failures.append((status, out))

        threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert failures == [], log.read_text(errors="replace")[-3000:]
        status, case = call(server.port, "GET", f"/api/v1/cases/{cid}", people.tech)
    images = case["images"]
    assert len(images) == CLIENTS * PER_CLIENT
    assert len({i["image_id"] for i in images}) == len(images)
    assert sorted(i["sha256"] for i in images) == sorted(hashlib.sha256(d).hexdigest() for _, d in eighty_fields)
    counts = case["summary"]["counts"]
    counted_or_refused = (
        sum(counts[k] for k in ("normal", "early", "mid", "advanced"))
        + sum(counts["uncertain"].values())
        + sum(counts["refused"].values())
    )
    assert counted_or_refused == CLIENTS * PER_CLIENT
    with db.session_scope(instance.url) as s:
        assert s.scalar(select(func.count(Image.id))) == s.scalar(select(func.count(Result.id))) == 80
        assert s.scalar(select(func.count(AuditEvent.id)).where(AuditEvent.action == "image_added")) == 80
    assert "SECRET" not in log.read_text(errors="replace")


def test_worker_killed_mid_upload_leaves_whole_fields_only(instance, people, eighty_fields, model_path, tmp_path):
    with LiveServer(model_path, workers=1, log=tmp_path / "serve.log") as server:
        cid = new_case(server.port, people.tech, "KILL")
        body, ctype = multipart("files", eighty_fields[:30])
        outcome: list = []

        def upload() -> None:
            try:
                outcome.append(call(server.port, "POST", f"/api/v1/cases/{cid}/images", people.tech, body, ctype))
            except (OSError, http.client.HTTPException) as exc:
                outcome.append(exc)

        thread = threading.Thread(target=upload)
        thread.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and _rows(instance.url, cid) < 2:
            time.sleep(0.05)
        stored_before_kill = _rows(instance.url, cid)
        assert stored_before_kill >= 2, "the upload never started storing fields"
        for pid in server.worker_pids():
            os.kill(pid, signal.SIGKILL)
        thread.join(60)
        assert outcome and not (isinstance(outcome[0], tuple) and outcome[0][0] == 201)  # the request died
        # the master replaces the worker; the server answers again
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                status, case = call(server.port, "GET", f"/api/v1/cases/{cid}", people.tech, timeout=5)
                break
            except OSError:
                time.sleep(0.2)
        assert status == 200
        stored = len(case["images"])
        assert stored_before_kill <= stored < 30
        assert all(i["result"].get("code") != "missing_result" for i in case["images"])
        body, ctype = multipart("files", eighty_fields[30:31])
        assert call(server.port, "POST", f"/api/v1/cases/{cid}/images", people.tech, body, ctype)[0] == 201
    with db.session_scope(instance.url) as s:
        assert s.scalar(select(func.count(Image.id))) == s.scalar(select(func.count(Result.id))) == stored + 1
    # a field whose file was written but whose rows never committed is an orphan; db check removes it
    orphan = instance.store().put(b"as a killed worker leaves it: file, no rows")
    check = subprocess.run(
        [sys.executable, "-m", "leukostage.cli", "db", "check", "--min-age", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = json.loads(check.stdout)
    assert check.returncode == 0, check.stdout + check.stderr
    assert orphan in report["removed"] and report["rows_without_file"] == []
    with db.session_scope(instance.url) as s:
        referenced = set(s.scalars(select(Image.sha256)))
    assert set(instance.store().digests()) == referenced


def _rows(url: str, case_id: int) -> int:
    with db.session_scope(url) as s:
        return s.scalar(select(func.count(Image.id)).where(Image.case_id == case_id)) or 0


def _form_login(port: int, username: str, password: str, cookie: str | None = None) -> tuple[int, str | None]:
    """Sign in through the form as a browser does (the page's CSRF token and cookie); returns (status, cookie)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    try:
        conn.request("GET", "/login", headers={"Cookie": cookie} if cookie else {})
        page = conn.getresponse()
        body = page.read().decode()
        cookie = (page.getheader("Set-Cookie") or cookie or "").split(";")[0]
        csrf = body.split('name="csrf_token" value="')[1].split('"')[0]
        form = urllib.parse.urlencode({"username": username, "password": password, "csrf_token": csrf})
        conn.request(
            "POST", "/login", body=form, headers={"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"}
        )
        r = conn.getresponse()
        r.read()
        return r.status, (r.getheader("Set-Cookie") or cookie).split(";")[0]
    finally:
        conn.close()


def _get(port: int, path: str, token: str | None = None, cookie: str | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=120)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {"Cookie": cookie}
        conn.request("GET", path, headers=headers)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def test_two_app_nodes_on_one_postgresql(pg_cluster, eighty_fields, model_path, tmp_path):
    """Two `leukostage serve` processes with their own instance folders on one PostgreSQL database: fields uploaded
    through node A are read through node B, a case is signed off through B and seen by A, the audit trail has every
    step in order, a session from A is valid on B, and failed sign-ins are counted across both nodes."""
    from leukostage.cases import users

    url = pg_cluster.create_database()
    db.upgrade(url)
    with db.session_scope(url) as s:
        tech = users.issue_token(s, users.add_user(s, "tech", "technician", "correct horse battery 9"))
        rev = users.issue_token(s, users.add_user(s, "rev", "reviewer", "correct horse battery 9"))

    def node(name: str) -> LiveServer:
        folder = tmp_path / name
        env = {
            "LEUKOSTAGE_DATABASE_URL": url,
            "LEUKOSTAGE_INSTANCE": str(folder),
            "LEUKOSTAGE_STORAGE": str(folder / "images"),
            "LEUKOSTAGE_LOGIN_MAX_FAILURES": "3",
        }
        return LiveServer(model_path, workers=1, env=env, log=tmp_path / f"{name}.log")

    fields = eighty_fields[:3]
    with node("node-a") as a, node("node-b") as b:
        cid = new_case(a.port, tech, "ACC-SECRET-NODES")
        body, ctype = multipart("files", fields)
        status, entries = call(a.port, "POST", f"/api/v1/cases/{cid}/images", tech, body, ctype)
        assert status == 201 and all(e.get("image_id") for e in entries)
        for (_, data), entry in zip(fields, entries):
            assert _get(b.port, f"/api/v1/cases/{cid}/images/{entry['image_id']}", tech) == (200, data)
        review = json.dumps({"final_call": "normal", "comment": "two nodes"}).encode()
        status, case = call(b.port, "POST", f"/api/v1/cases/{cid}/review", rev, review, "application/json")
        assert status == 200 and case["status"] == "signed_off"
        assert call(a.port, "GET", f"/api/v1/cases/{cid}", tech)[1]["status"] == "signed_off"
        status, pdf = _get(a.port, f"/api/v1/cases/{cid}/report.pdf", rev)
        assert status == 200 and pdf.startswith(b"%PDF")
        status, trail = call(b.port, "GET", f"/api/v1/cases/{cid}/audit", rev)
        events = trail["events"]
        assert [(e["action"], e["user"]) for e in events] == [
            ("created", "tech"),
            *[("image_added", "tech")] * 3,  # through A
            *[("viewed", "tech")] * 3,  # the fields, read through B
            ("signed_off", "rev"),  # through B
            ("viewed", "tech"),  # the case, read through A
            ("exported", "rev"),  # the PDF, through A
        ]
        image_ids = [e["image_id"] for e in entries]
        assert [e["detail"]["image_id"] for e in events[1:4]] == image_ids
        assert [e["detail"] for e in events[4:7]] == [{"what": "image", "image_id": i} for i in image_ids]
        assert [e["id"] for e in events] == sorted(e["id"] for e in events)
        assert [e["at"] for e in events] == sorted(e["at"] for e in events)
        # one session, valid on both nodes (the session key is the database's)
        status, cookie = _form_login(a.port, "tech", "correct horse battery 9")
        assert status == 302 and cookie.startswith("session=")
        assert _get(b.port, "/api/v1/cases", cookie=cookie)[0] == 200
        # failed sign-ins: 2 through A and 1 through B reach the limit of 3 on both
        assert [_form_login(p, "rev", "wrong")[0] for p in (a.port, b.port, a.port)] == [401, 401, 401]
        assert _form_login(b.port, "rev", "correct horse battery 9")[0] == 429
        assert _form_login(a.port, "rev", "correct horse battery 9")[0] == 429
    for name in ("node-a", "node-b"):
        folder = tmp_path / name
        assert not (folder / "secret_key").exists() and not (folder / "images").exists()  # nothing node-local
        assert "SECRET" not in (tmp_path / f"{name}.log").read_text(errors="replace")
