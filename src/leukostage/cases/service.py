"""What the web views and the CLI do with cases: plain functions over a SQLAlchemy session.

Each function works inside the caller's transaction (``db.session_scope``); a web request that uploads many fields
runs one transaction per field, so a worker killed mid-request leaves whole fields or none. Errors are
``ServiceError`` subclasses carrying the HTTP status the API answers with. Nothing here logs patient identifiers.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from ..classes import CLASS_KEYS, FINAL_CALLS, NON_DIAGNOSTIC_KEY, NON_DIAGNOSTIC_MEANING, parse_class, parse_final_call
from . import decision
from . import rule as case_rule
from .models import (
    ACCESSION_MAX,
    FILENAME_MAX,
    Amendment,
    AuditEvent,
    Case,
    Image,
    ImageRemoval,
    Override,
    Result,
    Review,
    User,
    utcnow,
)
from .store import ImageStore
from .users import REVIEW_ROLES, UPLOAD_ROLES

PER_PAGE_DEFAULT = 50
PER_PAGE_MAX = 200
TEXT_MAX = 4000  # note, comment, reason


class ServiceError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code


class InvalidInput(ServiceError):
    status, code = 400, "invalid_input"


class Forbidden(ServiceError):
    status, code = 403, "forbidden"


class NotFound(ServiceError):
    status, code = 404, "not_found"


class Conflict(ServiceError):
    status, code = 409, "conflict"


def iso(value: datetime | None) -> str | None:
    """ISO-8601 in UTC (SQLite hands back naive datetimes: they were written as UTC)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _text(value: Any, name: str, required: bool = False, limit: int = TEXT_MAX) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise InvalidInput(f"'{name}' is required: a non-empty string", "missing_field")
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"'{name}' must be a string", "invalid_field")
    if len(value) > limit:
        raise InvalidInput(f"'{name}' is longer than {limit} characters", "invalid_field")
    return value.strip()


def _class_key(value: Any, name: str) -> str:
    """A class key from a key, display name or dataset label (as ``/predict?class=`` reads them)."""
    if isinstance(value, str):
        try:
            return parse_class(value).key
        except ValueError:
            pass
    raise InvalidInput(
        f"'{name}' must be one of {', '.join(CLASS_KEYS)} (or a display name such as 'Mid Stage'); "
        f"got {str(value)[:40]!r}",
        "bad_class",
    )


def _final_call(value: Any, required: bool) -> str | None:
    """The reviewer's call: a class (key or display name) or ``non_diagnostic``. Never defaulted from the model."""
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise InvalidInput(
                f"'final_call' is required: state the call ({', '.join(FINAL_CALLS)}; {NON_DIAGNOSTIC_KEY} with a "
                "comment saying why). Nothing is taken over from the model's call.",
                "missing_field",
            )
        return None
    try:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, one of {', '.join(FINAL_CALLS)}; got {str(value)[:40]!r}")
        return parse_final_call(value)
    except ValueError as exc:
        raise InvalidInput(f"'final_call': {exc}", "bad_class") from None


def require_role(user: User, roles: frozenset[str], what: str) -> None:
    if user.role not in roles:
        raise Forbidden(f"a {user.role} may not {what}; it needs the role {' or '.join(sorted(roles))}")


def record(session: Session, action: str, user: User | None, case_id: int | None = None, **detail: Any) -> None:
    """Append one audit event (the table refuses updates and deletes)."""
    session.add(
        AuditEvent(
            case_id=case_id,
            user_id=user.id if user else None,
            username=user.username if user else None,
            action=action,
            detail=detail,
        )
    )


def _case(session: Session, case_id: int, lock: bool = False) -> Case:
    stmt = select(Case).where(Case.id == case_id)
    if lock:
        stmt = stmt.with_for_update()  # PostgreSQL: writers to one case queue here; SQLite: BEGIN IMMEDIATE did it
    case = session.scalar(stmt)
    if case is None:
        raise NotFound(f"no case {case_id}", "unknown_case")
    return case


# --- cases -----------------------------------------------------------------------------------------------------------


