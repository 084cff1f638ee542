"""Case service functions on a real database (SQLite and PostgreSQL): create, add fields, summarise, review, amend,
audit; plus users and tokens. Fields are real images through the real pipeline (predict.analyse_bytes)."""

from __future__ import annotations

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from leukostage.cases import db, service, users
from leukostage.cases.models import AuditEvent, Image, Result, User
from leukostage.predict import analyse_bytes

MODEL = {"name": "test-model", "version": "1"}


@pytest.fixture
def staff(instance):
    with db.session_scope(instance.url) as s:
        out = {role: users.add_user(s, role[:4], role, "password-123") for role in ("technician", "reviewer")}
    return out


def analysed(data: bytes, name: str, predictor) -> service.Field:
    a = analyse_bytes(data, name, predictor)
    h, w = a.rgb.shape[:2] if a.rgb is not None else (None, None)
    return service.Field(name, data, a.result, w, h)


def new_case(url, user, accession="ACC-1", **extra) -> int:
    with db.session_scope(url) as s:
        return service.create_case(s, user, {"accession": accession, **extra}, MODEL).id


def test_create_and_duplicate_accession(instance, staff):
    cid = new_case(instance.url, staff["technician"], patient_ref="Patient/p1", note="left arm")
    with db.session_scope(instance.url) as s:
        case = service.case_dict(s, cid)
    assert case["status"] == "open" and case["accession"] == "ACC-1" and case["patient_ref"] == "Patient/p1"
    assert case["created_by"] == "tech" and case["model"] == MODEL and case["images"] == []
    assert case["summary"]["case_call"] == "uncertain" and case["review"] is None and case["amendments"] == []
    assert case["created_at"].endswith("Z")
    with pytest.raises(service.Conflict, match="exists already"), db.session_scope(instance.url) as s:
        service.create_case(s, staff["technician"], {"accession": "ACC-1"}, MODEL)
    with pytest.raises(service.InvalidInput, match="accession"), db.session_scope(instance.url) as s:
        service.create_case(s, staff["technician"], {"accession": "  "}, MODEL)


def test_fields_stored_with_results_and_refusals_not_counted(instance, staff, case_fields, predictor):
    cid = new_case(instance.url, staff["technician"])
    store = instance.store()
    uploads = [analysed(d, f"mid-{i}.jpg", predictor) for i, d in enumerate(case_fields["mid"][:3])]
    uploads.append(analysed(b"not an image at all", "../../etc/passwd", predictor))
    entries = []
    for f in uploads:
        with db.session_scope(instance.url) as s:
            entries.append(service.add_image(s, staff["technician"], cid, f, store, MODEL))
    assert [e["image_id"] for e in entries] == sorted({e["image_id"] for e in entries})
    assert entries[-1]["valid"] is False and entries[-1]["code"] == "unreadable"
    with db.session_scope(instance.url) as s:
        case = service.case_dict(s, cid)
        assert s.scalar(select(Result).where(Result.image_id == entries[0]["image_id"])).payload["model"] == MODEL
    assert len(case["images"]) == 4
    assert case["images"][-1]["filename"] == "../../etc/passwd"  # metadata only ...
    assert store.read(case["images"][-1]["sha256"]) == b"not an image at all"  # ... the file is named by digest
    assert case["images"][0]["width"] and case["images"][0]["height"]
    summary = case["summary"]
    assert summary["counts"]["refused"] == {"unreadable": 1}
    assert summary["counted"] == sum(1 for e in entries if e["valid"])
    assert summary["case_rule"]


def test_review_needs_a_reviewer_and_freezes_the_case(instance, staff, case_fields, predictor):
    tech, rev = staff["technician"], staff["reviewer"]
    cid = new_case(instance.url, tech)
    store = instance.store()
    with db.session_scope(instance.url) as s:
        image_id = service.add_image(s, tech, cid, analysed(case_fields["early"][0], "e.jpg", predictor), store, MODEL)[
            "image_id"
        ]
        model_payload = s.get(Image, image_id).result.payload
    body = {"final_call": "early", "comment": "agree", "image_overrides": [{"image_id": image_id, "label": "mid"}]}
    with pytest.raises(service.Forbidden), db.session_scope(instance.url) as s:
        service.sign_off(s, tech, cid, body)
    with pytest.raises(service.InvalidInput, match="final_call"), db.session_scope(instance.url) as s:
        service.sign_off(s, rev, cid, {**body, "final_call": "stage-4"})
    with db.session_scope(instance.url) as s:
        service.sign_off(s, rev, cid, body)
    with db.session_scope(instance.url) as s:
        case = service.case_dict(s, cid)
    assert case["status"] == "signed_off"
    assert case["review"]["final_call"] == "early" and case["review"]["reviewer"] == "revi"
    assert case["images"][0]["override"]["label"] == "mid"
    assert case["images"][0]["result"] == model_payload  # the model's result is never overwritten
    with pytest.raises(service.Conflict, match="amend"), db.session_scope(instance.url) as s:
        service.sign_off(s, rev, cid, body)
    with pytest.raises(service.Conflict), db.session_scope(instance.url) as s:
        service.add_image(s, tech, cid, analysed(case_fields["early"][1], "e2.jpg", predictor), store, MODEL)


def test_overrides_only_for_this_cases_fields(instance, staff, case_fields, predictor):
    tech, rev = staff["technician"], staff["reviewer"]
    a, b = new_case(instance.url, tech, "A"), new_case(instance.url, tech, "B")
    with db.session_scope(instance.url) as s:
        other = service.add_image(
            s, tech, b, analysed(case_fields["normal"][0], "n.jpg", predictor), instance.store(), MODEL
        )["image_id"]
    with pytest.raises(service.NotFound, match="not a field of case"), db.session_scope(instance.url) as s:
        service.sign_off(s, rev, a, {"final_call": "normal", "image_overrides": [{"image_id": other, "label": "mid"}]})
    with db.session_scope(instance.url) as s:
        assert service.get_case(s, a).status == "open"  # the failed sign-off left nothing behind


