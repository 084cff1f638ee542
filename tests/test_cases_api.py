"""The case HTTP API on SQLite and PostgreSQL: the workflow, the security matrix (401/403/404/CSRF), sessions,
the login limit, reports, and that no patient identifier reaches the logs."""

from __future__ import annotations

import csv
import io
import logging
import re

from cases_fixtures import PASSWORD, People

CASE_ROUTE = re.compile(r"^/api/v1/cases")
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


def test_workflow_technician_then_reviewer(case_client, people, case_fields):
    c = case_client
    cid = make_case(c, people.tech, patient_ref=PATIENT, note="smear 1")
    r = upload(c, people.tech, cid, case_fields["advanced"][:3] + [b"GIF89a not a smear"])
    assert r.status_code == 201
    entries = r.json
    assert len(entries) == 4 and all("image_id" in e for e in entries)
    assert [e["label"] for e in entries[:3]] == ["advanced"] * 3  # three real Advanced fields
    assert entries[-1]["valid"] is False and entries[-1]["code"] == "unsupported_format"  # GIF, refused by content
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
    return rule.replace("<int:case_id>", str(case_id)).replace("<int:image_id>", str(image_id))


def test_every_case_route_refuses_without_credentials(case_app, case_client, people):
    routes = case_routes(case_app)
    assert len(routes) >= 12
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


def login(client, username="tech", password=PASSWORD):
    page = client.get("/login")
    token = re.search(rb'name="csrf_token" value="([^"]+)"', page.data).group(1).decode()
    return client.post("/login", data={"username": username, "password": password, "csrf_token": token}), token


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


def test_login_attempts_are_rate_limited(case_app, people):
    case_app.config["LOGIN_RATE_LIMIT"] = "3 per minute"
    c = case_app.test_client()
    statuses = [login(c, password="guess")[0].status_code for _ in range(5)]
    assert statuses[:3] == [401, 401, 401] and statuses[3:] == [429, 429]


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
