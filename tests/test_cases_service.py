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


# --- issue 21: the reviewer's workflow, made safe ---------------------------------------------------------------------


def add(url, user, cid, field, store):
    with db.session_scope(url) as s:
        return service.add_image(s, user, cid, field, store, MODEL)


def test_the_same_photo_again_is_the_same_field_counted_once(instance, staff, case_fields, predictor):
    """Issue 21: one Pro-B photo uploaded three times made three fields and met the three-field minimum."""
    tech = staff["technician"]
    cid = new_case(instance.url, tech)
    store = instance.store()
    photo = analysed(case_fields["advanced"][0], "a.jpg", predictor)
    entries = [add(instance.url, tech, cid, photo, store) for _ in range(3)]
    first = entries[0]["image_id"]
    assert entries[0]["duplicate_of"] is None
    assert [(e["image_id"], e["duplicate_of"]) for e in entries[1:]] == [(first, first), (first, first)]
    assert entries[1]["label"] == entries[0]["label"] == "advanced"  # answered with the existing field's result
    with db.session_scope(instance.url) as s:
        case = service.case_dict(s, cid)
        events = service.audit_events(s, cid)
        listed = service.list_cases(s)["cases"][0]
    assert [i["image_id"] for i in case["images"]] == [first]
    assert case["summary"]["counted"] == 1 and case["summary"]["case_call"] == "uncertain"
    assert (listed["images"], listed["counted"], listed["case_call"]) == (1, 1, "uncertain")
    assert [e["action"] for e in events].count("duplicate_upload") == 2
    # another photo is another field
    other = add(instance.url, tech, cid, analysed(case_fields["advanced"][1], "b.jpg", predictor), store)
    assert other["duplicate_of"] is None and other["image_id"] != first


class CountingStore:
    """A real store that counts its writes (what the duplicate check must spare it)."""

    def __init__(self, store):
        self.store, self.puts = store, 0

    def put(self, data, session=None):
        self.puts += 1
        return self.store.put(data, session)

    def __getattr__(self, name):
        return getattr(self.store, name)


@pytest.mark.parametrize("kind", ["files", "database"])
def test_the_same_photo_again_is_not_stored_again_in_either_store(instance, staff, case_fields, predictor, kind):
    """Issue 21's duplicate check with issue 20's stores: only a new field's bytes go to the store."""
    from leukostage.cases.store import open_store

    tech = staff["technician"]
    cid = new_case(instance.url, tech)
    store = CountingStore(open_store(instance.url, instance.storage, kind))
    photo = analysed(case_fields["advanced"][0], "a.jpg", predictor)
    first = add(instance.url, tech, cid, photo, store)
    assert add(instance.url, tech, cid, photo, store)["duplicate_of"] == first["image_id"]
    assert store.puts == 1
    add(instance.url, tech, cid, analysed(case_fields["advanced"][1], "b.jpg", predictor), store)
    assert store.puts == 2 and len(list(store.digests())) == 2
    assert store.read(_sha(instance.url, first["image_id"])) == case_fields["advanced"][0]


def test_rows_of_one_photo_stored_before_the_fix_count_once(instance, staff, case_fields, predictor):
    """A case whose rows already hold the same bytes several times (uploaded before duplicates were refused)."""
    tech = staff["technician"]
    cid = new_case(instance.url, tech)
    store = instance.store()
    entry = add(instance.url, tech, cid, analysed(case_fields["advanced"][0], "a.jpg", predictor), store)
    with db.session_scope(instance.url) as s:  # as the old add_image wrote them: a second and third row
        original = s.get(Image, entry["image_id"])
        for _ in range(2):
            copy = Image(
                case_id=cid,
                sha256=original.sha256,
                filename="again.jpg",
                size_bytes=original.size_bytes,
                uploaded_by_id=tech.id,
            )
            s.add(copy)
            s.flush()
            s.add(
                Result(
                    image_id=copy.id,
                    valid=True,
                    label="advanced",
                    model_name="m",
                    model_version="1",
                    payload=original.result.payload,
                )
            )
    with db.session_scope(instance.url) as s:
        case = service.case_dict(s, cid)
        listed = service.list_cases(s)["cases"][0]
    assert [i["duplicate_of"] for i in case["images"]] == [None, entry["image_id"], entry["image_id"]]
    assert [i["counted"] for i in case["images"]] == [True, False, False]
    assert case["summary"]["counted"] == 1 and case["summary"]["case_call"] == "uncertain"
    assert listed["counted"] == 1 and listed["case_call"] == "uncertain"