def create_case(session: Session, user: User, body: dict, model: dict) -> Case:
    """A new open case. Raises InvalidInput (bad fields) or Conflict (accession taken)."""
    require_role(user, UPLOAD_ROLES, "create cases")
    if not isinstance(body, dict):
        raise InvalidInput('send a JSON object: {"accession": str, "patient_ref": str?, "note": str?}')
    accession = _text(body.get("accession"), "accession", required=True, limit=ACCESSION_MAX)
    case = Case(
        accession=accession,
        patient_ref=_text(body.get("patient_ref"), "patient_ref", limit=255),
        note=_text(body.get("note"), "note"),
        status="open",
        created_by_id=user.id,
        model_name=str(model.get("name", "unknown")),
        model_version=str(model.get("version", "unknown")),
    )
    if session.scalar(select(Case.id).where(Case.accession == accession)) is not None:
        raise Conflict(f"a case with accession {accession!r} exists already", "duplicate_accession")
    try:
        with session.begin_nested():
            session.add(case)
            session.flush()
    except IntegrityError:  # created by another request between the check and the insert
        raise Conflict(f"a case with accession {accession!r} exists already", "duplicate_accession") from None
    record(session, "created", user, case.id)
    return case


def get_case(session: Session, case_id: int) -> Case:
    return _case(session, case_id)


def ensure_open(session: Session, case_id: int) -> Case:
    """The case, if fields may still be added to it (Conflict once signed off)."""
    case = _case(session, case_id)
    if case.status != "open":
        raise Conflict(f"case {case_id} is {case.status.replace('_', ' ')}; no fields can be added", "case_signed_off")
    return case


@dataclass
class Field:
    """One uploaded field, analysed: the client's name (metadata), its bytes, and the API's result object."""

    filename: str
    data: bytes
    result: dict
    width: int | None = None
    height: int | None = None


def add_image(session: Session, user: User, case_id: int, field: Field, store: ImageStore, model: dict) -> dict:
    """Store one analysed field in the case; returns the API object (the result plus ``image_id``).

    The bytes go to ``store`` by content: the database store writes them in this transaction, with the rows; the
    file store writes the file (atomically) before the rows, and if the process dies between the two the file has no
    row and ``leukostage db check`` removes it. Raises NotFound, or Conflict once the case is signed off.
    """
    require_role(user, UPLOAD_ROLES, "add fields")
    case = _case(session, case_id, lock=True)  # also serialises two uploads of the same bytes to one case
    if case.status != "open":
        raise Conflict(f"case {case_id} is {case.status.replace('_', ' ')}; no fields can be added", "case_signed_off")
    existing = _live_field(session, case.id, hashlib.sha256(field.data).hexdigest())
    if existing is not None:
        record(session, "duplicate_upload", user, case.id, image_id=existing.id, sha256=existing.sha256)
        return {
            **_result_payload(existing),
            "file": field.filename,
            "image_id": existing.id,
            "duplicate_of": existing.id,
        }
    sha256 = store.put(field.data, session)
    result = field.result
    payload = {**result, "model": model} if result.get("valid") else dict(result)
    image = Image(
        case_id=case.id,
        sha256=sha256,
        filename=field.filename[:FILENAME_MAX],
        size_bytes=len(field.data),
        width=field.width,
        height=field.height,
        uploaded_by_id=user.id,
    )
    session.add(image)
    session.flush()
    session.add(
        Result(
            image_id=image.id,
            valid=bool(result.get("valid")),
            label=result.get("label"),
            code=result.get("code"),
            model_name=str(model.get("name", "unknown")),
            model_version=str(model.get("version", "unknown")),
            payload=payload,
        )
    )
    case.updated_at = utcnow()
    record(
        session,
        "image_added",
        user,
        case.id,
        image_id=image.id,
        sha256=sha256,
        outcome=result.get("label") if result.get("valid") else f"refused:{result.get('code')}",
    )
    return {**payload, "image_id": image.id, "duplicate_of": None}


def _live_field(session: Session, case_id: int, sha256: str) -> Image | None:
    """The case's field with these bytes, if one is in the case (removed fields do not count: the same photo
    uploaded again after its field was removed is a new field)."""
    return session.scalar(
        select(Image)
        .outerjoin(ImageRemoval, ImageRemoval.image_id == Image.id)
        .where(Image.case_id == case_id, Image.sha256 == sha256, ImageRemoval.id.is_(None))
        .order_by(Image.id)
        .limit(1)
    )


def _result_payload(image: Image) -> dict:
    if image.result is None:
        return {"valid": False, "code": "missing_result", "reason": "no result was stored for this field"}
    return image.result.payload


