"""The training-path verbs through the CLI, on the real data and small: train -> evaluate (and its guards) ->
export --metrics (and its fingerprint check). These are the commands that make the README's numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from leukostage.cli import main
from leukostage.training.data import discover, make_split

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(data_dir, tmp_path_factory) -> Path:
    """`leukostage train` for one epoch on 8 images per class (fp32: the same numbers on every CPU)."""
    out = tmp_path_factory.mktemp("run")
    assert (
        main(
            [
                "train",
                "--data",
                str(data_dir),
                "--out",
                str(out),
                "--epochs",
                "1",
                "--limit-per-class",
                "8",
                "--batch-size",
                "16",
                "--precision",
                "fp32",
                "--quiet",
            ]
        )
        == 0
    )
    return out


@pytest.fixture(scope="module")
def val_report(run_dir, data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "val"
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(run_dir / "best.pt"),
                "--data",
                str(data_dir),
                "--part",
                "val",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return out


def test_train_prints_its_summary_and_writes_the_run(run_dir):
    summary = json.loads((run_dir / "run.json").read_text())
    assert summary["epochs_run"] == 1 and summary["best_epoch"] == 1 and summary["split"] == "random"
    assert (run_dir / "best.pt").stat().st_size > 0


def test_evaluate_scores_the_models_own_split(val_report, data_dir, capsys):
    doc = json.loads((val_report / "metrics.json").read_text())
    ds = discover(data_dir)
    assert doc["meta"] == {
        **doc["meta"],
        "split": "random",
        "part": "val",
        "seed": 42,
        "data_fingerprint": ds.fingerprint,
    }
    assert doc["metrics"]["n"] == len(make_split(ds, "random", 42)["val"])
    assert 0.0 <= doc["metrics"]["accuracy"] <= 1.0 and (val_report / "report.md").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--split", "blocked"], "trained on the random split with seed 42"),
        (["--seed", "7"], "would count training images as held out"),
    ],
)
def test_evaluate_refuses_another_split_or_seed(run_dir, data_dir, tmp_path, capsys, args, message):
    assert (
        main(["evaluate", "--model", str(run_dir / "best.pt"), "--data", str(data_dir), "--out", str(tmp_path), *args])
        == 2
    )
    assert message in capsys.readouterr().err
    assert not (tmp_path / "metrics.json").exists()


@pytest.fixture(scope="module")
def changed_data(data_dir, tmp_path_factory) -> Path:
    """The real data folder less one image (symbolic links): the model's split cannot be rebuilt on it."""
    root = tmp_path_factory.mktemp("data")
    ds = discover(data_dir)
    for path in ds.paths[1:]:
        target = root / path.relative_to(data_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(path.resolve())  # absolute: a relative data path would dangle
    return root


def test_evaluate_refuses_other_data(run_dir, changed_data, tmp_path, capsys):
    assert (
        main(["evaluate", "--model", str(run_dir / "best.pt"), "--data", str(changed_data), "--out", str(tmp_path)])
        == 2
    )
    assert "data fingerprint" in capsys.readouterr().err and not (tmp_path / "metrics.json").exists()


def test_export_copies_metrics_of_the_same_data(run_dir, val_report, data_dir, tmp_path, capsys):
    onnx = tmp_path / "smoke.onnx"
    assert (
        main(
            [
                "export",
                "--checkpoint",
                str(run_dir / "best.pt"),
                "--out",
                str(onnx),
                "--data",
                str(data_dir),
                "--metrics",
                str(val_report / "metrics.json"),
            ]
        )
        == 0
    )
    assert "wrote" in capsys.readouterr().out
    card = json.loads(onnx.with_suffix(".card.json").read_text())
    report = json.loads((val_report / "metrics.json").read_text())
    copied = card["metrics"]["random_val"]
    assert (
        copied["accuracy"] == report["metrics"]["accuracy"]
        and copied["data_fingerprint"] == discover(data_dir).fingerprint
    )
    assert card["metrics"]["random_test"]["n"] == len(make_split(discover(data_dir), "random", 42)["test"])


def test_export_refuses_metrics_of_other_data(run_dir, val_report, tmp_path, capsys):
    doc = json.loads((val_report / "metrics.json").read_text())
    doc["meta"]["data_fingerprint"] = "0123456789abcdef"
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps(doc))
    onnx = tmp_path / "x.onnx"
    assert (
        main(["export", "--checkpoint", str(run_dir / "best.pt"), "--out", str(onnx), "--metrics", str(foreign)]) == 2
    )
    assert "0123456789abcdef" in capsys.readouterr().err and not onnx.exists()


def test_adapt_warns_when_the_adapted_model_is_no_better_on_the_laboratorys_validation_part():
    from leukostage.cli.training import adaptation_advice

    base = {"coverage": 0.91, "selective_accuracy": 1.0, "leukaemia_called_normal": 0}
    better = {"coverage": 0.97, "selective_accuracy": 1.0, "leukaemia_called_normal": 0}
    assert adaptation_advice(base, better) is None
    fewer = adaptation_advice(base, {**better, "coverage": 0.88})
    assert fewer is not None and "answers fewer fields than the base" in fewer and "keep serving the base" in fewer
    worse = adaptation_advice(base, {**better, "selective_accuracy": 0.98, "leukaemia_called_normal": 1})
    assert worse is not None and "less accurate" in worse and "calls more leukaemia fields Normal" in worse
    assert adaptation_advice(base, {**better, "selective_accuracy": None, "coverage": 0.0}) is not None


def test_adapt_says_which_fields_the_gate_refused_and_names_the_laboratorys_validator():
    from leukostage.cli.training import gate_notes

    clean = {"fields": 191, "refused_by_validator": {"count": 0, "codes": "none"}}
    assert gate_notes(clean, None, "lab.onnx") == []
    refused = {"fields": 191, "refused_by_validator": {"count": 2, "codes": "out_of_focus: 2"}}
    gate = {
        "validator": "lab.validator.json",
        "content_threshold": 0.9,
        "content_threshold_was": 0.98,
        "fields_let_through": 11,
    }
    first, second = gate_notes(refused, gate, "models/lab.onnx")
    assert "0.9 (was 0.98; 11 of your fields now pass)" in first and "lab.validator.json beside lab.onnx" in first
    assert "2 of the 191 fields (out_of_focus: 2)" in second and "serving refuses such fields too" in second
