"""What the web views and the CLI do with cases: plain functions over a SQLAlchemy session.

Each function works inside the caller's transaction (``db.session_scope``); a web request that uploads many fields
runs one transaction per field, so a worker killed mid-request leaves whole fields or none. Errors are
``ServiceError`` subclasses carrying the HTTP status the API answers with. Nothing here logs patient identifiers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from ..classes import CLASS_KEYS
from . import rule as case_rule
from .models import (
    ACCESSION_MAX,
    FILENAME_MAX,
    Amendment,
    AuditEvent,
    Case,
    Image,
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
    if value not in CLASS_KEYS:
        raise InvalidInput(f"'{name}' must be one of {', '.join(CLASS_KEYS)}; got {str(value)[:40]!r}", "bad_class")
    return value


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
    case = _case(session, case_id, lock=True)
    if case.status != "open":
        raise Conflict(f"case {case_id} is {case.status.replace('_', ' ')}; no fields can be added", "case_signed_off")
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
    return {**payload, "image_id": image.id}


def _image_dict(image: Image) -> dict:
    current = image.overrides[-1] if image.overrides else None
    return {
        "image_id": image.id,
        "sha256": image.sha256,
        "filename": image.filename,
        "uploaded_at": iso(image.uploaded_at),
        "uploaded_by": image.uploaded_by.username,
        "width": image.width,
        "height": image.height,
        "result": image.result.payload
        if image.result
        else {"valid": False, "code": "missing_result", "reason": "no result was stored for this field"},
        "override": ({"label": current.label, "by": current.by.username, "at": iso(current.at)} if current else None),
    }


def _load_case(session: Session, case_id: int) -> Case:
    case = session.scalar(
        select(Case)
        .where(Case.id == case_id)
        .options(
            selectinload(Case.images).selectinload(Image.result),
            selectinload(Case.images).selectinload(Image.uploaded_by),
            selectinload(Case.images).selectinload(Image.overrides).selectinload(Override.by),
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
    images = [_image_dict(i) for i in case.images]
    review = case.review
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
        "summary": case_rule.summarise([i["result"] for i in images], rule),
        "review": (
            {
                "final_call": review.final_call,
                "comment": review.comment,
                "reviewer": review.reviewer.username,
                "signed_off_at": iso(review.signed_off_at),
            }
            if review
            else None
        ),
        "amendments": [
            {"reason": a.reason, "by": a.by.username, "at": iso(a.at), "final_call": a.final_call, "comment": a.comment}
            for a in case.amendments
        ],
    }


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
    results: dict[int, list[dict]] = {c.id: [] for c in cases}
    if cases:
        rows = session.execute(
            select(Image.case_id, Result.payload)
            .join(Result, Result.image_id == Image.id)
            .where(Image.case_id.in_(list(results)))
        ).all()
        for cid, payload in rows:
            results[cid].append(payload)
    rule = case_rule.load_rule()
    items = []
    for c in cases:
        summary = case_rule.summarise(results[c.id], rule)
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
            }
        )
    return {"cases": items, "page": page, "per_page": per_page, "total": total}


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
    found = set(session.scalars(select(Image.id).where(Image.case_id == case.id, Image.id.in_(ids))))
    missing = sorted(ids - found)
    if missing:
        raise NotFound(f"image {missing[0]} is not a field of case {case.id}", "unknown_image")
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
    final_call = _class_key(body.get("final_call"), "final_call")
    comment = _text(body.get("comment"), "comment") or ""
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
    final_call = _class_key(body["final_call"], "final_call") if body.get("final_call") is not None else None
    comment = _text(body.get("comment"), "comment")
    overrides = _apply_overrides(session, user, case, body.get("image_overrides"))
    session.add(Amendment(case_id=case.id, reason=reason, final_call=final_call, comment=comment, by_id=user.id))
    case.status, case.updated_at = "amended", utcnow()
    record(session, "amended", user, case.id, reason=reason, final_call=final_call, overrides=overrides)


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
