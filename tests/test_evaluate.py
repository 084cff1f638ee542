import json

import numpy as np
import pytest

from leukostage.evaluate import compute_metrics, expected_calibration_error, write_report


def test_perfect_and_confused_predictions():
    y = np.array([0, 1, 2, 3, 0, 1])
    perfect = np.eye(4)[y]
    m = compute_metrics(y, perfect)
    assert m["accuracy"] == 1.0 and m["macro_f1"] == 1.0 and m["roc_auc_ovr"] == 1.0
    assert m["confusion_matrix"] == np.diag([2, 2, 1, 1]).tolist()
    swapped = np.eye(4)[[1, 1, 2, 3, 0, 1]]
    m = compute_metrics(y, swapped)
    assert m["accuracy"] == pytest.approx(5 / 6)
    assert m["confusion_matrix"][0] == [1, 1, 0, 0]
    assert m["per_class"]["normal"]["recall"] == 0.5


def test_ece_is_zero_when_confidence_matches_accuracy_and_large_when_overconfident():
    y = np.array([0] * 10)
    calibrated = np.tile([0.7, 0.1, 0.1, 0.1], (10, 1))
    pred = np.array([0] * 7 + [1] * 3)
    probs = np.where(np.arange(4) == pred[:, None], 0.7, 0.1)
    assert expected_calibration_error(y, probs) == pytest.approx(0.0, abs=1e-9)
    overconfident = np.where(np.arange(4) == pred[:, None], 0.99, 0.0033)
    assert expected_calibration_error(y, overconfident) == pytest.approx(0.29, abs=0.01)
    assert expected_calibration_error(y, calibrated) == pytest.approx(0.3)


def test_report_files(tmp_path):
    y = np.array([0, 1, 2, 3])
    m = compute_metrics(y, np.eye(4)[y])
    write_report(tmp_path, m, {"split": "random", "seed": 42, "data_fingerprint": "abc"}, "t")
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert doc["meta"]["seed"] == 42 and doc["metrics"]["accuracy"] == 1.0
    assert "Pro-B ALL" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 1000