def _image_dict(image: Image, duplicate_of: int | None = None) -> dict:
    current = image.overrides[-1] if image.overrides else None
    result = _result_payload(image)
    return {
        "image_id": image.id,
        "sha256": image.sha256,
        "filename": image.filename,
        "uploaded_at": iso(image.uploaded_at),
        "uploaded_by": image.uploaded_by.username,
        "width": image.width,
        "height": image.height,
        "result": result,
        "override": ({"label": current.label, "by": current.by.username, "at": iso(current.at)} if current else None),
        "duplicate_of": duplicate_of,
        "counted": duplicate_of is None and case_rule.is_counted(result),
    }


def _removed_dict(image: Image) -> dict:
    removal = image.removal
    return {
        **_image_dict(image),
        "counted": False,
        "removed": {"reason": removal.reason, "by": removal.by.username, "at": iso(removal.at)},
    }


def distinct_fields(images: list[Image]) -> list[tuple[Image, int | None]]:
    """The case's fields that are not removed, each with the field it duplicates (the first live field with the same
    bytes; None for an original). Uploads no longer add duplicates; this keeps older cases honest too."""
    first: dict[str, int] = {}
    out = []
    for image in images:
        if image.removal is not None:
            continue
        out.append((image, first.get(image.sha256)))
        first.setdefault(image.sha256, image.id)
    return out


def _load_case(session: Session, case_id: int) -> Case:
    case = session.scalar(
        select(Case)
        .where(Case.id == case_id)
        .options(
            selectinload(Case.images).selectinload(Image.result),
            selectinload(Case.images).selectinload(Image.uploaded_by),
            selectinload(Case.images).selectinload(Image.overrides).selectinload(Override.by),
            selectinload(Case.images).selectinload(Image.removal).selectinload(ImageRemoval.by),
            selectinload(Case.review).selectinload(Review.reviewer),
            selectinload(Case.amendments).selectinload(Amendment.by),
            selectinload(Case.created_by),
        )
    )
    if case is None:
        raise NotFound(f"no case {case_id}", "unknown_case")
    return case


def case_dict(session: Session, case_id: int, rule: case_rule.CaseRule | None = None) -> dict:
    """The case as CASE_SCHEMA.md defines it (the API's and the reports' one contract)."""
    case = _load_case(session, case_id)
    images = [_image_dict(i, dup) for i, dup in distinct_fields(case.images)]
    review = _review_dict(case.review)
    amendments = [_amendment_dict(a) for a in case.amendments]
    statements = decision.history(review, amendments)
    return {
        "id": case.id,
        "accession": case.accession,
        "patient_ref": case.patient_ref,
        "note": case.note,
        "status": case.status,
        "created_at": iso(case.created_at),
        "created_by": case.created_by.username,
        "updated_at": iso(case.updated_at),
        "model": {"name": case.model_name, "version": case.model_version},
        "images": images,
        "removed_images": [_removed_dict(i) for i in case.images if i.removal is not None],
        "summary": case_rule.summarise([i["result"] for i in images if i["duplicate_of"] is None], rule),
        "final_call": statements[-1]["final_call"] if statements else None,
        "decision": statements[-1] if statements else None,
        "history": statements,
        "review": review,
        "amendments": amendments,
    }


def _review_dict(review: Review | None) -> dict | None:
    if review is None:
        return None
    return {
        "final_call": review.final_call,
        "comment": review.comment,
        "reviewer": review.reviewer.username,
        "signed_off_at": iso(review.signed_off_at),
    }


def _amendment_dict(a: Amendment) -> dict:
    return {"reason": a.reason, "by": a.by.username, "at": iso(a.at), "final_call": a.final_call, "comment": a.comment}


def view_case(session: Session, user: User, case_id: int) -> dict:
    """The case dict, recording that ``user`` viewed it."""
    out = case_dict(session, case_id)
    record(session, "viewed", user, case_id)
    return out


def export_case(session: Session, user: User, case_id: int, fmt: str) -> dict:
    """The case dict for a report, recording the export (``fmt``: fhir, pdf, csv)."""
    out = case_dict(session, case_id)
    record(session, "exported", user, case_id, format=fmt)
    return out


