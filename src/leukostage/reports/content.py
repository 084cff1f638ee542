"""What every report says about a case, worked out once so the PDF, the FHIR bundle and the CSV cannot disagree.

All of it reads the case dict only (see ``cases.service.case_dict``).
"""

from __future__ import annotations

from datetime import UTC, datetime

from ..cases import decision
from ..classes import (
    BY_KEY,
    CLASS_KEYS,
    NON_DIAGNOSTIC_COLOUR,
    NON_DIAGNOSTIC_DISPLAY_NAME,
    NON_DIAGNOSTIC_KEY,
    NON_DIAGNOSTIC_MEANING,
    UNCERTAIN_COLOUR,
    UNCERTAIN_DISPLAY_NAME,
    capture_note,
)
from ..outcomes import REASON_OUTSIDE, outcome, uncertain_reason_name
from ..outcomes import REFUSED as REFUSED  # the outcome of a refused field, named here for the pages and the PDF
from ..outcomes import uncertain_reason as result_reason

REFUSED_COLOUR = "#8c959f"  # its badge (grey, lighter than Uncertain's)
STATUS_NAMES = {"open": "Open (not reviewed)", "signed_off": "Signed off", "amended": "Amended after sign-off"}


def display_name(key: str | None) -> str:
    """The stage name of a class key, ``Non-diagnostic`` for a reviewer's non-diagnostic call; ``uncertain`` and
    unknown keys read as Uncertain."""
    if key == NON_DIAGNOSTIC_KEY:
        return NON_DIAGNOSTIC_DISPLAY_NAME
    return BY_KEY[key].display_name if key in BY_KEY else UNCERTAIN_DISPLAY_NAME


def long_name(key: str | None) -> str:
    """Stage name with the dataset's subtype, e.g. ``Mid Stage \u2013 Pre-B ALL``; a non-diagnostic call with what
    it means. Every surface names the real label."""
    if key == NON_DIAGNOSTIC_KEY:
        return f"{NON_DIAGNOSTIC_DISPLAY_NAME} ({NON_DIAGNOSTIC_MEANING})"
    return f"{BY_KEY[key].display_name} \u2013 {BY_KEY[key].dataset_label}" if key in BY_KEY else UNCERTAIN_DISPLAY_NAME


def colour(key: str) -> str:
    """A badge's colour: the class's, Non-diagnostic's, Refused's, else Uncertain's grey."""
    if key == REFUSED:
        return REFUSED_COLOUR
    if key == NON_DIAGNOSTIC_KEY:
        return NON_DIAGNOSTIC_COLOUR
    return BY_KEY[key].colour if key in BY_KEY else UNCERTAIN_COLOUR


def history(case: dict) -> list[dict]:
    """The reviewer's statements, oldest first (``cases.decision.history``): the sign-off, then each amendment."""
    return decision.history(case.get("review"), case.get("amendments") or [])


def current(case: dict) -> dict | None:
    """The statement in force: its call, who made it, when, why and its comment; None before sign-off."""
    statements = history(case)
    return statements[-1] if statements else None


def final_call(case: dict) -> str | None:
    """The reviewer's call in force (the latest that set one); None before sign-off."""
    now = current(case)
    return now["final_call"] if now else None


def final_comment(case: dict) -> str | None:
    """The comment of the statement in force: an amendment without a comment leaves none (the sign-off's comment
    belongs to the sign-off, shown in the history)."""
    now = current(case)
    return now["comment"] if now else None


def statement_line(statement: dict) -> str:
    """One statement for the history under the current call, e.g. ``2026-11-26 10:30 UTC, rev: amended to Advanced
    Stage. Reason: ... Comment: ...``."""
    if statement["kind"] == decision.SIGNED_OFF:
        what = f"signed off as {display_name(statement['final_call'])}"
    elif statement["changed_call"]:
        what = f"amended the call to {display_name(statement['final_call'])}"
    else:
        what = f"amended, call kept ({display_name(statement['final_call'])})"
    parts = [f"{show_time(statement['at'])}, {statement['by']}: {what}."]
    if statement.get("reason"):
        parts.append(f"Reason: {statement['reason']}.")
    if statement.get("comment"):
        parts.append(f"Comment: \u201c{statement['comment']}\u201d")
    return " ".join(parts)


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


def asserts_class(image: dict) -> bool:
    """Whether the model named a class for the field (not uncertain, not refused): only then is it shown with a class
    colour, a confidence or a heat map titled as evidence for its class."""
    return model_label(image) in BY_KEY


def uncertain_detail(image: dict) -> str | None:
    """An uncertain field's caption, naming no class: ``outside the training domain: not counted`` or ``low
    confidence: no class asserted`` (a low-confidence field still counts through its probabilities). None for a
    field that is refused or has a class."""
    reason = uncertain_reason(image)
    if reason is None:
        return None
    return f"{uncertain_reason_name(reason)}: {'not counted' if reason == REASON_OUTSIDE else 'no class asserted'}"


def field_capture(image: dict) -> str | None:
    """How the field's picture was taken, when there is something to say (``classes.capture_note``)."""
    return capture_note((image.get("result") or {}).get("capture"))


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
