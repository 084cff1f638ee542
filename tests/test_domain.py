"""The domain check: the numpy reference, and the shipped model's answers on real in- and out-of-domain images."""

import numpy as np
import pytest

from leukostage.domain import domain_fields, mahalanobis
from leukostage.imaging import to_unit_range
from leukostage.predict import analyse_path
from leukostage.training.data import discover, load_arrays, make_split


def test_whitened_distance_is_the_mahalanobis_distance():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 6))
    cov = a @ a.T + 0.1 * np.eye(6)
    precision = np.linalg.inv(cov)
    values, vectors = np.linalg.eigh(cov)
    w = vectors / np.sqrt(values)  # what export.fit_domain stores
    assert np.allclose(w @ w.T, precision)
    x, mean = rng.normal(size=(5, 6)), rng.normal(size=6)
    expected = np.sqrt(np.einsum("nd,de,ne->n", x - mean, precision, x - mean))
    assert np.allclose(mahalanobis(x, mean, w), expected)
    assert mahalanobis(mean[None], mean, w)[0] == 0.0


def test_domain_fields_flag_only_scores_above_the_threshold():
    assert domain_fields(3.0, 3.0)["in_domain"] is True  # the threshold itself passes (the largest val score)
    assert domain_fields(3.01, 3.0) == {"score": 3.01, "threshold": 3.0, "in_domain": False}


@pytest.fixture(scope="module")
def shipped_domain(predictor):
    if "domain" not in predictor.card:
        pytest.fail("the shipped model has no domain check (card['domain'] missing)")
    return predictor.card["domain"]


def test_shipped_card_says_how_the_domain_threshold_was_chosen(shipped_domain, predictor):
    assert shipped_domain["output"] == "domain_score"
    assert "train part" in shipped_domain["fitted_on"] and "val part" in shipped_domain["threshold_chosen_on"]
    assert shipped_domain["threshold"] > 0
    assert any("one hospital" in line for line in predictor.card["limits"])


def test_another_laboratorys_cells_are_outside_the_training_domain(shipped_domain, predictor, data_dir):
    """PBC cells (Barcelona, May Gruenwald-Giemsa) are normal blood: the shipped model must not classify them."""
    files = [
        sorted((data_dir / "pbc_sample" / kind).glob("*.jpg"))[0]
        for kind in ("lymphocyte", "neutrophil", "monocyte", "basophil")
    ]
    results = [analyse_path(f, predictor).result for f in files]
    for r in results:
        assert r["valid"], r
        assert r["label"] == "uncertain" and r["uncertain_reason"] == "outside_training_domain", r
        assert r["domain"]["in_domain"] is False and r["domain"]["score"] > r["domain"]["threshold"]
        assert set(r["probabilities"]) == {"normal", "early", "mid", "advanced"}  # still given


def test_in_domain_test_images_pass_the_domain_check(shipped_domain, predictor, data_dir):
    """Images of the shipped model's own test part (never used to fit or choose anything) are in its domain."""
    training = predictor.card["training"]
    ds = discover(data_dir)
    idx = make_split(ds, training["split"], training["seed"])["test"][::4]
    images = to_unit_range(load_arrays(ds, size=predictor.image_size, progress=False)[idx])
    results = []
    for i in range(0, len(images), 32):
        results += predictor.decide_batch(predictor.run_decision(images[i : i + 32]))
    flagged = sum(r["uncertain_reason"] == "outside_training_domain" for r in results)
    assert all("domain" in r for r in results)
    assert flagged <= 0.02 * len(results), f"{flagged} of {len(results)} test images flagged outside the domain"