def list_cases(
    session: Session, status: str | None = None, q: str | None = None, page: int = 1, per_page: int = PER_PAGE_DEFAULT
) -> dict:
    """Cases newest first, ``per_page`` at a time; ``q`` matches accession or patient reference (substring)."""
    if status is not None and status not in ("open", "signed_off", "amended"):
        raise InvalidInput(f"unknown status {status[:40]!r}; expected open, signed_off or amended", "bad_status")
    if page < 1 or not 1 <= per_page <= PER_PAGE_MAX:
        raise InvalidInput(f"page must be >= 1 and per_page 1-{PER_PAGE_MAX}", "bad_page")
    where = []
    if status:
        where.append(Case.status == status)
    if q:
        pattern = "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        where.append(or_(Case.accession.ilike(pattern, escape="\\"), Case.patient_ref.ilike(pattern, escape="\\")))
    total = session.scalar(select(func.count(Case.id)).where(*where)) or 0
    cases = session.scalars(
        select(Case)
        .where(*where)
        .order_by(Case.created_at.desc(), Case.id.desc())
        .offset((page - 1) * per_page)
        .limit(per_page)
        .options(selectinload(Case.created_by))
    ).all()
    ids = [c.id for c in cases]
    results = _distinct_results(session, ids)
    statements = _statements(session, ids)
    rule = case_rule.load_rule()
    items = []
    for c in cases:
        summary = case_rule.summarise(results[c.id], rule)
        current = statements[c.id][-1] if statements[c.id] else None
        items.append(
            {
                "id": c.id,
                "accession": c.accession,
                "patient_ref": c.patient_ref,
                "status": c.status,
                "created_at": iso(c.created_at),
                "created_by": c.created_by.username,
                "updated_at": iso(c.updated_at),
                "images": len(results[c.id]),
                "counted": summary["counted"],
                "case_call": summary["case_call"],
                "final_call": current["final_call"] if current else None,
                "final_call_by": current["by"] if current else None,
                "final_call_at": current["at"] if current else None,
                "signed_off_by": statements[c.id][0]["by"] if current else None,
            }
        )
    return {"cases": items, "page": page, "per_page": per_page, "total": total}


def _distinct_results(session: Session, ids: list[int]) -> dict[int, list[dict]]:
    """Per case, the results of its fields as the case call reads them: removed fields left out, the same bytes
    once (as ``distinct_fields`` does for one case)."""
    out: dict[int, list[dict]] = {i: [] for i in ids}
    if not ids:
        return out
    rows = session.execute(
        select(Image.case_id, Image.sha256, Result.payload)
        .join(Result, Result.image_id == Image.id)
        .outerjoin(ImageRemoval, ImageRemoval.image_id == Image.id)
        .where(Image.case_id.in_(ids), ImageRemoval.id.is_(None))
        .order_by(Image.id)
    ).all()
    seen: set[tuple[int, str]] = set()
    for cid, sha256, payload in rows:
        if (cid, sha256) not in seen:
            seen.add((cid, sha256))
            out[cid].append(payload)
    return out


def _statements(session: Session, ids: list[int]) -> dict[int, list[dict]]:
    """Per case, the reviewer's statements (``decision.history``), read in two queries."""
    if not ids:
        return {}
    reviews = {
        r.case_id: _review_dict(r)
        for r in session.scalars(select(Review).where(Review.case_id.in_(ids)).options(selectinload(Review.reviewer)))
    }
    amendments: dict[int, list[dict]] = {i: [] for i in ids}
    for a in session.scalars(
        select(Amendment).where(Amendment.case_id.in_(ids)).order_by(Amendment.id).options(selectinload(Amendment.by))
    ):
        amendments[a.case_id].append(_amendment_dict(a))
    return {i: decision.history(reviews.get(i), amendments[i]) for i in ids}


def export_worklist(session: Session, user: User, status: str | None = None, q: str | None = None) -> list[dict]:
    """Every case ``list_cases`` finds for ``status`` and ``q``, all pages, recorded as one audit event (the list
    names patients)."""
    items: list[dict] = []
    page = 1
    while True:
        listing = list_cases(session, status, q, page, PER_PAGE_MAX)
        items += listing["cases"]
        if not listing["cases"] or len(items) >= listing["total"]:
            break
        page += 1
    record(session, "worklist_exported", user, None, status=status, q=q, cases=len(items))
    return items


# --- review ----------------------------------------------------------------------------------------------------------