def test_a_sign_off_states_a_call_and_non_diagnostic_says_why(instance, staff):
    tech, rev = staff["technician"], staff["reviewer"]
    cid = new_case(instance.url, tech)
    for body, code in (
        ({"comment": "looks fine"}, "missing_field"),
        ({"final_call": ""}, "missing_field"),
        ({"final_call": "uncertain"}, "bad_class"),
        ({"final_call": 3}, "bad_class"),
        ({"final_call": "non_diagnostic"}, "missing_field"),
        ({"final_call": "Non-diagnostic", "comment": "   "}, "missing_field"),
    ):
        with pytest.raises(service.InvalidInput) as err, db.session_scope(instance.url) as s:
            service.sign_off(s, rev, cid, body)
        assert err.value.code == code, body
    with pytest.raises(service.InvalidInput, match="a non_diagnostic call needs a comment"):
        with db.session_scope(instance.url) as s:
            service.sign_off(s, rev, cid, {"final_call": "non_diagnostic"})
    with db.session_scope(instance.url) as s:
        service.sign_off(s, rev, cid, {"final_call": "Non-diagnostic", "comment": "two usable fields only"})
    with db.session_scope(instance.url) as s:
        case = service.case_dict(s, cid)
    assert case["final_call"] == "non_diagnostic" and case["review"]["comment"] == "two usable fields only"


def test_final_call_and_overrides_take_display_names(instance, staff, case_fields, predictor):
    """Issue 21: /predict?class= took "Mid Stage" but final_call refused it."""
    tech, rev = staff["technician"], staff["reviewer"]
    cid = new_case(instance.url, tech)
    image_id = add(instance.url, tech, cid, analysed(case_fields["mid"][0], "m.jpg", predictor), instance.store())[
        "image_id"
    ]
    with db.session_scope(instance.url) as s:
        service.sign_off(
            s, rev, cid, {"final_call": "Mid Stage", "image_overrides": [{"image_id": image_id, "label": "Pro-B ALL"}]}
        )
    with db.session_scope(instance.url) as s:
        service.amend(s, rev, cid, {"reason": "typo", "final_call": "early stage"})
        case = service.case_dict(s, cid)
    assert case["review"]["final_call"] == "mid" and case["images"][0]["override"]["label"] == "advanced"
    assert case["final_call"] == "early"


def test_an_amendment_is_the_statement_in_force_everywhere(instance, staff):
    """Issue 21: after an amendment the case still showed the sign-off's comment and time beside the new call, and
    the list showed only the model's call."""
    tech, rev = staff["technician"], staff["reviewer"]
    cid = new_case(instance.url, tech)
    with db.session_scope(instance.url) as s:
        assert service.case_dict(s, cid)["final_call"] is None
        service.sign_off(s, rev, cid, {"final_call": "mid", "comment": "Agree with model"})
    with db.session_scope(instance.url) as s:
        service.amend(s, rev, cid, {"reason": "flow cytometry", "final_call": "advanced"})
    with db.session_scope(instance.url) as s:
        case = service.case_dict(s, cid)
        (listed,) = service.list_cases(s)["cases"]
    assert case["final_call"] == "advanced"
    now = case["decision"]
    assert (now["kind"], now["by"], now["reason"], now["comment"]) == ("amended", "revi", "flow cytometry", None)
    assert now["at"] == case["amendments"][0]["at"]
    assert [(h["kind"], h["final_call"], h["comment"]) for h in case["history"]] == [
        ("signed_off", "mid", "Agree with model"),
        ("amended", "advanced", None),
    ]
    assert (listed["final_call"], listed["final_call_by"], listed["signed_off_by"]) == ("advanced", "revi", "revi")
    assert listed["final_call_at"] == now["at"] and listed["case_call"] == "uncertain"
    with db.session_scope(instance.url) as s:  # an amendment without a call keeps it
        service.amend(s, rev, cid, {"reason": "note added", "comment": "discussed at the board"})
        case = service.case_dict(s, cid)
    assert case["final_call"] == "advanced" and case["decision"]["changed_call"] is False
    assert case["decision"]["comment"] == "discussed at the board"


