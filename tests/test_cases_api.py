"""The case HTTP API on SQLite and PostgreSQL: the workflow, the security matrix (401/403/404/CSRF), sessions,
the login limit, reports, and that no patient identifier reaches the logs."""

from __future__ import annotations

import csv
import io
import logging
import re
import zlib

import pytest
from cases_fixtures import PASSWORD, People

from leukostage.web.uploads import NOT_AN_IMAGE_CODES

CASE_ROUTE = re.compile(r"^/api/v1/(cases|users)")
ACCESSION, PATIENT = "ACC-SECRET-77", "Patient/SECRET-PATIENT-99"


def upload(client, token, case_id, blobs, names=None):
    names = names or [f"field-{i}.jpg" for i in range(len(blobs))]
    return client.post(
        f"/api/v1/cases/{case_id}/images",
        headers=People.auth(token),
        data={"files": [(io.BytesIO(b), n) for b, n in zip(blobs, names)]},
        content_type="multipart/form-data",
    )


def make_case(client, token, accession=ACCESSION, **extra) -> int:
    r = client.post("/api/v1/cases", json={"accession": accession, **extra}, headers=People.auth(token))
    assert r.status_code == 201, r.json
    return r.json["id"]


@pytest.fixture(scope="session")
def non_smear(data_dir) -> bytes:
    """A real photograph that is not a blood smear (histology): readable, refused by the validator; as a JPEG, so
    that the test client's body stays in memory (over 500 kB it spools to a temporary file it never closes)."""
    import cv2

    ok, jpeg = cv2.imencode(".jpg", cv2.imread(str(sorted((data_dir / "not_blood").glob("*"))[0])))
    assert ok
    return jpeg.tobytes()


def test_a_field_from_another_laboratory_is_uncertain_and_not_counted(case_client, people, case_fields, foreign_cell):
    """A real PBC lymphocyte uploaded to a case with three Advanced fields: its entry says why no class is asserted,
    and the case call is made from the three fields the model knows."""
    c = case_client
    cid = make_case(c, people.tech, accession="ACC-FOREIGN")
    r = upload(c, people.tech, cid, case_fields["advanced"][:3] + [foreign_cell.read_bytes()])
    assert r.status_code == 201, r.json
    entry = r.json[-1]
    assert (entry["valid"], entry["label"], entry["uncertain_reason"]) == (True, "uncertain", "outside_training_domain")
    assert entry["domain"]["in_domain"] is False
    summary = c.get(f"/api/v1/cases/{cid}", headers=People.auth(people.tech)).json["summary"]
    assert summary["counts"]["uncertain"] == {"low_confidence": 0, "outside_training_domain": 1}
    assert summary["counted"] == 3 and summary["case_call"] == "advanced"


def test_workflow_technician_then_reviewer(case_client, people, case_fields, non_smear):
    c = case_client
    cid = make_case(c, people.tech, patient_ref=PATIENT, note="smear 1")
    r = upload(c, people.tech, cid, case_fields["advanced"][:3] + [non_smear, b"GIF89a not a smear"])
    assert r.status_code == 201
    entries, gif = r.json[:4], r.json[4]
    assert len(entries) == 4 and all("image_id" in e for e in entries)
    assert [e["label"] for e in entries[:3]] == ["advanced"] * 3  # three real Advanced fields
    assert entries[-1]["valid"] is False and entries[-1]["code"] not in NOT_AN_IMAGE_CODES  # a refused field, kept
    assert gif["valid"] is False and gif["code"] == "unsupported_format" and "image_id" not in gif  # not stored
    assert all(e["model"]["name"] for e in entries if e["valid"])
    case = c.get(f"/api/v1/cases/{cid}", headers=People.auth(people.tech)).json
    assert case["patient_ref"] == PATIENT and len(case["images"]) == 4
    assert case["summary"]["counted"] == sum(e["valid"] for e in entries)
    assert case["summary"]["case_call"] == "advanced"  # three counted Advanced fields: the rule's minimum
    image_id = entries[0]["image_id"]
    review = {"final_call": "advanced", "comment": "ok", "image_overrides": [{"image_id": image_id, "label": "mid"}]}
    assert c.post(f"/api/v1/cases/{cid}/review", json=review, headers=People.auth(people.tech)).status_code == 403
    r = c.post(f"/api/v1/cases/{cid}/review", json=review, headers=People.auth(people.rev))
    assert r.status_code == 200 and r.json["status"] == "signed_off"
    assert (
        r.json["images"][0]["override"]["label"] == "mid"
        and r.json["images"][0]["result"] == case["images"][0]["result"]
    )
    assert c.post(f"/api/v1/cases/{cid}/review", json=review, headers=People.auth(people.rev)).status_code == 409
    r = upload(c, people.tech, cid, case_fields["advanced"][3:4])
    assert r.status_code == 409 and r.json["error"]["code"] == "case_signed_off"
    r = c.post(
        f"/api/v1/cases/{cid}/amend", json={"reason": "recount", "final_call": "mid"}, headers=People.auth(people.rev)
    )
    assert r.status_code == 200 and r.json["status"] == "amended"
    img = c.get(f"/api/v1/cases/{cid}/images/{image_id}", headers=People.auth(people.tech))
    assert img.status_code == 200 and img.data == case_fields["advanced"][0] and img.mimetype == "image/jpeg"
    overlay = c.get(f"/api/v1/cases/{cid}/images/{image_id}/overlay.png", headers=People.auth(people.tech))
    assert overlay.status_code == 200 and overlay.data.startswith(b"\x89PNG")
    refused_id = entries[-1]["image_id"]
    assert (
        c.get(f"/api/v1/cases/{cid}/images/{refused_id}/overlay.png", headers=People.auth(people.tech)).status_code
        == 422
    )
    events = c.get(f"/api/v1/cases/{cid}/audit", headers=People.auth(people.rev)).json["events"]
    actions = [e["action"] for e in events]
    assert actions[:5] == ["created", "image_added", "image_added", "image_added", "image_added"]
    assert {"viewed", "overridden", "signed_off", "amended"} <= set(actions)
    assert all(e["user"] and e["at"] for e in events)