def _apply_overrides(session: Session, user: User, case: Case, overrides: Any) -> list[dict]:
    if overrides is None:
        return []
    if not isinstance(overrides, list):
        raise InvalidInput('\'image_overrides\' must be a list of {"image_id", "label"}', "invalid_field")
    parsed = []
    for item in overrides:
        if not isinstance(item, dict) or not isinstance(item.get("image_id"), int):
            raise InvalidInput("each image override needs an integer 'image_id' and a 'label'", "invalid_field")
        parsed.append((item["image_id"], _class_key(item.get("label"), "label")))
    ids = {i for i, _ in parsed}
    found = dict(
        session.execute(
            select(Image.id, ImageRemoval.id)
            .outerjoin(ImageRemoval, ImageRemoval.image_id == Image.id)
            .where(Image.case_id == case.id, Image.id.in_(ids))
        ).all()
    )
    missing = sorted(ids - set(found))
    if missing:
        raise NotFound(f"image {missing[0]} is not a field of case {case.id}", "unknown_image")
    removed = sorted(i for i, removal in found.items() if removal is not None)
    if removed:
        raise Conflict(f"field {removed[0]} was removed from case {case.id}; it cannot be relabelled", "image_removed")
    done = []
    for image_id, label in parsed:
        session.add(Override(image_id=image_id, label=label, by_id=user.id))
        record(session, "overridden", user, case.id, image_id=image_id, label=label)
        done.append({"image_id": image_id, "label": label})
    return done


def sign_off(session: Session, user: User, case_id: int, body: dict) -> None:
    """The reviewer's final call, comment and per-field overrides; the case becomes ``signed_off``.

    Raises Forbidden (not a reviewer), NotFound, InvalidInput, Conflict (signed off already: amend instead).
    """
    require_role(user, REVIEW_ROLES, "sign cases off")
    if not isinstance(body, dict):
        raise InvalidInput('send a JSON object: {"final_call", "comment", "image_overrides"}')
    case = _case(session, case_id, lock=True)
    if case.status != "open":
        raise Conflict(
            f"case {case_id} is signed off already; change it with POST /api/v1/cases/{case_id}/amend",
            "already_signed_off",
        )
    final_call = _final_call(body.get("final_call"), required=True)
    comment = _text(body.get("comment"), "comment") or ""
    if final_call == NON_DIAGNOSTIC_KEY and not comment:
        raise InvalidInput(
            f"a {NON_DIAGNOSTIC_KEY} call needs a comment saying why the sample cannot be called "
            f"({NON_DIAGNOSTIC_MEANING}: e.g. too few usable fields, wrong stain)",
            "missing_field",
        )
    _apply_overrides(session, user, case, body.get("image_overrides"))
    session.add(Review(case_id=case.id, final_call=final_call, comment=comment, reviewer_id=user.id))
    case.status, case.updated_at = "signed_off", utcnow()
    record(session, "signed_off", user, case.id, final_call=final_call)


def amend(session: Session, user: User, case_id: int, body: dict) -> None:
    """Change a signed-off case: a reason, and a new final call, comment or overrides; the status becomes ``amended``.

    Raises Forbidden, NotFound, InvalidInput (no reason), Conflict (not signed off yet: review instead).
    """
    require_role(user, REVIEW_ROLES, "amend cases")
    if not isinstance(body, dict):
        raise InvalidInput('send a JSON object: {"reason", "final_call"?, "comment"?, "image_overrides"?}')
    case = _case(session, case_id, lock=True)
    if case.status == "open":
        raise Conflict(
            f"case {case_id} is not signed off yet; sign it off with POST /api/v1/cases/{case_id}/review",
            "not_signed_off",
        )
    reason = _text(body.get("reason"), "reason", required=True)
    final_call = _final_call(body.get("final_call"), required=False)  # none: the call in force stays
    comment = _text(body.get("comment"), "comment")
    overrides = _apply_overrides(session, user, case, body.get("image_overrides"))
    session.add(Amendment(case_id=case.id, reason=reason, final_call=final_call, comment=comment, by_id=user.id))
    case.status, case.updated_at = "amended", utcnow()
    record(session, "amended", user, case.id, reason=reason, final_call=final_call, overrides=overrides)


