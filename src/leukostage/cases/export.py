"""The signed-off fields of the case database as a laboratory's labelled fields (``leukostage adapt --from-cases``,
issue 19).

What counts: the fields of cases that are signed off (``signed_off`` or ``amended``) and whose call in force is a
class (``decision.current``: an amendment's call wins over the sign-off's; a ``non_diagnostic`` case never counts).
Of such a case's fields, those the validator let through (a refused field never teaches the model), not removed,
and each photo once: a duplicate within its case is left out, and so is the same photo in a later case (the earliest
case keeps it, so one photo is never on both sides of the adaptation's split). Open cases never count.

A field's label: the reviewer's override for it in force (the latest), else the case's call in force. Each case is
one sample. Writing the fields out is recorded: one ``exported_for_adaptation`` audit event per case, naming its
fields and their labels (the photos are patient data leaving the database).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..classes import CLASS_KEYS, CLASSES
from ..imaging import IMAGE_SUFFIXES
from . import rule as case_rule
from .models import Case, User
from .service import case_dict, record
from .store import ImageStore

EXPORT_ACTION = "exported_for_adaptation"
SIGNED_OFF_STATUSES = ("signed_off", "amended")


@dataclass(frozen=True)
class SignedOffField:
    """One field that counts: where it is (case, image, stored bytes), its label and where the label came from."""

    case_id: int
    image_id: int
    sha256: str
    filename: str
    label: str  # a class key
    labelled_by: str  # "override" (the reviewer's label for this field) or "final_call" (the case's call in force)

    @property
    def sample(self) -> str:
        """The sample the field belongs to: its case."""
        return f"case-{self.case_id}"


def signed_off_fields(session: Session) -> list[SignedOffField]:
    """Every field that counts (see the module docstring), by case then image id. Reads only; records nothing."""
    ids = session.scalars(select(Case.id).where(Case.status.in_(SIGNED_OFF_STATUSES)).order_by(Case.id)).all()
    rule = case_rule.load_rule()
    seen: set[str] = set()
    out: list[SignedOffField] = []
    for case_id in ids:
        case = case_dict(session, case_id, rule)
        call = case["final_call"]
        if call not in CLASS_KEYS:  # non_diagnostic (or no statement at all): the case says nothing about a class
            continue
        for image in case["images"]:  # removed fields are not among them
            if image["duplicate_of"] is not None or not image["result"].get("valid") or image["sha256"] in seen:
                continue
            seen.add(image["sha256"])
            override = image["override"]
            out.append(
                SignedOffField(
                    case_id=case_id,
                    image_id=image["image_id"],
                    sha256=image["sha256"],
                    filename=image["filename"],
                    label=override["label"] if override else call,
                    labelled_by="override" if override else "final_call",
                )
            )
    return out


def field_path(root: str | Path, field: SignedOffField) -> Path:
    """Where :func:`export_for_adaptation` writes a field: the Table 2 layout, one sub-folder per case,
    ``<class folder>/case-<id>/<image id><suffix>`` (the client's file name is never a path)."""
    folder = next(c.folder for c in CLASSES if c.key == field.label)
    suffix = Path(field.filename).suffix.lower()
    return Path(root) / folder / field.sample / f"{field.image_id}{suffix if suffix in IMAGE_SUFFIXES else '.png'}"


def export_for_adaptation(
    session: Session, store: ImageStore, root: str | Path, user: User | None = None, purpose: str | None = None
) -> list[SignedOffField]:
    """Write every field that counts under ``root`` (:func:`field_path`) and record one audit event per case
    (``user`` None: the command line). ``purpose`` (e.g. the model file being written) goes into the events.

    Raises:
        FileNotFoundError: a field's stored bytes are missing (``leukostage db check`` lists such rows).
    """
    fields = signed_off_fields(session)
    by_case: dict[int, list[SignedOffField]] = {}
    for f in fields:
        path = field_path(root, f)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(store.read(f.sha256))
        by_case.setdefault(f.case_id, []).append(f)
    for case_id, exported in by_case.items():
        detail = {
            "fields": [{"image_id": f.image_id, "label": f.label, "labelled_by": f.labelled_by} for f in exported],
            "purpose": purpose,
        }
        record(session, EXPORT_ACTION, user, case_id, **detail, **({"via": "cli"} if user is None else {}))
    return fields
