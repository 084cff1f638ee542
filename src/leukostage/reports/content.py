"""What every report says about a case, worked out once so the PDF, the FHIR bundle and the CSV cannot disagree.

All of it reads the case dict only (see ``cases.service.case_dict``).
"""

from __future__ import annotations

from datetime import UTC, datetime

from ..classes import BY_KEY, CLASS_KEYS, UNCERTAIN_DISPLAY_NAME
from ..outcomes import REFUSED as REFUSED  # the outcome of a refused field, named here for the pages and the PDF
from ..outcomes import outcome
from ..outcomes import uncertain_reason as result_reason

REFUSED_COLOUR = "#8c959f"  # its badge (grey, lighter than Uncertain's)
STATUS_NAMES = {"open": "Open (not reviewed)", "signed_off": "Signed off", "amended": "Amended after sign-off"}


def display_name(key: str | None) -> str:
    """The stage name of a class key; ``uncertain`` and unknown keys read as Uncertain."""
    return BY_KEY[key].display_name if key in BY_KEY else UNCERTAIN_DISPLAY_NAME


def long_name(key: str | None) -> str:
    """Stage name with the dataset's subtype, e.g. ``Mid Stage \u2013 Pre-B ALL``.

    Every surface names the real label."""
    return f"{BY_KEY[key].display_name} \u2013 {BY_KEY[key].dataset_label}" if key in BY_KEY else UNCERTAIN_DISPLAY_NAME


def final_call(case: dict) -> str | None:
    """The reviewer's call in force: the latest amendment that set one, else the sign-off's; None before sign-off."""
    for amendment in reversed(case.get("amendments") or []):
        if amendment.get("final_call"):
            return amendment["final_call"]
    review = case.get("review")
    return review.get("final_call") if review else None


def final_comment(case: dict) -> str | None:
    """The reviewer's comment in force (an amendment's comment replaces the sign-off's, as its call does)."""
    for amendment in reversed(case.get("amendments") or []):
        if amendment.get("comment"):
            return amendment["comment"]
    review = case.get("review")
    return review.get("comment") if review else None


def model_label(image: dict) -> str:
    """The model's outcome for one field: a class key, ``uncertain``, or ``refused`` (shown with its code, never
    counted)."""
    return outcome(image.get("result") or {})


def shown_label(image: dict) -> str:
    """The field's label as the reviewer left it: the override where there is one, else the model's."""
    override = image.get("override")
    return override["label"] if override and override.get("label") else model_label(image)


def uncertain_reason(image: dict) -> str | None:
    """Why a valid field is uncertain (results from before the domain check carry no reason: low confidence)."""
    return result_reason(image.get("result") or {})


def class_shares(summary: dict) -> dict[str, float] | None:
    """Per class, the share of counted fields the model labelled with it (None when no field counted).

    Low-confidence fields count but carry no class label, so the four shares may sum to less than one.
    """
    counted = summary.get("counted") or 0
    if not counted:
        return None
    counts = summary.get("counts") or {}
    return {k: (counts.get(k) or 0) / counted for k in CLASS_KEYS}


def refused_total(summary: dict) -> int:
    return sum((summary.get("counts") or {}).get("refused", {}).values())


def uncertain_total(summary: dict) -> int:
    return sum((summary.get("counts") or {}).get("uncertain", {}).values())


def parse_time(value: str | None) -> datetime | None:
    """An ISO-8601 time from the case dict (``Z`` accepted), or None."""
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def show_time(value: str | None) -> str:
    """A case time for people: ``2026-11-26 19:54 UTC``."""
    moment = parse_time(value)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if moment else "—"


def percent(fraction: float | None) -> str:
    return "—" if fraction is None else f"{100 * fraction:.1f}%"