def header_only_png(side: int = 10_000) -> bytes:
    """A PNG whose header declares side x side pixels (over imaging.MAX_PIXELS): refused before any decoding."""
    ihdr = side.to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    return (
        b"\x89PNG\r\n\x1a\n"
        + len(ihdr).to_bytes(4, "big")
        + b"IHDR"
        + ihdr
        + zlib.crc32(b"IHDR" + ihdr).to_bytes(4, "big")
    )


def test_case_uploads_follow_the_predict_rules_and_store_nothing_refused(case_app, case_client, people, case_fields):
    """Empty, over the per-file limit, not an image, too many pixels: an entry with the code /api/v1/predict gives
    the same file, and nothing stored; the real field beside them is stored."""
    case_app.config["MAX_FILE_BYTES"] = 200_000
    blobs = [b"", b"\xff\xd8\xff" + bytes(200_000), b"this is not an image " * 40, header_only_png()]
    blobs.append(case_fields["early"][0])
    want = ["empty_file", "file_too_large", "unreadable", "too_large"]
    predicted = case_client.post(
        "/api/v1/predict",
        data={"files": [(io.BytesIO(b), f"f{i}.jpg") for i, b in enumerate(blobs)]},
        content_type="multipart/form-data",
    ).json
    assert [e.get("code") for e in predicted[:4]] == want
    cid = make_case(case_client, people.tech, "LIMITS")
    r = upload(case_client, people.tech, cid, blobs)
    assert r.status_code == 201
    assert [e.get("code") for e in r.json[:4]] == want
    assert all(e["valid"] is False and e["reason"] and "image_id" not in e for e in r.json[:4])
    assert all("duplicate_of" not in e for e in r.json[:4])  # a file not stored is no field, nor a copy of one
    assert r.json[4]["valid"] is True and "image_id" in r.json[4]
    case = case_client.get(f"/api/v1/cases/{cid}", headers=People.auth(people.tech)).json
    assert [i["image_id"] for i in case["images"]] == [r.json[4]["image_id"]]
    events = case_client.get(f"/api/v1/cases/{cid}/audit", headers=People.auth(people.tech)).json["events"]
    assert [e["action"] for e in events].count("image_added") == 1


def test_case_uploads_have_the_request_time_budget(case_app, case_client, people, case_fields):
    """Past REQUEST_BUDGET_S no further file is analysed or stored: each says so (and can be sent again)."""
    cid = make_case(case_client, people.tech, "BUDGET")
    case_app.config["REQUEST_BUDGET_S"] = 0
    r = upload(case_client, people.tech, cid, case_fields["mid"][:2])
    assert r.status_code == 201
    assert [e["code"] for e in r.json] == ["over_time_budget"] * 2 and "send it again" in r.json[0]["reason"]
    assert case_client.get(f"/api/v1/cases/{cid}", headers=People.auth(people.tech)).json["images"] == []


def test_reading_a_field_its_heat_map_or_the_audit_trail_is_recorded(case_client, people, case_fields):
    c = case_client
    cid = make_case(c, people.tech, "VIEWS")
    image_id = upload(c, people.tech, cid, case_fields["normal"][:1]).json[0]["image_id"]

    def views() -> list[dict]:
        events = c.get(f"/api/v1/cases/{cid}/audit", headers=People.auth(people.tech)).json["events"]
        return [e for e in events if e["action"] == "viewed"]

    assert views() == []  # the trail is answered as it was before this reading ...
    assert [v["detail"] for v in views()] == [{"what": "audit"}]  # ... which it then records
    assert c.get(f"/api/v1/cases/{cid}/images/{image_id}", headers=People.auth(people.rev)).status_code == 200
    assert (
        c.get(f"/api/v1/cases/{cid}/images/{image_id}/overlay.png", headers=People.auth(people.rev)).status_code == 200
    )
    seen = views()[-2:]
    assert [(v["user"], v["detail"]) for v in seen] == [
        ("rev", {"what": "image", "image_id": image_id}),
        ("rev", {"what": "overlay", "image_id": image_id}),
    ]
    assert c.get(f"/api/v1/cases/{cid}/images/{image_id + 99}", headers=People.auth(people.rev)).status_code == 404
    assert len(views()) == 5  # three earlier readings of the trail, the image, the heat map; not the 404


def test_duplicate_accession_and_bad_bodies(case_client, people):
    make_case(case_client, people.tech, "DUP")
    r = case_client.post("/api/v1/cases", json={"accession": "DUP"}, headers=People.auth(people.tech))
    assert r.status_code == 409 and r.json["error"]["code"] == "duplicate_accession"
    for body, code in (({}, "missing_field"), ({"accession": 5}, "invalid_field")):
        r = case_client.post("/api/v1/cases", json=body, headers=People.auth(people.tech))
        assert r.status_code == 400 and r.json["error"]["code"] == code
    r = case_client.post("/api/v1/cases", data="accession=x", headers=People.auth(people.tech))
    assert r.status_code == 400 and r.json["error"]["code"] == "bad_json"


