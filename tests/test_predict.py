import json

import numpy as np
import pytest

from leukostage.classes import CLASS_KEYS
from leukostage.data import discover, load_arrays, make_split
from leukostage.imaging import to_unit_range
from leukostage.predict import Predictor, analyse_bytes, analyse_path, decide, result_fields

REGRESSION_SUBSET = 120  # the first N images of the shipped model's own test split, in split order


def test_card_drives_preprocessing_and_decision(predictor):
    assert predictor.classes_ == CLASS_KEYS
    assert predictor.image_size == 128
    assert 0.0 < predictor.uncertain_below < 1.0
    assert predictor.info["name"] and predictor.info["version"]


def test_prediction_contract_on_a_real_smear(predictor, sample_smears):
    path = sample_smears["advanced"]
    r = analyse_bytes(path.read_bytes(), str(path), predictor).result
    assert r["valid"] is True and r["file"] == str(path)
    assert set(r["probabilities"]) == set(CLASS_KEYS)
    assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert r["confidence"] == pytest.approx(max(r["probabilities"].values()), abs=1e-6)
    assert r["label"] in CLASS_KEYS + ("uncertain",)
    json.dumps(r)  # JSON-ready


def test_unreadable_inputs_become_results_not_exceptions(predictor, tmp_path):
    missing = analyse_path(tmp_path / "nope.jpg", predictor).result
    assert missing == {"file": str(tmp_path / "nope.jpg"), "valid": False, "code": "unreadable",
                       "reason": missing["reason"]}
    fake = tmp_path / "fake.jpg"
    fake.write_text("hello, I am text")
    r = analyse_path(fake, predictor).result
    assert r["valid"] is False and r["code"] == "unreadable" and "label" not in r


def test_decide_marks_low_confidence_uncertain_but_keeps_probabilities():
    probs = np.array([0.4, 0.3, 0.2, 0.1])
    assert decide(probs, 0.5) == ("uncertain", 0.4, "low_confidence")
    assert decide(probs, 0.3) == ("normal", 0.4, None)
    fields = result_fields(probs, 0.5)
    assert fields["label"] == "uncertain" and fields["display_label"] == "Uncertain"
    assert fields["uncertain_reason"] == "low_confidence"
    assert fields["dataset_label"] is None and fields["top_class"] == "normal"
    assert fields["probabilities"]["early"] == 0.3
    assert "domain" not in fields  # a model without a domain check reports none


def test_decide_puts_the_domain_check_before_confidence():
    probs = np.array([0.01, 0.01, 0.01, 0.97])
    assert decide(probs, 0.5, domain_score=12.0, domain_threshold=10.0) == ("uncertain", 0.97, "outside_training_domain")
    assert decide(probs, 0.5, domain_score=9.0, domain_threshold=10.0) == ("advanced", 0.97, None)
    far = result_fields(probs, 0.5, 12.0, 10.0)
    assert far["label"] == "uncertain" and far["uncertain_reason"] == "outside_training_domain"
    assert far["domain"] == {"score": 12.0, "threshold": 10.0, "in_domain": False}
    assert far["probabilities"]["advanced"] == 0.97  # probabilities are still given
    near = result_fields(np.array([0.4, 0.3, 0.2, 0.1]), 0.5, 9.0, 10.0)
    assert near["uncertain_reason"] == "low_confidence" and near["domain"]["in_domain"] is True


def test_shipped_model_still_scores_on_its_own_test_split(predictor, data_dir):
    """Regression guard: a fixed subset of the split the shipped model was trained with (never its training part)."""
    training = predictor.card["training"]
    ds = discover(data_dir)
    assert ds.fingerprint == training["data_fingerprint"], "data changed since the shipped model was trained"
    idx = make_split(ds, training["split"], training["seed"])["test"][:REGRESSION_SUBSET]
    images = to_unit_range(load_arrays(ds, size=predictor.image_size, progress=False)[idx])
    probs = np.concatenate([predictor.predict_proba(images[i:i + 40]) for i in range(0, len(images), 40)])
    accuracy = (probs.argmax(1) == ds.labels[idx]).mean()
    assert accuracy >= 0.95, f"shipped model accuracy {accuracy:.3f} on {len(idx)} test images"


def test_missing_model_or_card_is_a_clear_error(tmp_path, model_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        Predictor.load(tmp_path / "none.onnx")
    lonely = tmp_path / "m.onnx"
    lonely.write_bytes(model_path.read_bytes())
    with pytest.raises(FileNotFoundError, match="card"):
        Predictor.load(lonely)