def test_amend_after_sign_off_only_with_a_reason(instance, staff):
    tech, rev = staff["technician"], staff["reviewer"]
    cid = new_case(instance.url, tech)
    with pytest.raises(service.Conflict, match="not signed off"), db.session_scope(instance.url) as s:
        service.amend(s, rev, cid, {"reason": "x"})
    with db.session_scope(instance.url) as s:
        service.sign_off(s, rev, cid, {"final_call": "normal"})
    with pytest.raises(service.InvalidInput, match="reason"), db.session_scope(instance.url) as s:
        service.amend(s, rev, cid, {"final_call": "mid"})
    with pytest.raises(service.Forbidden), db.session_scope(instance.url) as s:
        service.amend(s, tech, cid, {"reason": "tech tries"})
    with db.session_scope(instance.url) as s:
        service.amend(s, rev, cid, {"reason": "second look", "final_call": "mid", "comment": "blasts seen"})
    with db.session_scope(instance.url) as s:
        case = service.case_dict(s, cid)
        events = service.audit_events(s, cid)
    assert case["status"] == "amended" and case["review"]["final_call"] == "normal"
    assert case["amendments"] == [
        {
            "reason": "second look",
            "by": "revi",
            "at": case["amendments"][0]["at"],
            "final_call": "mid",
            "comment": "blasts seen",
        }
    ]
    assert [e["action"] for e in events] == ["created", "signed_off", "amended"]
    assert events[-1]["user"] == "revi" and events[-1]["detail"]["final_call"] == "mid"


def test_audit_events_are_append_only_in_the_database(instance, staff):
    new_case(instance.url, staff["technician"])
    for statement in ("UPDATE audit_events SET action = 'forged'", "DELETE FROM audit_events"):
        with pytest.raises(DBAPIError, match="append-only"), db.session_scope(instance.url) as s:
            s.execute(text(statement))
    with db.session_scope(instance.url) as s:
        assert [e.action for e in s.scalars(select(AuditEvent))] == ["created"]


def test_list_newest_first_filtered_and_paginated(instance, staff):
    tech, rev = staff["technician"], staff["reviewer"]
    ids = [new_case(instance.url, tech, f"LAB-{n}", patient_ref=f"Patient/{n}") for n in range(5)]
    with db.session_scope(instance.url) as s:
        service.sign_off(s, rev, ids[1], {"final_call": "normal"})
        page = service.list_cases(s, per_page=2)
        assert page["total"] == 5 and [c["id"] for c in page["cases"]] == ids[::-1][:2]
        assert [c["id"] for c in service.list_cases(s, page=3, per_page=2)["cases"]] == [ids[0]]
        assert [c["id"] for c in service.list_cases(s, status="signed_off")["cases"]] == [ids[1]]
        assert [c["id"] for c in service.list_cases(s, q="patient/3")["cases"]] == [ids[3]]
        assert service.list_cases(s, q="%")["total"] == 0  # wildcards are literal
        with pytest.raises(service.InvalidInput):
            service.list_cases(s, status="closed")


def test_users_passwords_and_tokens(instance):
    with db.session_scope(instance.url) as s:
        user = users.add_user(s, "ann", "reviewer", "s3cret-pass")
        assert user.password_hash.startswith("$argon2") and "s3cret" not in user.password_hash
        token = users.issue_token(s, user)
        assert users.user_for_token(s, token).username == "ann"
        assert token not in {t.token_hash for t in user.tokens}
        for bad in (
            ("ann", "reviewer", "another-pass"),
            ("bob", "chief", "password-1"),
            ("c d", "admin", "pw-12345"),
            ("eve", "admin", "short"),
        ):
            with pytest.raises(users.UserError):
                users.add_user(s, *bad)
    with db.session_scope(instance.url) as s:
        assert users.authenticate(s, "ann", "s3cret-pass").username == "ann"
        assert users.authenticate(s, "ann", "wrong") is None and users.authenticate(s, "nobody", "x") is None
        assert users.revoke_tokens(s, s.scalar(select(User).where(User.username == "ann"))) == 1
        assert users.user_for_token(s, token) is None


def test_check_storage_finds_orphans_and_missing_files(instance, staff, case_fields, predictor):
    cid = new_case(instance.url, staff["technician"])
    store = instance.store()
    with db.session_scope(instance.url) as s:
        kept = service.add_image(
            s, staff["technician"], cid, analysed(case_fields["mid"][0], "a.jpg", predictor), store, MODEL
        )
        lost = service.add_image(
            s, staff["technician"], cid, analysed(case_fields["mid"][1], "b.jpg", predictor), store, MODEL
        )
    orphan = store.put(b"a field whose rows were never committed")
    store.delete(_sha(instance.url, lost["image_id"]))
    with db.session_scope(instance.url) as s:
        report = service.check_storage(s, store, remove=True, min_age_s=0)
    assert report["orphan_files"] == [orphan] and report["removed"] == [orphan]
    assert report["rows_without_file"] == [{"image_id": lost["image_id"], "case_id": cid}]
    assert not store.exists(orphan) and store.exists(_sha(instance.url, kept["image_id"]))


def _sha(url: str, image_id: int) -> str:
    with db.session_scope(url) as s:
        return s.get(Image, image_id).sha256