def case_routes(app) -> list[tuple[str, str]]:
    return [
        (rule.rule, m)
        for rule in app.url_map.iter_rules()
        if CASE_ROUTE.match(rule.rule)
        for m in sorted(rule.methods - {"HEAD", "OPTIONS"})
    ]


def fill(rule: str, case_id: int, image_id: int) -> str:
    return (
        rule.replace("<int:case_id>", str(case_id))
        .replace("<int:image_id>", str(image_id))
        .replace("<username>", "tech")
    )


def test_every_case_route_refuses_without_credentials(case_app, case_client, people):
    routes = case_routes(case_app)
    assert len(routes) >= 16
    for rule, method in routes:
        for headers in ({}, People.auth("forged-token"), {"Authorization": "Basic dGVjaDpwdw=="}):
            r = case_client.open(fill(rule, 1, 1), method=method, headers=headers)
            assert r.status_code == 401, (rule, method, headers)
            assert r.json["error"]["code"] == "unauthorized" and "Bearer" in r.headers["WWW-Authenticate"]


def test_revoked_token_is_refused(case_client, people, instance):
    from leukostage.cases import db, users

    assert case_client.get("/api/v1/cases", headers=People.auth(people.tech)).status_code == 200
    with db.session_scope(instance.url) as s:
        users.revoke_tokens(s, users.get_user(s, "tech"))
    assert case_client.get("/api/v1/cases", headers=People.auth(people.tech)).status_code == 401


def test_roles_unknown_cases_and_other_cases_images(case_app, case_client, people, case_fields):
    c = case_client
    mine, other = make_case(c, people.tech, "MINE"), make_case(c, people.tech, "OTHER")
    other_image = upload(c, people.tech, other, case_fields["normal"][:1]).json[0]["image_id"]
    for path in (f"/api/v1/cases/{mine}/review", f"/api/v1/cases/{mine}/amend"):
        r = c.post(path, json={"final_call": "normal", "reason": "x"}, headers=People.auth(people.tech))
        assert r.status_code == 403 and r.json["error"]["code"] == "forbidden"
    for path in (
        f"/api/v1/cases/{mine}/images/{other_image}",
        f"/api/v1/cases/{mine}/images/{other_image}/overlay.png",
    ):
        r = c.get(path, headers=People.auth(people.rev))
        assert r.status_code == 404 and r.json["error"]["code"] == "unknown_image"
    r = c.post(
        f"/api/v1/cases/{mine}/review",
        headers=People.auth(people.rev),
        json={"final_call": "normal", "image_overrides": [{"image_id": other_image, "label": "mid"}]},
    )
    assert r.status_code == 404
    for rule, method in case_routes(case_app):
        if "<int:case_id>" not in rule:
            continue
        r = c.open(
            fill(rule, 999999, other_image),
            method=method,
            headers=People.auth(people.rev),
            json={"final_call": "normal", "reason": "x"},
        )
        assert r.status_code == 404, (rule, method)
    assert (
        c.post(f"/api/v1/cases/{mine}/amend", json={"reason": "x"}, headers=People.auth(people.admin)).status_code
        == 409
    )  # admin may review; nothing to amend yet


def login(client, username="tech", password=PASSWORD, headers=None):
    page = client.get("/login")
    token = re.search(rb'name="csrf_token" value="([^"]+)"', page.data).group(1).decode()
    form = {"username": username, "password": password, "csrf_token": token}
    return client.post("/login", data=form, headers=headers or {}), token


def test_session_login_csrf_and_cookie_flags(case_client, people):
    c = case_client
    r, token = login(c)
    assert r.status_code == 302
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert c.get("/api/v1/cases").status_code == 200  # the session authenticates the API
    r = c.post("/api/v1/cases", json={"accession": "FORGED"})  # a cross-site form could do this: no CSRF token
    assert r.status_code == 400 and r.json["error"]["code"] == "csrf_failed"
    r = c.post("/api/v1/cases", json={"accession": "REAL"}, headers={"X-CSRFToken": token})
    assert r.status_code == 201
    cid = r.json["id"]
    forged_forms = [
        (f"/api/v1/cases/{cid}/images", {"files": (io.BytesIO(b"x"), "a.jpg")}),
        (f"/api/v1/cases/{cid}/review", {"final_call": "normal"}),
        (f"/api/v1/cases/{cid}/amend", {"reason": "x"}),
    ]
    for path, form in forged_forms:  # plain HTML form posts from another site carry the cookie, not the token
        r = c.post(path, data=form, content_type="multipart/form-data")
        assert r.status_code == 400 and r.json["error"]["code"] == "csrf_failed", path
    assert c.get(f"/api/v1/cases/{cid}").json["images"] == []
    assert c.post("/logout").status_code == 400  # logout is a write too
    assert c.post("/logout", data={"csrf_token": token}).status_code == 302
    assert c.get("/api/v1/cases").status_code == 401


