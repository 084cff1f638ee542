"""The case call: one label for a sample from the model's results on its fields.

Which fields count: the valid ones the model could judge; refused images (not a smear, unreadable) never count, and
neither do fields outside the model's training domain (``outcomes.REASON_OUTSIDE``).
Low-confidence fields do count, through their probabilities.

The rule (``CaseRule``): average the class probabilities over the counted fields (``kind="mean"``) or take the
majority of the fields' top classes (``kind="vote"``); with fewer than ``min_fields`` counted fields, or a winning
share below ``min_share``, the case is ``uncertain``. Normal (``classes.NORMAL_KEY``) is only called when its share
reaches ``normal_min`` (missing leukaemia is the costly error); otherwise the best leukaemic class is the call. The
parameters in force are those ``leukostage evaluate-cases`` chose on the validation part of the blocked split and
wrote to ``case_rule.json`` beside this module (see reports/cases/report.md).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from importlib import resources
from pathlib import Path

from ..classes import CLASS_KEYS, LEUKAEMIA_KEYS, NORMAL_KEY, UNCERTAIN_KEY
from ..outcomes import REASON_OUTSIDE, tally, uncertain_reason

RULE_PATH = Path(str(resources.files("leukostage") / "cases" / "case_rule.json"))


@dataclass(frozen=True)
class CaseRule:
    kind: str = "mean"  # "mean" of probabilities, or "vote" of top classes
    min_fields: int = 3
    min_share: float = 0.0
    normal_min: float = 0.5

    def describe(self) -> str:
        how = "the mean class probability over" if self.kind == "mean" else "the majority of the top classes of"
        normal = (
            f"; normal only with a share of at least {self.normal_min:.2f}, else the likeliest leukaemic class"
            if self.normal_min > 0.5
            else ""
        )
        floor = f"; below a share of {self.min_share:.2f} it is uncertain" if self.min_share > 0 else ""
        return (
            f"Called from {how} the fields that passed the input check and lie in the model's training domain "
            f"(at least {self.min_fields}, else uncertain){normal}{floor}."
        )


def load_rule(path: str | Path | None = None) -> CaseRule:
    """The chosen rule from ``case_rule.json`` (the defaults above where the file is absent)."""
    path = Path(path) if path else RULE_PATH
    if not path.is_file():
        return CaseRule()
    params = json.loads(path.read_text())["rule"]
    return CaseRule(**{f.name: params[f.name] for f in fields(CaseRule) if f.name in params})


def is_counted(result: dict) -> bool:
    """A field enters the call: valid, with probabilities, and not outside the training domain."""
    if not result.get("valid") or not isinstance(result.get("probabilities"), dict):
        return False
    return uncertain_reason(result) != REASON_OUTSIDE


def mean_probabilities(results: list[dict]) -> dict[str, float] | None:
    if not results:
        return None
    return {k: round(sum(float(r["probabilities"][k]) for r in results) / len(results), 6) for k in CLASS_KEYS}


def shares(results: list[dict], kind: str) -> dict[str, float]:
    """Per class: the mean probability (``mean``) or the fraction of fields whose top class it is (``vote``)."""
    if kind == "mean":
        return mean_probabilities(results) or {k: 0.0 for k in CLASS_KEYS}
    tops = [max(CLASS_KEYS, key=lambda k: float(r["probabilities"][k])) for r in results]
    return {k: tops.count(k) / len(tops) if tops else 0.0 for k in CLASS_KEYS}


def call(results: list[dict], rule: CaseRule) -> str:
    """The case call for the counted ``results`` under ``rule``: a class key or ``uncertain``."""
    if len(results) < max(1, rule.min_fields):
        return UNCERTAIN_KEY
    share = shares(results, rule.kind)
    best = max(CLASS_KEYS, key=lambda k: share[k])
    if best == NORMAL_KEY and share[NORMAL_KEY] < rule.normal_min:
        best = max(LEUKAEMIA_KEYS, key=lambda k: share[k])
    return best if share[best] >= rule.min_share else UNCERTAIN_KEY


def summarise(results: list[dict], rule: CaseRule | None = None) -> dict:
    """The case dict's ``summary``: counts, how many fields counted, their mean probabilities, the call and its rule."""
    rule = rule or load_rule()
    counted = [r for r in results if is_counted(r)]
    return {
        "counts": tally(results).as_dict(),
        "counted": len(counted),
        "mean_probabilities": mean_probabilities(counted),
        "case_call": call(counted, rule),
        "case_rule": rule.describe(),
    }


def rule_dict(rule: CaseRule) -> dict:
    return asdict(rule)
