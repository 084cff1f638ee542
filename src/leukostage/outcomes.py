"""What a result says, in one vocabulary for every surface: a class, ``uncertain`` for a reason, or refused by the
input check with a code; and the tally of many results by those outcomes.

Evaluation, the case summary (``cases.rule``), batch's run summary, the reports and the CLI all count and name results
through this module, so a new uncertain reason or outcome is added once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .classes import BY_KEY, CLASS_KEYS, UNCERTAIN_KEY

REASON_LOW_CONFIDENCE = "low_confidence"  # the top probability is below the card's decision.uncertain_below
REASON_OUTSIDE = "outside_training_domain"  # the domain score is above the card's domain.threshold
UNCERTAIN_REASONS = (REASON_LOW_CONFIDENCE, REASON_OUTSIDE)
REFUSED = "refused"  # the outcome of an input the input check refused (its ``code`` says why)
UNKNOWN_CODE = "unknown"  # a refused result that carries no code (every refusal made here has one)

# Why no class is asserted, in words for people (every surface says these, never a class name).
UNCERTAIN_REASON_NAMES: dict[str, str] = {
    REASON_OUTSIDE: "outside the training domain",
    REASON_LOW_CONFIDENCE: "low confidence",
}
UNCERTAIN_REASON_TEXT: dict[str, str] = {
    REASON_OUTSIDE: "This image is unlike the images the model was trained on (probably another laboratory, stain, "
    "microscope or magnification), so its probabilities are not evidence for any class. To use the model on such "
    "images, it must first be retrained or calibrated on that laboratory's own labelled images.",
    REASON_LOW_CONFIDENCE: "The model is not confident enough to name a class: no class is asserted for this image.",
}


def outcome(result: dict) -> str:
    """A class key, ``uncertain`` or ``refused``. A label this version does not know reads as uncertain."""
    if not result.get("valid"):
        return REFUSED
    label = result.get("label")
    return label if label in BY_KEY else UNCERTAIN_KEY


def uncertain_reason(result: dict) -> str | None:
    """Why a valid result names no class; None when it names one or was refused.

    Results from models before the domain check carry no reason: their only uncertain outcome was low confidence.
    """
    if outcome(result) != UNCERTAIN_KEY:
        return None
    return result.get("uncertain_reason") or REASON_LOW_CONFIDENCE


def refusal_code(result: dict) -> str:
    """The input check's code of a refused result."""
    return result.get("code") or UNKNOWN_CODE


@dataclass
class Tally:
    """Results counted by outcome: each class, uncertain by reason, refused by code.

    Counts, never rows, so a batch of a million images keeps a flat memory. Every class and reason is present (at
    zero); refusal codes appear as they occur.
    """

    labels: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CLASS_KEYS, 0))
    uncertain: dict[str, int] = field(default_factory=lambda: dict.fromkeys(UNCERTAIN_REASONS, 0))
    refused: dict[str, int] = field(default_factory=dict)

    def add(self, result: dict) -> None:
        kind = outcome(result)
        if kind == REFUSED:
            code = refusal_code(result)
            self.refused[code] = self.refused.get(code, 0) + 1
        elif kind == UNCERTAIN_KEY:
            reason = uncertain_reason(result)
            self.uncertain[reason] = self.uncertain.get(reason, 0) + 1
        else:
            self.labels[kind] += 1

    def update(self, results: Iterable[dict]) -> Tally:
        for result in results:
            self.add(result)
        return self

    @property
    def n_uncertain(self) -> int:
        return sum(self.uncertain.values())

    @property
    def n_valid(self) -> int:
        """Results the input check accepted: a class or uncertain."""
        return sum(self.labels.values()) + self.n_uncertain

    @property
    def n_refused(self) -> int:
        return sum(self.refused.values())

    def as_dict(self) -> dict:
        """``{class: n, ..., "uncertain": {reason: n}, "refused": {code: n}}`` (the case summary's ``counts``)."""
        return {**self.labels, UNCERTAIN_KEY: dict(self.uncertain), REFUSED: dict(self.refused)}


def tally(results: Iterable[dict]) -> Tally:
    """Count ``results`` (prediction results: ``valid``, ``label``, ``uncertain_reason``, ``code``) by outcome."""
    return Tally().update(results)


def uncertain_reason_name(reason: str | None) -> str:
    """Why no class is asserted, in a few words (``outside the training domain``); results from before the domain
    check carry no reason, and their only uncertain outcome is low confidence."""
    return UNCERTAIN_REASON_NAMES.get(reason or REASON_LOW_CONFIDENCE, str(reason).replace("_", " "))


def uncertain_reason_text(reason: str | None) -> str:
    """Why no class is asserted, in a sentence or two for people."""
    return UNCERTAIN_REASON_TEXT.get(reason or REASON_LOW_CONFIDENCE, UNCERTAIN_REASON_TEXT[REASON_LOW_CONFIDENCE])
