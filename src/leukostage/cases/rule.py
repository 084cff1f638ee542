"""The case call: one label for a sample from the model's results on its fields.

Which fields count: the valid ones the model could judge; refused images (not a smear, unreadable) never count, and
neither do fields outside the model's training domain (``uncertain_reason == "outside_training_domain"``).
Low-confidence fields do count, through their probabilities.

The rule (``CaseRule``): average the class probabilities over the counted fields (``kind="mean"``) or take the
majority of the fields' top classes (``kind="vote"``); with fewer than ``min_fields`` counted fields, or a winning
share below ``min_share``, the case is ``uncertain``. ``normal`` is only called when its share reaches
``normal_min`` (missing leukaemia is the costly error); otherwise the best leukaemic class is the call. The parameters
in force are those ``leukostage evaluate-cases`` chose on the validation part of the blocked split and wrote to
``case_rule.json`` beside this module (see reports/cases/report.md).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from importlib import resources
from pathlib import Path

from ..classes import BY_KEY, CLASS_KEYS, UNCERTAIN_KEY

RULE_PATH = Path(str(resources.files("leukostage") / "cases" / "case_rule.json"))
OUT_OF_DOMAIN = "outside_training_domain"
LOW_CONFIDENCE = "low_confidence"
UNCERTAIN_REASONS = (LOW_CONFIDENCE, OUT_OF_DOMAIN)
LEUKAEMIC = tuple(k for k in CLASS_KEYS if k != "normal")


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


def uncertain_reason(result: dict) -> str:
    """The reason a valid result is uncertain (older results carry none: low confidence)."""
    return result.get("uncertain_reason") or LOW_CONFIDENCE


def counts(results: Iterable[dict]) -> dict:
    """Fields per outcome: each class, uncertain by reason, refused by the validator's code."""
    out: dict = {k: 0 for k in CLASS_KEYS}
    out["uncertain"] = {r: 0 for r in UNCERTAIN_REASONS}
    out["refused"] = {}
    for r in results:
        if not r.get("valid"):
            code = r.get("code") or "refused"
            out["refused"][code] = out["refused"].get(code, 0) + 1
        elif r.get("label") in BY_KEY:
            out[r["label"]] += 1
        else:
            reason = uncertain_reason(r)
            out["uncertain"][reason] = out["uncertain"].get(reason, 0) + 1
    return out


def is_counted(result: dict) -> bool:
    """A field enters the call: valid, with probabilities, and not outside the training domain."""
    if not result.get("valid") or not isinstance(result.get("probabilities"), dict):
        return False
    return not (result.get("label") == UNCERTAIN_KEY and uncertain_reason(result) == OUT_OF_DOMAIN)


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
    if best == "normal" and share["normal"] < rule.normal_min:
        best = max(LEUKAEMIC, key=lambda k: share[k])
    return best if share[best] >= rule.min_share else UNCERTAIN_KEY


def summarise(results: list[dict], rule: CaseRule | None = None) -> dict:
    """The case dict's ``summary``: counts, how many fields counted, their mean probabilities, the call and its rule."""
    rule = rule or load_rule()
    counted = [r for r in results if is_counted(r)]
    return {
        "counts": counts(results),
        "counted": len(counted),
        "mean_probabilities": mean_probabilities(counted),
        "case_call": call(counted, rule),
        "case_rule": rule.describe(),
    }


def rule_dict(rule: CaseRule) -> dict:
    return asdict(rule)