def test_a_field_is_removed_before_sign_off_with_a_reason_and_kept(instance, staff, case_fields, predictor):
    tech, rev = staff["technician"], staff["reviewer"]
    cid = new_case(instance.url, tech)
    store = instance.store()
    ids = [
        add(instance.url, tech, cid, analysed(data, f"e{n}.jpg", predictor), store)["image_id"]
        for n, data in enumerate(case_fields["early"][:3])
    ]
    for body in (None, {}, {"reason": "  "}):
        with pytest.raises(service.InvalidInput), db.session_scope(instance.url) as s:
            service.remove_image(s, tech, cid, ids[0], body)
    other = new_case(instance.url, tech, "OTHER")
    with pytest.raises(service.NotFound), db.session_scope(instance.url) as s:
        service.remove_image(s, tech, other, ids[0], {"reason": "x"})
    with db.session_scope(instance.url) as s:
        service.remove_image(s, tech, cid, ids[0], {"reason": "H&E section, not a smear"})
    with pytest.raises(service.Conflict, match="removed already"), db.session_scope(instance.url) as s:
        service.remove_image(s, tech, cid, ids[0], {"reason": "again"})
    with db.session_scope(instance.url) as s:
        case = service.case_dict(s, cid)
        events = service.audit_events(s, cid)
        listed = service.list_cases(s, q="ACC-1")["cases"][0]
        sha = s.get(Image, ids[0]).sha256
    assert [i["image_id"] for i in case["images"]] == ids[1:]
    (removed,) = case["removed_images"]
    assert removed["image_id"] == ids[0] and removed["counted"] is False
    assert (removed["removed"]["by"], removed["removed"]["reason"]) == ("tech", "H&E section, not a smear")
    assert case["summary"]["counted"] == 2 and listed["images"] == 2
    assert store.exists(sha)  # the bytes stay for the audit trail
    (event,) = [e for e in events if e["action"] == "image_removed"]
    assert event["user"] == "tech" and event["detail"] == {
        "image_id": ids[0],
        "sha256": sha,
        "reason": "H&E section, not a smear",
    }
    with pytest.raises(service.Conflict, match="removed"), db.session_scope(instance.url) as s:
        service.sign_off(
            s, rev, cid, {"final_call": "early", "image_overrides": [{"image_id": ids[0], "label": "mid"}]}
        )
    # the same photo uploaded again after its field was removed is a new field
    again = add(instance.url, tech, cid, analysed(case_fields["early"][0], "e0.jpg", predictor), store)
    assert again["duplicate_of"] is None and again["image_id"] not in ids
    with db.session_scope(instance.url) as s:
        service.sign_off(s, rev, cid, {"final_call": "early"})
    with pytest.raises(service.Conflict, match="before sign-off") as err, db.session_scope(instance.url) as s:
        service.remove_image(s, tech, cid, ids[1], {"reason": "late"})
    assert err.value.code == "case_signed_off"


# --- user administration (cases.accounts) ----------------------------------------------------------------------------


def test_admin_lists_creates_and_changes_users_and_each_change_is_recorded(instance, staff):
    from leukostage.cases import accounts

    with db.session_scope(instance.url) as s:
        boss = users.add_user(s, "boss", "admin", "password-123")
    with db.session_scope(instance.url) as s:
        assert [u["username"] for u in accounts.list_users(s, boss)] == ["boss", "revi", "tech"]
        made = accounts.create_user(s, boss, {"username": "ann", "role": "technician", "password": "long-enough"})
        assert made == {"username": "ann", "role": "technician", "disabled": False, "created_at": made["created_at"]}
        with pytest.raises(service.Conflict, match="already exists") as err:
            accounts.create_user(s, boss, {"username": "ann", "role": "reviewer", "password": "long-enough"})
        assert err.value.code == "user_exists" and "users set ann" in err.value.message
        for body in ({"username": "bob", "role": "chief", "password": "long-enough"}, {"username": "bob"}, "x"):
            with pytest.raises(service.InvalidInput):
                accounts.create_user(s, boss, body)
    with db.session_scope(instance.url) as s:
        ann = accounts.update_user(s, boss, "ann", {"role": "reviewer"})
        token = users.issue_token(s, users.get_user(s, "ann"))
        assert ann["role"] == "reviewer" and users.user_for_token(s, token).username == "ann"
        accounts.update_user(s, boss, "ann", {"disabled": True})
    with db.session_scope(instance.url) as s:
        assert users.user_for_token(s, token) is None  # a disabled account's token is refused
        assert users.authenticate(s, "ann", "long-enough") is None
        accounts.update_user(s, boss, "ann", {"disabled": False, "password": "another-one"})
    with db.session_scope(instance.url) as s:
        assert users.authenticate(s, "ann", "another-one").username == "ann"
        for body, code in (
            ({}, "bad_json"),
            ({"name": "x"}, "invalid_field"),
            ({"role": "chief"}, "invalid_field"),
            ({"disabled": "yes"}, "invalid_field"),
            ({"password": "short"}, "invalid_field"),
        ):
            with pytest.raises(service.InvalidInput) as err:
                accounts.update_user(s, boss, "ann", body)
            assert err.value.code == code, body
        with pytest.raises(service.NotFound):
            accounts.update_user(s, boss, "nobody", {"disabled": True})
        events = s.scalars(select(AuditEvent).where(AuditEvent.case_id.is_(None)).order_by(AuditEvent.id)).all()
    assert [(e.action, e.username, e.detail.get("username")) for e in events] == [
        ("user_created", "boss", "ann"),
        ("role_changed", "boss", "ann"),
        ("user_disabled", "boss", "ann"),
        ("user_enabled", "boss", "ann"),
        ("password_reset", "boss", "ann"),
    ]
    assert all("another-one" not in str(e.detail) and "long-enough" not in str(e.detail) for e in events)