def test_revoking_a_users_tokens_ends_their_sessions_everywhere(case_app, case_client, people, instance):
    from leukostage.cases import db, users

    elsewhere = second_worker(case_app).test_client()
    assert login(case_client)[0].status_code == 302 and login(elsewhere)[0].status_code == 302
    assert case_client.get("/api/v1/cases").status_code == elsewhere.get("/api/v1/cases").status_code == 200
    assert login(case_client, username="rev")[0].status_code == 302  # the same browser, now as another user
    with db.session_scope(instance.url) as s:
        users.revoke_tokens(s, users.get_user(s, "rev"))
    assert case_client.get("/api/v1/cases").status_code == 401
    assert elsewhere.get("/api/v1/cases").status_code == 200  # tech's session is not rev's
    assert login(case_client, username="rev")[0].status_code == 302  # signing in again starts a new session
    assert case_client.get("/api/v1/cases").status_code == 200


def test_a_disabled_account_loses_its_sessions_and_tokens(case_client, people, instance):
    from leukostage.cases import db, users

    assert login(case_client)[0].status_code == 302
    with db.session_scope(instance.url) as s:
        users.get_user(s, "tech").active = False
    assert case_client.get("/api/v1/cases").status_code == 401
    assert case_client.get("/api/v1/cases", headers=People.auth(people.tech)).status_code == 401


def test_bearer_tokens_expire(case_client, people, instance):
    from datetime import timedelta

    from leukostage.cases import db, users
    from leukostage.cases.models import ApiToken, utcnow

    with db.session_scope(instance.url) as s:
        token = users.issue_token(s, users.get_user(s, "tech"), days=2)
        expires = users.token_expiry(s, token)
    assert timedelta(days=2) - timedelta(minutes=1) < expires - utcnow() <= timedelta(days=2)
    assert case_client.get("/api/v1/cases", headers=People.auth(token)).status_code == 200
    with db.session_scope(instance.url) as s:
        s.query(ApiToken).filter_by(token_hash=users.hash_token(token)).update({"expires_at": utcnow()})
    r = case_client.get("/api/v1/cases", headers=People.auth(token))
    assert r.status_code == 401 and r.json["error"]["code"] == "unauthorized"
    with pytest.raises(users.UserError, match="at least 1 day"), db.session_scope(instance.url) as s:
        users.issue_token(s, users.get_user(s, "tech"), days=0)


@pytest.mark.parametrize(("setting", "secure"), [("1", True), ("on", True), ("no", False), ("false", False)])
def test_session_cookie_secure_setting(case_app, people, monkeypatch, setting, secure):
    """LEUKOSTAGE_SESSION_COOKIE_SECURE (as the environment gives it: text) turns the cookie's Secure flag on."""
    monkeypatch.setenv("LEUKOSTAGE_SESSION_COOKIE_SECURE", setting)
    r, _ = login(second_worker(case_app).test_client())
    assert r.status_code == 302 and ("; Secure" in r.headers["Set-Cookie"]) is secure


@pytest.mark.parametrize("key", ["short", "x" * 31, 12345678])
def test_a_secret_key_under_32_bytes_is_refused(case_app, key):
    with pytest.raises(ValueError, match="at least 32 random bytes"):
        second_worker(case_app, SECRET_KEY=key)


def test_the_session_secret_file_is_never_readable_by_others(tmp_path, monkeypatch):
    """Created with mode 0600 (not chmod-ed after it was written, when others could already read it), once: every
    worker racing to create it reads the same secret."""
    import os
    import stat
    import threading
    from pathlib import Path

    from leukostage.web.auth import secret_file

    def no_chmod(*args, **kwargs):
        raise AssertionError("the mode must come with the file, not from a later chmod")

    monkeypatch.setattr(os, "chmod", no_chmod)
    monkeypatch.setattr(Path, "chmod", no_chmod)
    old = os.umask(0o022)
    try:
        got: list[str] = []
        workers = [threading.Thread(target=lambda: got.append(secret_file(tmp_path / "inst"))) for _ in range(8)]
        [t.start() for t in workers]
        [t.join() for t in workers]
    finally:
        os.umask(old)
    assert len(got) == 8 and len(set(got)) == 1 and len(got[0]) == 64
    path = tmp_path / "inst" / "secret_key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in (tmp_path / "inst").iterdir()] == ["secret_key"]  # no temporary file left


def test_on_postgresql_every_node_signs_sessions_with_the_databases_secret(pg_cluster, model_path, tmp_path):
    """Two app nodes with their own instance folders on one PostgreSQL database: a session from one is valid on the
    other (the key is the database's, made by the first node that asked)."""
    from leukostage.cases import db, users
    from leukostage.web import create_app

    url = pg_cluster.create_database()
    db.upgrade(url)
    with db.session_scope(url) as s:
        users.add_user(s, "tech", "technician", PASSWORD)
    a, b = (
        create_app(
            {
                "TESTING": True,
                "MODEL_PATH": str(model_path),
                "DATABASE_URL": url,
                "INSTANCE": str(tmp_path / node),
                "STORAGE": str(tmp_path / node / "images"),
                "WARM_UP": False,
            }
        )
        for node in ("node-a", "node-b")
    )
    assert a.config["SECRET_KEY"] == b.config["SECRET_KEY"] and len(a.config["SECRET_KEY"]) == 64
    client_a, client_b = a.test_client(), b.test_client()
    assert login(client_a)[0].status_code == 302
    client_b.set_cookie("session", client_a.get_cookie("session").value)
    assert client_b.get("/api/v1/cases").status_code == 200
    assert not (tmp_path / "node-a" / "secret_key").exists() and not (tmp_path / "node-b" / "secret_key").exists()


