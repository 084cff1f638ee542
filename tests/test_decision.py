"""The served decision's thresholds (training/decision.py): risk control on synthetic validation outputs whose
right and wrong answers are placed where each rule must find them."""

from __future__ import annotations

import numpy as np
from conftest import require


def outputs(n_right: int, n_wrong: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (N, 4) and labels: ``n_right`` confident right answers, then ``n_wrong`` leukaemia fields called
    Normal at 0.6-0.7."""
    probs, labels = [], []
    for i in range(n_right):
        c = i % 4
        p = np.full(4, 0.02)
        p[c] = 0.94
        probs.append(p)
        labels.append(c)
    for _ in range(n_wrong):
        top = rng.uniform(0.6, 0.7)
        probs.append(np.array([top, 1 - top, 0.0, 0.0]))
        labels.append(1)
    return np.asarray(probs), np.asarray(labels)


def test_a_normal_call_must_beat_every_leukaemia_field_called_normal():
    decision = require("leukostage.training.decision")
    probs, y = outputs(200, 3, np.random.default_rng(0))
    chosen = decision.choose_thresholds(probs, y, None)
    assert chosen["normal_below"] > probs[200:, 0].max()
    assert chosen["uncertain_below"] <= chosen["normal_below"]
    summary = decision.served_summary(probs, y, None, chosen)
    assert summary["leukaemia_called_normal"] == 0 and summary["selective_accuracy"] == 1.0


def test_the_domain_threshold_covers_each_source_not_only_the_largest():
    """A laboratory's 10 validation fields score higher than the base's 400: pooled, the 99th percentile falls
    among the laboratory's and flags half of them; per source, the laboratory's own quantile is the limit."""
    decision = require("leukostage.training.decision")
    rng = np.random.default_rng(1)
    probs, y = outputs(410, 0, rng)
    scores = np.concatenate([rng.uniform(0.30, 0.40, 10), rng.uniform(0.10, 0.20, 400)])
    sources = np.arange(410) >= 10
    pooled = decision.choose_thresholds(probs, y, scores)["domain_threshold"]
    per_source = decision.choose_thresholds(probs, y, scores, sources)["domain_threshold"]
    assert (scores[:10] > pooled).mean() >= 0.5
    assert (scores[:10] > per_source).mean() <= 0.1
    assert per_source <= np.quantile(scores[:10], decision.DOMAIN_COVER)


def test_a_few_fields_cover_reaches_their_quantile_not_the_score_below_it():
    """34 laboratory fields, the largest far above the rest (lab-b's validation part had 0.34 then 0.49): the
    threshold is the 99th percentile, between the two, not the 0.34 a threshold snapped to a score would flag."""
    decision = require("leukostage.training.decision")
    rng = np.random.default_rng(2)
    probs, y = outputs(34, 0, rng)
    scores = np.append(np.sort(rng.uniform(0.20, 0.34, 33)), 0.49)
    tau = decision.choose_thresholds(probs, y, scores)["domain_threshold"]
    assert tau == np.quantile(scores, decision.DOMAIN_COVER)
    assert scores[32] < tau < scores[33]
