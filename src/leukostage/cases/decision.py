"""What a case says now, and how it came to say it: the reviewer's statements, oldest first, the latest current.

A sign-off and each later amendment are statements about the case. The latest is the one in force: its call (an
amendment that sets no call keeps the call before it), who made it, when, why (an amendment's reason) and its
comment. A comment belongs to the statement that made it: an amendment without one does not inherit the sign-off's
("Agree with model" must not stand beside a call the reviewer later changed). Everything earlier is history, shown
below the current call by the page, the PDF and the FHIR bundle (whose report is then ``amended``).

Pure functions of the case dict's ``review`` and ``amendments`` (see ``service.case_dict``), so the case API, the
worklist and the reports cannot disagree about what is current.
"""

from __future__ import annotations

SIGNED_OFF, AMENDED = "signed_off", "amended"


def history(review: dict | None, amendments: list[dict]) -> list[dict]:
    """Every statement, oldest first: ``{"kind", "final_call", "by", "at", "comment", "reason", "changed_call"}``,
    where ``final_call`` is the call in force after the statement. Empty before sign-off."""
    if not review:
        return []
    out = [
        {
            "kind": SIGNED_OFF,
            "final_call": review["final_call"],
            "by": review["reviewer"],
            "at": review["signed_off_at"],
            "comment": review.get("comment") or None,
            "reason": None,
            "changed_call": True,
        }
    ]
    for amendment in amendments:
        before = out[-1]["final_call"]
        call = amendment.get("final_call") or before
        out.append(
            {
                "kind": AMENDED,
                "final_call": call,
                "by": amendment["by"],
                "at": amendment["at"],
                "comment": amendment.get("comment") or None,
                "reason": amendment["reason"],
                "changed_call": call != before,
            }
        )
    return out


def current(review: dict | None, amendments: list[dict]) -> dict | None:
    """The statement in force (the latest), or None before sign-off."""
    statements = history(review, amendments)
    return statements[-1] if statements else None