def test_login_form_needs_csrf_and_right_password(case_client, people):
    c = case_client
    r = c.post("/login", data={"username": "tech", "password": PASSWORD})
    assert r.status_code == 400 and r.json["error"]["code"] == "csrf_failed"
    r, _ = login(c, password="wrong password")
    assert r.status_code == 401 and b"Wrong user name or password" in r.data
    r, _ = login(c)
    assert r.status_code == 302 and r.headers["Location"].startswith("/")
    page = c.get("/login")
    token = re.search(rb'name="csrf_token" value="([^"]+)"', page.data).group(1).decode()
    r = c.post(
        "/login", data={"username": "tech", "password": PASSWORD, "csrf_token": token, "next": "https://evil.example/"}
    )
    assert "evil" not in r.headers["Location"]  # no open redirect


def second_worker(case_app, **config):
    """Another app on the same database and instance: what a second gunicorn worker or app node is."""
    from leukostage.web import create_app

    return create_app({**{k: case_app.config[k] for k in CASE_APP_KEYS}, **config})


CASE_APP_KEYS = ("TESTING", "MODEL_PATH", "DATABASE_URL", "STORAGE", "INSTANCE", "WARM_UP")


def test_failed_logins_are_counted_per_account_across_workers(case_app, people):
    """Failures are counted in the database: two workers (two apps) share one count, so N workers do not allow N
    times the limit; past it even the right password is refused (429, Retry-After), and other accounts are not."""
    case_app.config["LOGIN_MAX_FAILURES"] = 3
    other = second_worker(case_app, LOGIN_MAX_FAILURES=3)
    a, b = case_app.test_client(), other.test_client()
    statuses = [login(a, password="guess")[0].status_code, login(b, password="guess")[0].status_code]
    statuses.append(login(a, password="guess")[0].status_code)
    assert statuses == [401, 401, 401]
    for client in (a, b):
        r, _ = login(client)  # the right password, too late
        assert r.status_code == 429 and b"Too many failed sign-ins" in r.data
        assert 0 < int(r.headers["Retry-After"]) <= case_app.config["LOGIN_WINDOW_S"]
    assert login(b, username="rev")[0].status_code == 302  # another account from the same address


def test_a_successful_login_clears_the_accounts_failures(case_app, people):
    case_app.config["LOGIN_MAX_FAILURES"] = 3
    c = case_app.test_client()
    assert [login(c, password="guess")[0].status_code for _ in range(2)] == [401, 401]
    assert login(c)[0].status_code == 302
    assert [login(c, password="guess")[0].status_code for _ in range(3)] == [401, 401, 401]
    assert login(c)[0].status_code == 429


def test_failed_logins_per_address_and_trusted_proxies(case_app, people):
    """Per client address: many accounts tried from one address hit its limit. Behind one trusted proxy
    (TRUSTED_PROXIES=1) the address is the client's from X-Forwarded-For; without it that header is ignored, so a
    client cannot pick a fresh address per try."""
    case_app.config.update(LOGIN_MAX_FAILURES_PER_ADDRESS=3)
    c = case_app.test_client()
    spoofed = [login(c, f"u{i}", "guess", {"X-Forwarded-For": f"10.0.0.{i}"})[0].status_code for i in range(4)]
    assert spoofed == [401, 401, 401, 429]
    proxied = second_worker(case_app, TRUSTED_PROXIES=1, LOGIN_MAX_FAILURES_PER_ADDRESS=3).test_client()
    for n in range(3):
        assert login(proxied, f"v{n}", "guess", {"X-Forwarded-For": "192.0.2.7"})[0].status_code == 401
    assert login(proxied, "tech", PASSWORD, {"X-Forwarded-For": "192.0.2.7"})[0].status_code == 429
    assert login(proxied, "tech", PASSWORD, {"X-Forwarded-For": "192.0.2.8"})[0].status_code == 302


@pytest.mark.parametrize("proxies", [-1, "two"])
def test_a_bad_trusted_proxies_setting_is_refused(case_app, proxies):
    with pytest.raises(ValueError, match="TRUSTED_PROXIES"):
        second_worker(case_app, TRUSTED_PROXIES=proxies)


def test_list_search_and_pagination(case_client, people):
    ids = [make_case(case_client, people.tech, f"LAB-{n}") for n in range(3)]
    r = case_client.get("/api/v1/cases?per_page=2", headers=People.auth(people.tech)).json
    assert r["total"] == 3 and [x["id"] for x in r["cases"]] == ids[::-1][:2]
    r = case_client.get("/api/v1/cases?q=LAB-1", headers=People.auth(people.tech)).json
    assert [x["id"] for x in r["cases"]] == [ids[1]]
    r = case_client.get("/api/v1/cases?page=zero", headers=People.auth(people.tech))
    assert r.status_code == 400


