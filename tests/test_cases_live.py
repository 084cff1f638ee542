"""The case API under a real gunicorn server, on SQLite and PostgreSQL: many clients uploading to one case at once,
and a worker killed (SIGKILL) in the middle of an upload."""

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
