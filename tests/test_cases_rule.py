"""The case call: which fields count, how the call is made, and the rule chosen by evaluate-cases."""

from __future__ import annotations

import json

from leukostage.cases import rule
from leukostage.cases.rule import CaseRule, call, is_counted, load_rule, summarise
from leukostage.classes import CLASS_KEYS


def field(label: str, probs: dict[str, float] | None = None, reason: str | None = None) -> dict:
    probs = probs or {k: (0.7 if k == label else 0.1) for k in CLASS_KEYS}
    out = {"valid": True, "label": label, "top_class": max(probs, key=probs.get), "probabilities": probs}
    if reason:
        out["uncertain_reason"] = reason
    return out


def refused(code: str = "not_blood_smear") -> dict:
    return {"valid": False, "code": code, "reason": "..."}


def test_summary_counts_classes_uncertain_by_reason_and_refused():
    results = [
        field("mid"),
        field("mid"),
        field("uncertain"),
        field("uncertain", reason="outside_training_domain"),
        refused(),
        refused("unreadable"),
        refused(),
    ]
    c = summarise(results, CaseRule())["counts"]
    assert c["mid"] == 2 and c["normal"] == 0
    assert c["uncertain"] == {"low_confidence": 1, "outside_training_domain": 1}  # missing reason -> low confidence
    assert c["refused"] == {"not_blood_smear": 2, "unreadable": 1}


def test_refused_and_out_of_domain_fields_never_count():
    assert not is_counted(refused())
    assert not is_counted(field("uncertain", reason="outside_training_domain"))
    assert is_counted(field("uncertain", reason="low_confidence"))
    many_refused = [field("early")] * 3 + [refused()] * 20
    summary = summarise(many_refused, CaseRule())
    assert summary["counted"] == 3 and summary["case_call"] == "early"
    assert summary["mean_probabilities"]["early"] == 0.7


def test_too_few_fields_is_uncertain():
    assert call([field("advanced")] * 2, CaseRule(min_fields=3)) == "uncertain"
    assert call([field("advanced")] * 3, CaseRule(min_fields=3)) == "advanced"
    assert summarise([refused()] * 10, CaseRule())["case_call"] == "uncertain"


def test_normal_needs_its_margin_else_the_likeliest_leukaemic_class():
    probs = {"normal": 0.55, "early": 0.05, "mid": 0.3, "advanced": 0.1}
    fields = [field("normal", probs)] * 5
    assert call(fields, CaseRule(normal_min=0.5)) == "normal"
    assert call(fields, CaseRule(normal_min=0.6)) == "mid"


def test_vote_and_min_share():
    fields = [field("early")] * 4 + [field("mid")] * 3 + [field("advanced")] * 3
    assert call(fields, CaseRule(kind="vote")) == "early"
    assert call(fields, CaseRule(kind="vote", min_share=0.5)) == "uncertain"


def test_rule_sentence_says_how():
    text = CaseRule(normal_min=0.7).describe()
    assert text.endswith(".") and text.count(". ") == 0
    assert "at least 3" in text and "0.70" in text


def test_packaged_rule_is_the_one_chosen(tmp_path):
    doc = json.loads(rule.RULE_PATH.read_text())
    assert load_rule() == CaseRule(**doc["rule"])
    assert "val" in doc["chosen_on"] and "blocked" in doc["chosen_on"]
    (tmp_path / "r.json").write_text(json.dumps({"rule": {"kind": "vote", "min_fields": 5}}))
    assert load_rule(tmp_path / "r.json") == CaseRule(kind="vote", min_fields=5)
    assert load_rule(tmp_path / "missing.json") == CaseRule()