def test_only_an_admin_manages_users_and_the_last_admin_stays(instance, staff):
    from leukostage.cases import accounts

    with db.session_scope(instance.url) as s:
        boss = users.add_user(s, "boss", "admin", "password-123")
    for who in (staff["technician"], staff["reviewer"]):
        with pytest.raises(service.Forbidden), db.session_scope(instance.url) as s:
            accounts.list_users(s, who)
        with pytest.raises(service.Forbidden), db.session_scope(instance.url) as s:
            accounts.update_user(s, who, "tech", {"role": "admin"})
    for change in ({"disabled": True}, {"role": "reviewer"}):
        with pytest.raises(service.Conflict, match="last active admin") as err, db.session_scope(instance.url) as s:
            accounts.update_user(s, boss, "boss", change)
        assert err.value.code == "last_admin"
    with db.session_scope(instance.url) as s:
        accounts.update_user(s, None, "revi", {"role": "admin"})  # the command line (the server's operator)
        assert s.scalar(select(AuditEvent).where(AuditEvent.action == "role_changed")).detail["via"] == "cli"
    with pytest.raises(service.Conflict) as err, db.session_scope(instance.url) as s:
        accounts.update_user(s, boss, "boss", {"disabled": True})
    assert err.value.code == "own_account"
    with db.session_scope(instance.url) as s:
        assert accounts.update_user(s, boss, "boss", {"role": "reviewer"})["role"] == "reviewer"  # another admin left


def test_the_review_safety_migration_upgrades_a_database_in_use_and_downgrades(db_url):
    """0002_review_safety only adds a table: a 0001 database keeps its rows, and the step can be taken back."""
    from alembic import command
    from sqlalchemy import inspect

    from leukostage.cases.db import _alembic_config, get_engine

    with get_engine(db_url).begin() as conn:
        command.upgrade(_alembic_config(conn), "0001")
    with get_engine(db_url).begin() as conn:
        conn.execute(
            text(
                "INSERT INTO users (username, password_hash, role, active, created_at) "
                "VALUES ('old', 'x', 'reviewer', true, CURRENT_TIMESTAMP)"
            )
        )
    db.upgrade(db_url)
    assert db.current_revision(db_url) == db.head_revision()
    assert "image_removals" in inspect(get_engine(db_url)).get_table_names()
    with db.session_scope(db_url) as s:
        assert s.scalar(select(User.role).where(User.username == "old")) == "reviewer"
    with get_engine(db_url).begin() as conn:
        command.downgrade(_alembic_config(conn), "0001")
    assert "image_removals" not in inspect(get_engine(db_url)).get_table_names()
    assert "image_blobs" not in inspect(get_engine(db_url)).get_table_names()  # 0003_reliability, taken back first
    db.dispose_all()


def test_the_migrations_are_one_line_with_one_head():
    """Issues 20 and 21 each added a revision after 0001; merged, they run one after the other."""
    from alembic.script import ScriptDirectory

    from leukostage.cases.db import _alembic_config

    script = ScriptDirectory.from_config(_alembic_config())
    assert script.get_heads() == [db.head_revision()] == ["0003_reliability"]
    chain = [r.revision for r in script.walk_revisions()]  # head first
    assert chain == ["0003_reliability", "0002_review_safety", "0001"]
