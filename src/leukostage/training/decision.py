"""The served decision's thresholds, chosen where they keep the answers right (issue 18).

Three numbers decide whether an image gets a class: the top probability below which it is ``low_confidence``, the
higher probability a Normal call needs (the dangerous error is leukaemia called Normal), and the domain score above
which it is ``outside_training_domain``. All three are chosen on the validation part, clean and re-made by every
validation shift (:data:`leukostage.training.shifts.VALIDATION_SHIFTS`), each shifted field passed through the same
gate as in serving (eyepiece crop, exposure, rescaling, focus; refusals left out), so the thresholds see what the
model will be asked:

1. ``uncertain_below``: the smallest grid value whose answered validation images (clean and shifted) reach
   :data:`TARGET_ACCURACY`.
2. ``normal_below``: the smallest grid value, at least ``uncertain_below``, above every Normal probability that a
   leukaemia validation image got as its top class (clean or shifted): a Normal call must beat them all.
3. the domain threshold: the largest score whose answered validation images still reach the target accuracy with
   no leukaemia called Normal (selective risk control), and at most the :data:`DOMAIN_COVER` quantile of the
   validation images' scores (that quantile itself where the risk allows), so that what lies beyond every ordinary
   variation is still flagged. Where the
   validation images come from several sources that will all be served (``adapt``: a laboratory's fields and the
   base model's validation part), the quantile is each source's own and the largest is taken, so that the few
   fields of a laboratory are not held to the quantile of the many of the training hospital.

The test part is never used here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..classes import CLASS_KEYS, NORMAL_KEY
from ..validate import DEFAULT_PRESET, get_preset, run_gate
from .shifts import VALIDATION_SHIFTS, Shift

TARGET_ACCURACY = 0.99  # among answered validation images, clean and shifted
GRID = tuple(np.round(np.arange(0.40, 0.99, 0.01), 2))
DOMAIN_COVER = 0.99  # the domain threshold is at most this quantile of the validation images' scores
NORMAL = CLASS_KEYS.index(NORMAL_KEY)


@dataclass
class ShiftedViews:
    """What the gate makes of the validation part's shifted fields: the views it lets through and their classes."""

    views: np.ndarray  # (M, side, side, 3) uint8
    labels: np.ndarray  # (M,)
    shifts: list[str]  # the shift of each view
    refused: dict[str, dict[str, int]]  # per shift: refusal code -> count


def shifted_views(
    images: np.ndarray, labels: np.ndarray, shifts: tuple[Shift, ...] = VALIDATION_SHIFTS, seed: int = 0
) -> ShiftedViews:
    """Every validation shift of ``images`` (uint8, N x H x W x 3), through the serving gate (default preset)."""
    preset = get_preset(DEFAULT_PRESET)
    views, out_labels, names, refused = [], [], [], {}
    for k, shift in enumerate(shifts):
        counts: dict[str, int] = {}
        for rgb, y in zip(shift.apply(images, seed + k), labels):
            verdict = run_gate(rgb, preset)
            if not verdict.valid:
                counts[verdict.code] = counts.get(verdict.code, 0) + 1
                continue
            views.append(verdict.view)
            out_labels.append(int(y))
            names.append(shift.name)
        refused[shift.name] = counts
    side = images.shape[1]
    stacked = np.stack(views) if views else np.zeros((0, side, side, 3), np.uint8)
    return ShiftedViews(stacked, np.asarray(out_labels, np.int64), names, refused)


def _answered(probs: np.ndarray, t: float, m: float, scores: np.ndarray | None, tau: float | None) -> np.ndarray:
    top = probs.argmax(1)
    conf = probs.max(1)
    ok = (conf >= t) & ((top != NORMAL) | (conf >= m))
    if scores is not None and tau is not None:
        ok &= scores <= tau
    return ok


def _risk_ok(probs: np.ndarray, y: np.ndarray, answered: np.ndarray) -> bool:
    if not answered.any():
        return True
    top = probs.argmax(1)
    right = (top == y)[answered].mean() >= TARGET_ACCURACY
    missed = ((y != NORMAL) & (top == NORMAL) & answered).any()
    return bool(right and not missed)


def choose_thresholds(
    probs: np.ndarray, y: np.ndarray, scores: np.ndarray | None, sources: np.ndarray | None = None
) -> dict:
    """The three thresholds (see the module docstring) from validation outputs, clean and shifted together;
    ``sources`` (one label per image) names where each validation image comes from, for the domain cover."""
    conf, top = probs.max(1), probs.argmax(1)
    t = next((g for g in GRID if _risk_ok(probs, y, _answered(probs, g, 0.0, None, None))), GRID[-1])
    wrong_normal = conf[(y != NORMAL) & (top == NORMAL)]
    floor = float(wrong_normal.max()) if wrong_normal.size else 0.0
    m = next((g for g in GRID if g >= t and g > floor), GRID[-1])
    out = {"uncertain_below": float(t), "normal_below": float(m)}
    if scores is None:
        return out
    groups = [scores] if sources is None else [scores[sources == g] for g in np.unique(sources)]
    cover = max(float(np.quantile(g, DOMAIN_COVER)) for g in groups)
    # the answered set only changes at a validation score, so the cover itself is a candidate: snapped down to the
    # score below it, a few fields' quantile (it interpolates towards their largest) would land far inside them
    candidates = np.append(np.sort(scores[scores < cover]), cover)
    tau = float(candidates[0])
    for s in candidates:
        if _risk_ok(probs, y, _answered(probs, t, m, scores, float(s))):
            tau = float(s)
    out["domain_threshold"] = tau
    return out


def served_summary(probs: np.ndarray, y: np.ndarray, scores: np.ndarray | None, chosen: dict) -> dict:
    """Coverage, accuracy among answered and leukaemia called Normal under the chosen thresholds."""
    answered = _answered(
        probs, chosen["uncertain_below"], chosen["normal_below"], scores, chosen.get("domain_threshold")
    )
    top = probs.argmax(1)
    return {
        "n": int(len(y)),
        "coverage": round(float(answered.mean()), 4) if len(y) else None,
        "selective_accuracy": round(float((top == y)[answered].mean()), 4) if answered.any() else None,
        "leukaemia_called_normal": int(((y != NORMAL) & (top == NORMAL) & answered).sum()),
    }