def test_reports_fhir_pdf_csv(case_client, people, case_fields):
    c = case_client
    cid = make_case(c, people.tech, "REP-1", patient_ref="Patient/p-1")
    upload(c, people.tech, cid, case_fields["early"][:2])
    r = c.get(f"/api/v1/cases/{cid}/fhir", headers=People.auth(people.rev))
    assert r.status_code == 200 and r.json["resourceType"] == "Bundle" and b"AIAST" in r.data
    from fhir.resources.R4B.bundle import Bundle

    Bundle.model_validate(r.json)
    pdf = c.get(f"/api/v1/cases/{cid}/report.pdf", headers=People.auth(people.rev))
    assert pdf.status_code == 200 and pdf.data.startswith(b"%PDF") and pdf.mimetype == "application/pdf"
    text = c.get(f"/api/v1/cases/{cid}/export.csv", headers=People.auth(people.rev))
    rows = list(csv.reader(io.StringIO(text.get_data(as_text=True))))
    assert text.status_code == 200 and len(rows) == 3
    events = c.get(f"/api/v1/cases/{cid}/audit", headers=People.auth(people.rev)).json["events"]
    assert sorted(e["detail"]["format"] for e in events if e["action"] == "exported") == ["csv", "fhir", "pdf"]
    assert r.mimetype == "application/fhir+json" and "Content-Disposition" not in r.headers
    assert pdf.headers["Content-Disposition"] == f'attachment; filename="case-{cid}.pdf"'
    assert text.mimetype == "text/csv"
    assert text.headers["Content-Disposition"] == f'attachment; filename="case-{cid}.csv"'


def test_a_report_missing_from_the_build_is_501_and_not_recorded(case_client, people, monkeypatch):
    """A format whose module (or its library) is not installed answers 501 before anything is recorded."""
    from leukostage.reports import ReportFormat

    def missing(self):
        raise ImportError(f"No module named 'leukostage.reports.{self.name}'")

    cid = make_case(case_client, people.tech, "REP-501")
    monkeypatch.setattr(ReportFormat, "renderer", missing)
    r = case_client.get(f"/api/v1/cases/{cid}/report.pdf", headers=People.auth(people.rev))
    assert r.status_code == 501 and r.json["error"]["code"] == "reports_unavailable"
    assert "pdf report is not available" in r.json["error"]["message"]
    events = case_client.get(f"/api/v1/cases/{cid}/audit", headers=People.auth(people.rev)).json["events"]
    assert not [e for e in events if e["action"] == "exported"]


def test_no_patient_identifiers_in_logs(case_app, case_client, people, case_fields, caplog):
    caplog.set_level(logging.DEBUG)
    cid = make_case(case_client, people.tech, ACCESSION, patient_ref=PATIENT)
    upload(case_client, people.tech, cid, case_fields["mid"][:1])
    case_client.get(f"/api/v1/cases/{cid}", headers=People.auth(people.tech))
    case_client.get(f"/api/v1/cases?q={PATIENT}", headers=People.auth(people.tech))
    case_client.post(
        "/api/v1/cases", json={"accession": ACCESSION, "patient_ref": PATIENT}, headers=People.auth(people.tech)
    )
    case_client.get(f"/api/v1/cases/{cid}/fhir", headers=People.auth(people.tech))
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "SECRET" not in logged


# --- issue 21: the reviewer's workflow, made safe ---------------------------------------------------------------------


def test_the_same_photo_again_answers_the_existing_field(case_client, people, case_fields):
    c = case_client
    cid = make_case(c, people.tech, "DUP-PHOTO")
    photo = case_fields["advanced"][0]
    first = upload(c, people.tech, cid, [photo], ["a.jpg"]).json[0]
    r = upload(c, people.tech, cid, [photo, photo, case_fields["advanced"][1]], ["a-again.jpg", "a-3.jpg", "b.jpg"])
    assert r.status_code == 201
    again, third, other = r.json
    assert first["duplicate_of"] is None and other["duplicate_of"] is None
    assert again["image_id"] == again["duplicate_of"] == first["image_id"] == third["duplicate_of"]
    assert again["file"] == "a-again.jpg" and again["label"] == first["label"]  # each entry names its upload
    case = c.get(f"/api/v1/cases/{cid}", headers=People.auth(people.tech)).json
    assert len(case["images"]) == 2 and case["summary"]["counted"] == 2 and case["summary"]["case_call"] == "uncertain"
    # a refused upload (the predict rules) is neither stored nor taken for a copy; the photo after it still is one
    r = upload(c, people.tech, cid, [b"", photo], ["empty.jpg", "a-4.jpg"])
    empty, fourth = r.json
    assert empty["code"] == "empty_file" and "image_id" not in empty and "duplicate_of" not in empty
    assert fourth["duplicate_of"] == first["image_id"]
    assert len(c.get(f"/api/v1/cases/{cid}", headers=People.auth(people.tech)).json["images"]) == 2


def test_a_sign_off_needs_a_call_and_non_diagnostic_a_comment(case_client, people, case_fields):
    c = case_client
    cid = make_case(c, people.tech, "ND-1")
    upload(c, people.tech, cid, [b"GIF89a not a smear"])
    for body, code in (
        ({"comment": "agree"}, "missing_field"),
        ({"final_call": "non_diagnostic"}, "missing_field"),
        ({"final_call": "stage 4"}, "bad_class"),
    ):
        r = c.post(f"/api/v1/cases/{cid}/review", json=body, headers=People.auth(people.rev))
        assert r.status_code == 400 and r.json["error"]["code"] == code, body
    assert (
        "final_call"
        in c.post(f"/api/v1/cases/{cid}/review", json={}, headers=People.auth(people.rev)).json["error"]["message"]
    )
    r = c.post(
        f"/api/v1/cases/{cid}/review",
        json={"final_call": "Non-diagnostic", "comment": "no usable field"},
        headers=People.auth(people.rev),
    )
    assert r.status_code == 200 and r.json["final_call"] == "non_diagnostic" and r.json["status"] == "signed_off"
    report = next(
        e["resource"]
        for e in c.get(f"/api/v1/cases/{cid}/fhir", headers=People.auth(people.rev)).json["entry"]
        if e["resource"]["resourceType"] == "DiagnosticReport"
    )
    assert "Non-diagnostic" in report["conclusion"] and "no usable field" in report["conclusion"]


