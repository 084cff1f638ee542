import json
import shutil

import cv2
import numpy as np
import pytest

from leukostage.classes import CLASS_KEYS
from leukostage.training.evaluate import compute_metrics, expected_calibration_error, score_external, write_report
from leukostage.validate import DEFAULT_PRESET, validate_path


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


def test_external_scoring_counts_rejections_and_breaks_results_down_by_subfolder(model_path, data_dir, tmp_path):
    pbc = tmp_path / "pbc"
    for kind in ("lymphocyte", "neutrophil"):
        (pbc / kind).mkdir(parents=True)
        for f in sorted((data_dir / "pbc_sample" / kind).glob("*.jpg"))[:2]:
            shutil.copy(f, pbc / kind / f.name)
    cv2.imwrite(str(pbc / "lymphocyte" / "blank.png"), np.full((200, 200, 3), 255, np.uint8))
    summary = score_external(model_path, [pbc], out=tmp_path / "report")
    s = summary["pbc"]
    # the gate's own verdicts (most PBC cells are refused for their magnification; the blank picture for its light)
    refused = {f.parent.name + "/" + f.name for f in pbc.rglob("*.*") if not validate_path(f, DEFAULT_PRESET).valid}
    assert "lymphocyte/blank.png" in refused
    assert s["n"] == 5 and s["refused"] == len(refused) and sum(s["refused_codes"].values()) == len(refused)
    # every valid image is counted once: under its class label or under one uncertain reason
    assert sum(s["labels"].values()) + sum(s["uncertain"].values()) == 5 - len(refused)
    assert list(s["labels"]) == list(CLASS_KEYS) and set(s["uncertain"]) == {
        "low_confidence",
        "outside_training_domain",
    }
    assert s["leukaemia_labelled"] == s["labels"]["early"] + s["labels"]["mid"] + s["labels"]["advanced"]
    assert 0 <= s["leukaemia_confident"] <= s["leukaemia_labelled"]
    assert {k: v["n"] for k, v in s["by_subfolder"].items()} == {"lymphocyte": 3, "neutrophil": 2}
    lymphocytes_refused = sum(r.startswith("lymphocyte/") for r in refused)
    assert s["by_subfolder"]["lymphocyte"]["refused"] == lymphocytes_refused
    report = (tmp_path / "report" / "report.md").read_text()
    row = report.split("| pbc/lymphocyte | 3 |")[1].split("\n")[0]
    assert f"| {lymphocytes_refused} |" in row
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["folders"]["pbc"]["n"] == 5


def test_external_scoring_of_an_empty_folder_says_so(model_path, tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no images"):
        score_external(model_path, [tmp_path])
