"""The calibration machinery in small: splits, thresholds, the exported MLP, the negative generators, the report."""

from __future__ import annotations

import numpy as np
import pytest

from leukostage.imaging import load_image
from leukostage.training import negatives
from leukostage.training.calibrate import (
    GENUINE_SOURCES,
    MILD_ACCEPTANCE,
    CalibrationConfig,
    Samples,
    augment_smear,
    choose_threshold,
    derive_colour_rule,
    fit_mlp,
    fit_validator,
    gate_input,
    genuine_split,
    model_scores,
    out_of_fold_scores,
    report_markdown,
    sample_weights,
)
from leukostage.training.data import discover, make_split


def test_genuine_split_is_deterministic_disjoint_and_holds_out_the_served_models_test_part(data_dir):
    a, b = genuine_split(data_dir, 42), genuine_split(data_dir, 42)
    assert a == b
    for source in GENUINE_SOURCES:
        cal, held = set(a[source]["calibration"]), set(a[source]["heldout"])
        assert cal and held and not cal & held
    ds = discover(data_dir)
    assert a["taleqani"]["heldout"] == [ds.paths[i] for i in make_split(ds, "blocked", 42)["test"]]
    assert genuine_split(data_dir, 1)["bccd_smears"] != a["bccd_smears"]


def test_colour_rule_sits_beyond_every_calibration_smear():
    stats = np.array([[10.0, 190.0, 0.02], [60.0, 250.0, 0.5], [30.0, 200.0, 0.1]])
    rule = derive_colour_rule(stats)
    # 80 % of the lowest calibration smear's value (floored), halfway from the brightest smear to 255: exact, so an
    # accept-everything rule (zeros) fails as surely as one that turns away the calibration smears
    assert (rule.min_saturation, rule.min_brightness, rule.min_stain_ratio) == (8.0, 152, 0.016)
    assert rule.max_brightness == 253
    assert (rule.hue_low, rule.hue_high) == (120, 180)


def test_threshold_keeps_the_target_share_of_every_source():
    rng = np.random.default_rng(0)
    scores = np.r_[rng.uniform(0.9, 1.0, 1000), rng.uniform(0.3, 1.0, 200)]
    kind = np.array(["a"] * 1000 + ["b"] * 200)
    t = choose_threshold(scores, kind, 0.995)
    for k in ("a", "b"):
        assert (scores[kind == k] >= t).mean() >= 0.995
    assert t < 0.4  # set by the weaker source


def test_sample_weights_balance_sources_and_categories():
    label = np.array([1, 1, 1, 1, 0, 0, 0])
    kind = np.array(["a", "a", "a", "b", "x", "y", "y"])
    w = sample_weights(label, kind)
    assert w[:3].sum() == pytest.approx(w[3]) and w[4] == pytest.approx(w[5:].sum())
    assert w[label == 1].sum() == pytest.approx(w[label == 0].sum())


def test_exported_mlp_scores_like_scikit_learn():
    from sklearn.neural_network import MLPClassifier

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6))
    y = (x[:, 0] + 0.5 * x[:, 1] ** 2 > 0.5).astype(int)
    model = fit_mlp(x, y, np.ones(len(y)), (8,), 1e-3, 0)
    ours = model_scores(model, x[:20])
    ref = MLPClassifier(hidden_layer_sizes=(8,), alpha=1e-3, solver="lbfgs", max_iter=3000, random_state=0)
    mean, scale = np.asarray(model["mean"]), np.asarray(model["scale"])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref.fit((x - mean) / scale, y, sample_weight=np.ones(len(y)))
    assert np.allclose(ours, ref.predict_proba((x[:20] - mean) / scale)[:, 1], atol=1e-9)