def test_an_amended_case_says_what_is_current_in_every_answer(case_client, people, case_fields):
    c = case_client
    cid = make_case(c, people.tech, "AMEND-1")
    upload(c, people.tech, cid, case_fields["mid"][:3])
    signed = c.post(
        f"/api/v1/cases/{cid}/review",
        json={"final_call": "mid", "comment": "Agree with model"},
        headers=People.auth(people.rev),
    ).json
    assert signed["final_call"] == "mid" and signed["decision"]["comment"] == "Agree with model"
    r = c.post(
        f"/api/v1/cases/{cid}/amend",
        json={"final_call": "Advanced Stage", "reason": "flow cytometry"},
        headers=People.auth(people.admin),
    )
    assert r.status_code == 200
    case = r.json
    assert case["final_call"] == "advanced" and case["status"] == "amended"
    assert (case["decision"]["by"], case["decision"]["reason"], case["decision"]["comment"]) == (
        "admin",
        "flow cytometry",
        None,
    )
    (listed,) = [x for x in c.get("/api/v1/cases", headers=People.auth(people.tech)).json["cases"] if x["id"] == cid]
    assert (listed["case_call"], listed["final_call"], listed["final_call_by"]) == ("mid", "advanced", "admin")
    rows = list(
        csv.DictReader(
            io.StringIO(
                c.get(f"/api/v1/cases/{cid}/export.csv", headers=People.auth(people.rev)).get_data(as_text=True)
            )
        )
    )
    assert {(r["case_call"], r["final_call"], r["final_call_by"]) for r in rows} == {("mid", "advanced", "admin")}
    bundle = c.get(f"/api/v1/cases/{cid}/fhir", headers=People.auth(people.rev)).json
    (report,) = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "DiagnosticReport"]
    assert report["status"] == "amended" and report["conclusionCode"][0]["coding"][0]["code"] == "advanced"
    assert "Agree with model" not in report["conclusion"]


def test_the_worklist_csv_lists_every_matching_case_with_both_calls(case_client, people):
    c = case_client
    ids = [make_case(c, people.tech, f"WL-{n}", patient_ref=f"MRN {n}") for n in range(3)]
    make_case(c, people.tech, "OTHER-1")
    c.post(f"/api/v1/cases/{ids[1]}/review", json={"final_call": "early"}, headers=People.auth(people.rev))
    r = c.get("/api/v1/cases/export.csv?q=WL-", headers=People.auth(people.tech))
    assert r.status_code == 200 and r.mimetype == "text/csv"
    assert r.headers["Content-Disposition"] == 'attachment; filename="cases.csv"'
    rows = list(csv.DictReader(io.StringIO(r.get_data(as_text=True))))
    assert [int(x["id"]) for x in rows] == ids[::-1]
    assert [(x["case_call"], x["final_call"], x["final_call_by"]) for x in rows] == [
        ("uncertain", "", ""),
        ("uncertain", "early", "rev"),
        ("uncertain", "", ""),
    ]
    assert c.get("/api/v1/cases/export.csv?status=closed", headers=People.auth(people.tech)).status_code == 400


def test_removing_a_field_before_sign_off(case_client, people, case_fields):
    c = case_client
    cid = make_case(c, people.tech, "RM-1")
    ids = [e["image_id"] for e in upload(c, people.tech, cid, case_fields["normal"][:3]).json]
    path = f"/api/v1/cases/{cid}/images/{ids[0]}"
    r = c.delete(path, headers=People.auth(people.tech))
    assert r.status_code == 400  # no reason
    r = c.delete(path, json={"reason": ""}, headers=People.auth(people.tech))
    assert r.status_code == 400 and r.json["error"]["code"] == "missing_field"
    r = c.delete(path, json={"reason": "wrong patient"}, headers=People.auth(people.tech))
    assert r.status_code == 204 and r.data == b""
    assert c.delete(path, json={"reason": "again"}, headers=People.auth(people.tech)).status_code == 409
    case = c.get(f"/api/v1/cases/{cid}", headers=People.auth(people.tech)).json
    assert [i["image_id"] for i in case["images"]] == ids[1:]
    assert case["removed_images"][0]["removed"]["reason"] == "wrong patient"
    kept = c.get(path, headers=People.auth(people.tech))  # the bytes stay readable, for the audit trail
    assert kept.status_code == 200 and kept.data == case_fields["normal"][0]
    events = c.get(f"/api/v1/cases/{cid}/audit", headers=People.auth(people.tech)).json["events"]
    assert [e["detail"]["reason"] for e in events if e["action"] == "image_removed"] == ["wrong patient"]
    other = make_case(c, people.tech, "RM-OTHER")
    r = c.delete(f"/api/v1/cases/{other}/images/{ids[1]}", json={"reason": "x"}, headers=People.auth(people.tech))
    assert r.status_code == 404 and r.json["error"]["code"] == "unknown_image"
    c.post(f"/api/v1/cases/{cid}/review", json={"final_call": "normal"}, headers=People.auth(people.rev))
    r = c.delete(f"/api/v1/cases/{cid}/images/{ids[1]}", json={"reason": "late"}, headers=People.auth(people.rev))
    assert r.status_code == 409 and r.json["error"]["code"] == "case_signed_off"


