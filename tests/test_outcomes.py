"""One vocabulary for what results say (class, uncertain by reason, refused by code) and their tally."""

from __future__ import annotations

import pytest

from leukostage.classes import CLASS_KEYS
from leukostage.outcomes import (
    REASON_LOW_CONFIDENCE,
    REASON_OUTSIDE,
    REFUSED,
    UNCERTAIN_REASONS,
    outcome,
    tally,
    uncertain_reason,
)


def valid(label: str, reason: str | None = None) -> dict:
    out = {"valid": True, "label": label}
    if reason:
        out["uncertain_reason"] = reason
    return out


@pytest.mark.parametrize(
    "result, kind, reason",
    [
        (valid("mid"), "mid", None),
        (valid("uncertain", REASON_OUTSIDE), "uncertain", REASON_OUTSIDE),
        (valid("uncertain"), "uncertain", REASON_LOW_CONFIDENCE),  # a result from before the domain check
        (valid("stage4"), "uncertain", REASON_LOW_CONFIDENCE),  # a label this version does not know
        ({"valid": False, "code": "unreadable"}, REFUSED, None),
        ({}, REFUSED, None),
    ],
)
def test_outcome_and_reason_of_one_result(result, kind, reason):
    assert outcome(result) == kind
    assert uncertain_reason(result) == reason


def test_tally_counts_every_class_and_reason_and_each_refusal_code():
    results = [
        valid("mid"),
        valid("mid"),
        valid("normal"),
        valid("uncertain"),
        valid("uncertain", REASON_OUTSIDE),
        valid("uncertain", REASON_OUTSIDE),
        {"valid": False, "code": "not_blood_smear"},
        {"valid": False, "code": "unreadable"},
        {"valid": False, "code": "not_blood_smear"},
        {"valid": False},
    ]
    t = tally(iter(results))  # a stream is enough: nothing is kept but counts
    assert t.labels == {"normal": 1, "early": 0, "mid": 2, "advanced": 0}
    assert t.uncertain == {REASON_LOW_CONFIDENCE: 1, REASON_OUTSIDE: 2}
    assert t.refused == {"not_blood_smear": 2, "unreadable": 1, "unknown": 1}
    assert (t.n_valid, t.n_uncertain, t.n_refused) == (6, 3, 4)
    d = t.as_dict()
    assert [k for k in d][: len(CLASS_KEYS)] == list(CLASS_KEYS)
    assert d["uncertain"] == t.uncertain and d["refused"] == t.refused


def test_an_empty_tally_names_every_class_and_reason_at_zero():
    d = tally([]).as_dict()
    assert d == {**dict.fromkeys(CLASS_KEYS, 0), "uncertain": dict.fromkeys(UNCERTAIN_REASONS, 0), "refused": {}}