def _separable(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x = np.r_[rng.normal(1.0, 1.0, (n, 4)), rng.normal(-1.0, 1.0, (n, 4))]
    y = np.r_[np.ones(n, int), np.zeros(n, int)]
    kind = np.array(["smear"] * n + ["negative"] * n)
    group = np.array([f"s:{i}" for i in range(n)] + [f"n:{i}" for i in range(n)])
    return x, y, kind, group


def test_extra_rows_are_scored_by_the_fold_model_that_never_saw_their_field():
    x, y, kind, group = _separable(np.random.default_rng(0), 60)
    cfg = CalibrationConfig(hidden=(4,), folds=3)
    # copies of three smears' own rows, and one row of a field no fold holds
    extra_x = np.r_[x[[0, 7, 33]], x[[0]]]
    extra_group = np.array(["s:0", "s:7", "s:33", "elsewhere:0"])
    oof, extra = out_of_fold_scores(x, y, kind, group, cfg, (extra_x, extra_group))
    assert np.allclose(extra[:3], oof[[0, 7, 33]]), "an unseen copy scores as its field does out of fold"
    assert np.isnan(extra[3])


def _samples(x, y, kind, group) -> Samples:
    return Samples(
        features=list(x),
        stats=[(50.0, 200.0, 0.2)] * len(y),
        label=list(y),
        kind=list(kind),
        group=list(group),
        original=[True] * len(y),
    )


def test_mild_captures_lower_the_content_threshold_until_each_level_keeps_its_share():
    rng = np.random.default_rng(1)
    x, y, kind, group = _separable(rng, 80)
    cfg = CalibrationConfig(hidden=(4,), folds=4)
    plain = fit_validator(_samples(x, y, kind, group), cfg)["content"]
    assert "mild_captures_accepted" not in plain["out_of_fold"]
    samples = _samples(x, y, kind, group)
    for level, shift in (("jpeg/q20", 1.2), ("focus/1.5px", 0.3)):  # q20 moves the smears towards the negatives
        for i in range(0, 80, 2):
            samples.mild_features.append(x[i] - shift)
            samples.mild_level.append(level)
            samples.mild_group.append(group[i])
    content = fit_validator(samples, cfg)["content"]
    accepted = content["out_of_fold"]["mild_captures_accepted"]
    assert set(accepted) == {"jpeg/q20", "focus/1.5px"}
    assert min(accepted.values()) >= MILD_ACCEPTANCE
    assert content["threshold"] < plain["threshold"] and content["threshold_bound"] == "mild captures"


def test_gate_input_is_what_the_gates_content_layer_reads(taleqani):
    from leukostage.training.shifts import Shift
    from leukostage.validate import analysis_image, content_features, get_preset, run_gate

    preset = get_preset()
    field = load_image(sorted((taleqani / "cancerous" / "mid").glob("*.jpg"))[2])
    photo = Shift("eyepiece", "x2", eyepiece=2.0, jpeg=80).apply(field[None], 0)[0]
    dim = Shift("exposure", "x0.6", exposure=0.6).apply(field[None], 0)[0]
    reference = preset.capture.reference_background
    for rgb in (photo, dim):
        seen = gate_input(rgb, reference)
        score = preset.content.score(content_features(analysis_image(seen)))
        assert score == pytest.approx(run_gate(rgb, preset).checks["smear_score"].value, abs=1e-9)
    cut = gate_input(photo, reference)
    assert cut.shape[0] < photo.shape[0] and photo[0, 0].max() < 30 < 180 < cut[0, 0].min(), "the black surround goes"
    assert np.median(gate_input(dim, reference)) > np.median(dim) + 20, "a dim field is brought up to the slide"


def test_augmented_smear_is_an_rgb_image():
    img = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    out = augment_smear(img, np.random.default_rng(1))
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3 and min(out.shape[:2]) >= 48


@pytest.fixture(scope="module")
def sources(data_dir):
    smear = np.full((200, 200, 3), (230, 220, 235), np.uint8)
    smear[50:90, 50:90] = (120, 60, 160)
    return negatives.load_sources("calibration", data_dir, (smear,))


@pytest.mark.parametrize("category", negatives.CATEGORIES)
def test_generators_are_deterministic_rgb(category, sources):
    assert negatives.available(category, sources)
    a = negatives.generate(category, 3, 5, sources)
    b = negatives.generate(category, 3, 5, sources)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    for img in a:
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and min(img.shape[:2]) >= 40


def test_generator_errors_are_specific(sources):
    with pytest.raises(ValueError, match="landscape"):
        negatives.generate("sunsets", 1, 0, sources)
    with pytest.raises(ValueError, match="part"):
        negatives.load_sources("training")
    no_smears = negatives.Sources(photos=sources.photos)
    assert not negatives.available("greyscale_microscopy", no_smears)
    with pytest.raises(ValueError, match="smears"):
        negatives.generate("greyscale_microscopy", 3, 0, no_smears)


def test_tissue_halves_do_not_overlap(data_dir):
    from leukostage.imaging import load_image

    cal = negatives.load_sources("calibration", data_dir)
    held = negatives.load_sources("heldout", data_dir)
    for name, a, b in (("he_histology_1.png", cal.he, held.he), ("ihc_histology.png", cal.ihc, held.ihc)):
        assert np.array_equal(np.hstack([a[0], b[0]]), load_image(data_dir / "not_blood" / name))


def test_report_renders_every_group():
    def row(group, key, share):
        return {
            "group": group,
            "n": 10,
            "paper": {key: 0.5, "codes": {}},
            "default": {key: share, "codes": {"x": 1}},
        }

    metrics = {
        "command": "leukostage calibrate-validator --data d --seed 42",
        "targets": {"genuine": 0.99, "table7": 1.0, "hard": 0.95},
        "table": {
            "taleqani": row("genuine", "accepted", 1.0),
            "dark": row("table7", "rejected", 1.0),
            "tissue_he": row("hard", "rejected", 0.9),
            "hue_shifted": row("extra", "rejected", 0.8),
        },
        "ablations": {},
        "thresholds": {
            "paper": {
                "min_saturation": 20,
                "min_brightness": 30,
                "max_brightness": 240,
                "hue_low": 120,
                "hue_high": 180,
                "min_stain_ratio": 0.05,
            },
            "default": {
                "min_saturation": 6,
                "min_brightness": 150,
                "max_brightness": 255,
                "hue_low": 120,
                "hue_high": 180,
                "min_stain_ratio": 0.01,
                "smear_score": 0.9,
            },
        },
        "heldout_negative_sources": {
            "photos": ["chelsea"],
            "textures": ["gravel"],
            "documents": ["text"],
            "tissue": "right halves",
            "microscopy": "right half",
            "seed": 1042,
        },
    }
    text = report_markdown(metrics)
    assert "| taleqani | 10 | 50.0% | 100.0% | yes |" in text
    assert "| tissue_he | 10 | 50.0% | 90.0% | **no** |" in text
    assert "Extra negatives" in text


@pytest.mark.slow
def test_run_end_to_end_on_a_small_slice(data_dir, tmp_path, monkeypatch):
    """The whole command on a few files per source: JSON written and loadable, report regenerable from it."""
    from leukostage.training import calibrate
    from leukostage.training.calibrate import CalibrationConfig, run
    from leukostage.validate import get_preset, load_calibration

    full = genuine_split(data_dir, 42)
    small = {
        s: {part: files[:: max(1, len(files) // 12)][:12] for part, files in parts.items()} for s, parts in full.items()
    }
    monkeypatch.setattr(calibrate, "genuine_split", lambda data, seed: small)
    cfg = CalibrationConfig(
        data=str(data_dir), negatives_per_category=4, heldout_per_category=2, genuine_per_source=16, folds=2
    )
    path = tmp_path / "validator.json"
    metrics = run(cfg, path, tmp_path / "report", refit=True, ablations=False)
    assert load_calibration(path)["config"]["negatives_per_category"] == 4
    assert get_preset("default", path).content.threshold == metrics["thresholds"]["default"]["smear_score"]
    assert set(metrics["table"]) == set(GENUINE_SOURCES) | set(negatives.CATEGORIES)
    assert (tmp_path / "report" / "report.md").read_text().startswith("# Input validation")
    again = run(CalibrationConfig(data=str(data_dir), seed=0), path, tmp_path / "again", refit=False, ablations=False)
    assert again["config"]["seed"] == 42  # --report-only scores the JSON with the seed it was made with
    assert again["table"] == metrics["table"]


# --- the CLI verb: a named file, never the packaged one by surprise (issue 12 items 6 and 8) -------------------------
def test_cli_calibrate_needs_a_named_new_file(tmp_path, capsys):
    from leukostage.cli import main
    from leukostage.validate import VALIDATOR_PATH

    before = VALIDATOR_PATH.read_bytes()
    assert main(["calibrate-validator", "--report", str(tmp_path / "r")]) == 2
    assert "--out FILE is required" in capsys.readouterr().err
    assert main(["calibrate-validator", "--out", str(VALIDATOR_PATH), "--report", str(tmp_path / "r")]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert VALIDATOR_PATH.read_bytes() == before and not (tmp_path / "r").exists()


@pytest.mark.slow
def test_cli_calibrate_writes_the_named_file_and_predict_uses_it(data_dir, tmp_path, monkeypatch, capsys):
    """calibrate-validator --out FILE on a small slice, then --report-only on it, then validate --validator FILE."""
    import functools
    import json

    from leukostage.cli import main
    from leukostage.training import calibrate
    from leukostage.validate import VALIDATOR_PATH, validator_info

    monkeypatch.setenv("LEUKOSTAGE_VALIDATOR", str(VALIDATOR_PATH))  # restored after --validator sets it
    full = genuine_split(data_dir, 42)
    small = {
        s: {part: files[:: max(1, len(files) // 12)][:12] for part, files in parts.items()} for s, parts in full.items()
    }
    monkeypatch.setattr(calibrate, "genuine_split", lambda data, seed: small)
    monkeypatch.setattr(
        calibrate,
        "CalibrationConfig",
        functools.partial(
            calibrate.CalibrationConfig,
            negatives_per_category=4,
            heldout_per_category=2,
            genuine_per_source=16,
            folds=2,
        ),
    )
    packaged = VALIDATOR_PATH.read_bytes()
    out = tmp_path / "lab.json"
    args = [
        "calibrate-validator",
        "--data",
        str(data_dir),
        "--out",
        str(out),
        "--report",
        str(tmp_path / "r"),
        "--no-ablations",
    ]
    assert main(args) == 0
    shares = json.loads(capsys.readouterr().out)
    assert set(shares) >= {"taleqani", "pbc_sample", "bccd_smears"} and 0 <= shares["taleqani"]["default"] <= 1
    assert out.is_file() and VALIDATOR_PATH.read_bytes() == packaged
    assert (tmp_path / "r" / "report.md").is_file()
    assert main(args) == 2 and "exists" in capsys.readouterr().err  # a second run does not overwrite silently
    assert (
        main(
            [
                "calibrate-validator",
                "--report-only",
                "--validator",
                str(out),
                "--data",
                str(data_dir),
                "--report",
                str(tmp_path / "again"),
                "--no-ablations",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out) == shares
    smear = small["taleqani"]["heldout"][0]
    assert main(["validate", "--json", "--validator", str(out), str(smear)]) in (0, 1)
    assert json.loads(capsys.readouterr().out)[0]["validator"] == validator_info(out)