def test_removing_a_field_with_a_session_needs_the_csrf_token(case_client, people, case_fields):
    c = case_client
    cid = make_case(c, people.tech, "RM-CSRF")
    (entry,) = upload(c, people.tech, cid, case_fields["normal"][:1]).json
    _, token = login(c)
    path = f"/api/v1/cases/{cid}/images/{entry['image_id']}"
    assert c.delete(path, json={"reason": "x"}).json["error"]["code"] == "csrf_failed"
    assert c.delete(path, json={"reason": "x"}, headers={"X-CSRFToken": token}).status_code == 204


def test_users_api_is_for_admins_and_a_disabled_users_token_is_refused(case_client, people):
    c = case_client
    admin = People.auth(people.admin)
    for token in (people.tech, people.rev):
        assert c.get("/api/v1/users", headers=People.auth(token)).status_code == 403
        r = c.post("/api/v1/users", json={"username": "x"}, headers=People.auth(token))
        assert r.status_code == 403 and r.json["error"]["code"] == "forbidden"
        assert c.patch("/api/v1/users/tech", json={"disabled": True}, headers=People.auth(token)).status_code == 403
    listed = c.get("/api/v1/users", headers=admin).json["users"]
    assert [(u["username"], u["role"], u["disabled"]) for u in listed] == [
        ("admin", "admin", False),
        ("rev", "reviewer", False),
        ("tech", "technician", False),
    ]
    assert "password" not in str(listed) and "argon2" not in str(listed)
    body = {"username": "temp1", "role": "technician", "password": "correct horse battery 7"}
    r = c.post("/api/v1/users", json=body, headers=admin)
    assert r.status_code == 201 and r.json["username"] == "temp1" and r.json["disabled"] is False
    r = c.post("/api/v1/users", json=body, headers=admin)
    assert r.status_code == 409 and r.json["error"]["code"] == "user_exists"
    assert "already exists" in r.json["error"]["message"]
    r = c.post("/api/v1/users", json={**body, "username": "temp2", "role": "chief"}, headers=admin)
    assert r.status_code == 400 and "technician, reviewer, admin" in r.json["error"]["message"]
    assert c.get("/api/v1/cases", headers=People.auth(people.tech)).status_code == 200
    r = c.patch("/api/v1/users/tech", json={"disabled": True}, headers=admin)
    assert r.status_code == 200 and r.json["disabled"] is True
    r = c.get("/api/v1/cases", headers=People.auth(people.tech))
    assert r.status_code == 401  # the disabled account's token
    assert c.patch("/api/v1/users/tech", json={"disabled": False}, headers=admin).json["disabled"] is False
    assert c.get("/api/v1/cases", headers=People.auth(people.tech)).status_code == 200
    assert c.patch("/api/v1/users/rev", json={"role": "admin"}, headers=admin).json["role"] == "admin"
    assert c.patch("/api/v1/users/tech", json={"password": "new long password"}, headers=admin).status_code == 200
    assert login(c, "tech", "new long password")[0].status_code == 302
    assert c.patch("/api/v1/users/nobody", json={"disabled": True}, headers=admin).status_code == 404
    r = c.patch("/api/v1/users/admin", json={"disabled": True}, headers=admin)
    assert r.status_code == 409 and r.json["error"]["code"] == "own_account"
    assert c.patch("/api/v1/users/tech", json="x", headers=admin).status_code == 400


def test_an_admins_change_to_an_account_ends_its_sessions_on_every_node(case_app, case_client, people):
    """Issue 21's account changes with issue 20's sessions: disabling an account, resetting its password or changing
    its role through /api/v1/users ends the user's sessions on every node (the next request signs in again); their
    tokens are refused while the account is disabled. The admin's own change keeps the admin's own session."""
    admin = People.auth(people.admin)
    elsewhere = second_worker(case_app).test_client()  # another gunicorn worker or app node
    new = "a new long password"
    for change, password in (({"password": new}, PASSWORD), ({"role": "reviewer"}, new), ({"disabled": True}, new)):
        assert login(elsewhere, password=password)[0].status_code == 302
        assert elsewhere.get("/api/v1/cases").status_code == 200
        assert case_client.patch("/api/v1/users/tech", json=change, headers=admin).status_code == 200
        assert elsewhere.get("/api/v1/cases").status_code == 401, change
    assert case_client.get("/api/v1/cases", headers=People.auth(people.tech)).status_code == 401  # disabled: refused
    assert login(elsewhere, password=new)[0].status_code == 401
    assert case_client.patch("/api/v1/users/tech", json={"disabled": False}, headers=admin).status_code == 200
    assert login(elsewhere, password=new)[0].status_code == 302
    assert elsewhere.get("/api/v1/cases").status_code == 200
    # the admin's own password, reset in the admin's own session: that session goes on, every other one ends
    other = second_worker(case_app).test_client()
    assert login(other, "admin")[0].status_code == 302
    r, csrf_token = login(case_client, "admin")
    assert r.status_code == 302
    r = case_client.patch(
        "/api/v1/users/admin", json={"password": "the admins new one"}, headers={"X-CSRFToken": csrf_token}
    )
    assert r.status_code == 200
    assert case_client.get("/api/v1/users").status_code == 200
    assert other.get("/api/v1/users").status_code == 401