def remove_image(session: Session, user: User, case_id: int, image_id: int, body: Any) -> None:
    """Take a field out of an open case (a mistaken upload: an H&E image, another patient's smear), with a reason.

    The field stops counting; its row, result and stored bytes are kept, and the removal is an audit event.
    Raises Forbidden, NotFound (unknown case, or not a field of it), Conflict (signed off; removed already),
    InvalidInput (no reason).
    """
    require_role(user, UPLOAD_ROLES, "remove fields")
    case = _case(session, case_id, lock=True)
    image = session.scalar(select(Image).where(Image.id == image_id, Image.case_id == case.id))
    if image is None:
        raise NotFound(f"image {image_id} is not a field of case {case_id}", "unknown_image")
    if case.status != "open":
        raise Conflict(
            f"case {case_id} is {case.status.replace('_', ' ')}; fields can only be removed before sign-off "
            f"(to change what the case says, amend it: POST /api/v1/cases/{case_id}/amend)",
            "case_signed_off",
        )
    if image.removal is not None:
        raise Conflict(
            f"field {image_id} was removed already ({iso(image.removal.at)} by {image.removal.by.username})",
            "image_removed",
        )
    if not isinstance(body, dict):
        raise InvalidInput('send a JSON object: {"reason": str}', "bad_json")
    reason = _text(body.get("reason"), "reason", required=True)
    session.add(ImageRemoval(image_id=image.id, reason=reason, by_id=user.id))
    case.updated_at = utcnow()
    record(session, "image_removed", user, case.id, image_id=image.id, sha256=image.sha256, reason=reason)


def audit_events(session: Session, case_id: int) -> list[dict]:
    """Every event on the case, oldest first."""
    _case(session, case_id)
    events = session.scalars(select(AuditEvent).where(AuditEvent.case_id == case_id).order_by(AuditEvent.id)).all()
    return [{"id": e.id, "at": iso(e.at), "user": e.username, "action": e.action, "detail": e.detail} for e in events]


def view_audit(session: Session, user: User, case_id: int) -> list[dict]:
    """The case's audit trail, recording that ``user`` read it (the trail names who did what to a patient's case)."""
    events = audit_events(session, case_id)
    record(session, "viewed", user, case_id, what="audit")
    return events


def image_of_case(session: Session, case_id: int, image_id: int) -> Image:
    """A field of this case (NotFound for another case's image id, so ids cannot be probed across cases)."""
    _case(session, case_id)
    image = session.scalar(select(Image).where(Image.id == image_id, Image.case_id == case_id))
    if image is None:
        raise NotFound(f"image {image_id} is not a field of case {case_id}", "unknown_image")
    return image


VIEWS = ("image", "overlay")  # what of a field can be shown: the stored image, its heat map


def record_view(session: Session, user: User, case_id: int, image_id: int, what: str) -> None:
    """Record that ``user`` was shown a field (``what``: one of VIEWS): the picture is patient data."""
    if what not in VIEWS:
        raise ValueError(f"unknown view {what!r}; expected one of {', '.join(VIEWS)}")
    record(session, "viewed", user, case_id, what=what, image_id=image_id)


# --- integrity -------------------------------------------------------------------------------------------------------


def check_storage(session: Session, store: ImageStore, remove: bool = False, min_age_s: float = 60.0) -> dict:
    """Stored files without a row and rows whose file is missing; with ``remove``, orphan files older than
    ``min_age_s`` are deleted (a younger one may belong to an upload whose rows are about to be committed)."""
    referenced = set(session.scalars(select(Image.sha256).distinct()))
    stored = set(store.digests())
    orphans = sorted(stored - referenced)
    missing = sorted(referenced - stored)
    missing_rows = (
        session.execute(select(Image.id, Image.case_id).where(Image.sha256.in_(missing))).all() if missing else []
    )
    temporary = store.sweep_temporary(max(min_age_s, 0.0)) if remove else []
    removed = []
    if remove:
        for sha in orphans:
            # re-check: an upload may have committed a row for it since the first query
            if store.age_s(sha) >= min_age_s and not session.scalar(
                select(func.count(Image.id)).where(Image.sha256 == sha)
            ):
                store.delete(sha)
                removed.append(sha)
    return {
        "orphan_files": orphans,
        "removed": removed,
        "temporary_files_removed": len(temporary),
        "rows_without_file": [{"image_id": i, "case_id": c} for i, c in missing_rows],
    }
