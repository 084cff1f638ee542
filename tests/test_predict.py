import json

import numpy as np
import pytest

from leukostage.classes import CLASS_KEYS
from leukostage.imaging import to_unit_range
from leukostage.predict import Predictor, analyse_bytes, analyse_path, decide, result_fields
from leukostage.training.data import discover, load_arrays, make_split

REGRESSION_SUBSET = 120  # the first N images of the shipped model's own test split, in split order


def test_card_drives_preprocessing_and_decision(predictor):
    assert predictor.classes_ == CLASS_KEYS
    assert predictor.image_size == predictor.card["input"]["shape"][1] == 224  # lite0 reads the native 224 px
    assert 0.0 < predictor.uncertain_below < 1.0
    assert predictor.info["name"] and predictor.info["version"]


def test_prediction_contract_on_a_real_smear(predictor, sample_smears):
    path = sample_smears["advanced"]
    r = analyse_bytes(path.read_bytes(), str(path), predictor).result
    assert r["valid"] is True and r["file"] == str(path)
    assert set(r["probabilities"]) == set(CLASS_KEYS)
    assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert r["confidence"] == pytest.approx(max(r["probabilities"].values()), abs=1e-6)
    # an Advanced (Pro-B ALL) image of the dataset, given its class with confidence
    assert (r["label"], r["top_class"], r["dataset_label"]) == ("advanced", "advanced", "Pro-B ALL")
    assert r["uncertain_reason"] is None and r["confidence"] > predictor.uncertain_below
    json.dumps(r)  # JSON-ready


def test_unreadable_inputs_become_results_not_exceptions(predictor, tmp_path):
    missing = analyse_path(tmp_path / "nope.jpg", predictor).result
    assert set(missing) == {"file", "valid", "code", "reason"}
    assert missing["file"] == str(tmp_path / "nope.jpg") and missing["valid"] is False
    assert missing["code"] == "unreadable" and "No such file" in missing["reason"] and "nope.jpg" in missing["reason"]
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
    assert decide(probs, 0.5, domain_score=12.0, domain_threshold=10.0) == (
        "uncertain",
        0.97,
        "outside_training_domain",
    )
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
    probs = np.concatenate([predictor.predict_proba(images[i : i + 40]) for i in range(0, len(images), 40)])
    accuracy = (probs.argmax(1) == ds.labels[idx]).mean()
    assert accuracy >= 0.95, f"shipped model accuracy {accuracy:.3f} on {len(idx)} test images"


def test_missing_model_or_card_is_a_clear_error(tmp_path, model_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        Predictor.load(tmp_path / "none.onnx")
    lonely = tmp_path / "m.onnx"
    lonely.write_bytes(model_path.read_bytes())
    with pytest.raises(FileNotFoundError, match="card"):
        Predictor.load(lonely)


# --- the card's decision, end to end (issue 12 item 9) ---------------------------------------------------------------
def with_threshold(value):
    return lambda card: {**card, "decision": {**card["decision"], "uncertain_below": value}}


def test_card_threshold_makes_predictor_cli_and_web_answer_uncertain(model_with_card, predictor, sample_smears):
    """A card that demands more confidence than the model ever has: every surface answers "uncertain" and keeps
    the probabilities; the shipped card on the same image answers a class."""
    import subprocess
    import sys

    from web_server import multipart

    from leukostage.web import create_app

    path = sample_smears["advanced"]
    shipped = analyse_path(path, predictor).result
    assert shipped["label"] == "advanced"  # so "uncertain" below comes from the threshold, not the image
    doubtful = model_with_card(with_threshold(0.999999))
    strict = Predictor.load(doubtful)
    assert strict.uncertain_below == 0.999999
    side = strict.image_size
    assert strict.predict(to_unit_range(np.stack([np.zeros((side, side, 3), np.uint8)]))) == ["uncertain"]
    result = analyse_path(path, strict).result
    assert result["label"] == "uncertain" and result["top_class"] == shipped["label"]
    assert result["uncertain_reason"] == "low_confidence"  # the card's threshold, not the domain check
    assert result["probabilities"] == shipped["probabilities"]

    cli = subprocess.run(
        [sys.executable, "-m", "leukostage.cli", "predict", "--json", "--model", str(doubtful), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 0 and json.loads(cli.stdout)[0]["label"] == "uncertain"

    client = create_app({"TESTING": True, "MODEL_PATH": str(doubtful), "ORT_THREADS": 1}).test_client()
    body, content_type = multipart("file", [("smear.jpg", path.read_bytes())])
    r = client.post("/predict", data=body, content_type=content_type)
    assert r.status_code == 200 and r.json["label"] == "uncertain" and r.json["top_class"] == shipped["label"]


def test_card_without_decision_is_refused_not_never_uncertain(model_with_card):
    """A missing threshold used to mean 0.0, i.e. never uncertain, silently."""
    bare = model_with_card(lambda card: {k: v for k, v in card.items() if k != "decision"})
    with pytest.raises(ValueError, match="no decision.uncertain_below; re-export"):
        Predictor.load(bare)
    odd = model_with_card(with_threshold(1.5), name="odd")
    with pytest.raises(ValueError, match=r"not a probability in \[0, 1\]"):
        Predictor.load(odd)


def test_card_with_other_classes_is_refused(model_with_card):
    swapped = model_with_card(lambda card: {**card, "classes": card["classes"][::-1]})
    with pytest.raises(ValueError, match="this version expects"):
        Predictor.load(swapped)


def test_corrupt_model_file_is_a_model_load_error(model_with_card):
    from leukostage.predict import ModelLoadError

    broken = model_with_card(lambda card: card, name="broken")
    broken.write_bytes(broken.read_bytes()[:5000])  # truncated
    with pytest.raises(ModelLoadError, match="not a loadable ONNX model"):
        Predictor.load(broken)
