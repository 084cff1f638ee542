"""The input gate on real smears and generated negatives: every code path, both presets, the CLI contract."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from leukostage.cli import main
from leukostage.imaging import load_image
from leukostage.training import negatives
from leukostage.validate import (
    FEATURE_NAMES,
    MESSAGES,
    PAPER_RULE,
    PRESETS,
    VALIDATOR_PATH,
    analysis_image,
    content_features,
    failure_message,
    get_preset,
    load_calibration,
    validate_bytes,
    validate_image,
    validate_path,
)

TEST_SEED = 7  # neither the calibration seed (42) nor the report's (1042): fresh negatives from held-out sources


def png(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()


@pytest.fixture(scope="session")
def split(data_dir):
    from leukostage.training.calibrate import genuine_split

    return genuine_split(data_dir, 42)


@pytest.fixture(scope="session")
def heldout_sources(data_dir, split):
    smears = tuple(load_image(p) for s in split.values() for p in s["heldout"][::25])
    return negatives.load_sources("heldout", data_dir, smears)


@pytest.fixture(scope="session")
def one_smear(split) -> np.ndarray:
    """A held-out smear of the training laboratory, at the training scale."""
    return load_image(split["taleqani"]["heldout"][0])


CAPTURE_CODES = ("underexposed", "overexposed", "magnification_out_of_range", "out_of_focus")


# --- genuine smears -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("source", ["taleqani", "pbc_sample", "bccd_smears"])
def test_heldout_smears_are_accepted(split, source):
    """Issue 3 target: >= 99 % of each source's held-out smears are taken for smears. The training laboratory's pass;
    another laboratory's may be refused only for how they were taken (issue 18: PBC's and BCCD's 100x oil fields show
    red cells several times the training scale), never as something that is not a smear."""
    files = split[source]["heldout"]
    verdicts = [validate_path(p) for p in files]
    taken = [v.valid or (source != "taleqani" and v.code in CAPTURE_CODES) for v in verdicts]
    rejected = [(p.name, v.code) for p, v, ok in zip(files, verdicts, taken) if not ok]
    assert sum(taken) / len(files) >= 0.99, f"{source}: rejected {rejected}"


def test_paper_preset_turns_away_most_taleqani_smears(split):
    """Why the default exists: the paper's brightness ceiling (240) rejects most of the training data's smears."""
    files = split["taleqani"]["heldout"][::4]
    verdicts = [validate_path(p, "paper") for p in files]
    assert sum(v.valid for v in verdicts) / len(files) < 0.5
    assert any(v.code == "abnormal_brightness" for v in verdicts)


@pytest.mark.parametrize("change", ["png_300x300", "rotate90", "half_size", "jpeg_q70"])
def test_smear_survives_ordinary_handling(one_smear, change):
    img = one_smear
    if change == "png_300x300":  # a little more magnified than the training images: rescaled by the ruler
        data = png(cv2.resize(img, (300, 300)))
    elif change == "rotate90":
        data = png(np.ascontiguousarray(np.rot90(img)))
    elif change == "half_size":
        data = png(cv2.resize(img, (img.shape[1] // 2, img.shape[0] // 2), interpolation=cv2.INTER_AREA))
    else:
        data = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 70])[1].tobytes()
    rgb, verdict, _ = validate_bytes(data)
    assert rgb is not None and verdict.valid, verdict.to_dict()


# --- negatives ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("category", negatives.TABLE7)
def test_table7_categories_are_all_rejected(category, heldout_sources):
    """Issue 3 target: 100 % of each Table 7 category."""
    images = negatives.generate(category, 10, TEST_SEED, heldout_sources)
    verdicts = [validate_image(img) for img in images]
    assert not any(v.valid for v in verdicts), [v.to_dict()["checks"] for v in verdicts if v.valid]
    # a picture with no information left is refused as a light problem (blank white, black), with the measured level
    assert all(
        v.reason == failure_message(v.code, v.checks) if v.code in MESSAGES else v.code in CAPTURE_CODES[:2]
        for v in verdicts
    )


@pytest.mark.parametrize("category", negatives.HARD)
def test_hard_negatives_are_rejected(category, heldout_sources):
    """Issue 3 target: >= 95 % of stained tissue, purple-tinted photos, flat lavender and purple drawings."""
    images = negatives.generate(category, 20, TEST_SEED, heldout_sources)
    rejected = sum(not validate_image(img).valid for img in images)
    assert rejected >= 19, f"{category}: only {rejected}/20 rejected"


@pytest.mark.parametrize("category", ["tissue_he", "tissue_ihc", "flat_lavender"])
def test_paper_preset_accepts_what_it_should_not(category, heldout_sources):
    """The measured weakness of Code Snippet 4 that the content layer fixes: stain-coloured non-smears pass it."""
    images = negatives.generate(category, 10, TEST_SEED, heldout_sources)
    assert sum(validate_image(img, "paper").valid for img in images) >= 3


def test_real_ihc_image_from_scikit_image_is_rejected():
    from skimage import data as skdata

    verdict = validate_image(skdata.immunohistochemistry())
    assert not verdict.valid and verdict.code in ("not_blood_smear", "no_stain_profile")


# --- codes and messages (the paper's sentences) ---------------------------------------------------------------------
def flat(rgb: tuple[int, int, int], size: tuple[int, int] = (240, 320)) -> np.ndarray:
    rng = np.random.default_rng(0)
    img = np.ones((*size, 3), np.float32) * np.array(rgb, np.float32)
    return np.clip(img + rng.normal(0, 2, img.shape), 0, 255).astype(np.uint8)


def green_field() -> np.ndarray:
    """Saturated, mid-bright and without a single stain-hue pixel: only the stain-ratio check can reject it."""
    img = flat((60, 150, 60))
    img[::8] = (90, 180, 40)
    return img


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize(
    "make, code, default_code",
    [
        (lambda: flat((255, 255, 255)), "low_saturation", "overexposed"),
        (lambda: flat((128, 128, 128)), "low_saturation", "not_blood_smear"),
        (lambda: flat((6, 4, 10)), "abnormal_brightness", "underexposed"),
        (green_field, "no_stain_profile", "not_blood_smear"),
    ],
    ids=["blank-white", "grey", "black", "green-field"],
)
def test_colour_layer_codes_and_paper_messages(make, code, default_code, preset):
    verdict = validate_image(make(), preset)
    assert not verdict.valid
    if preset != "paper":
        # the default preset's capture layer reads a blank white field as too much light, a black one as too little;
        # its colour rule, fitted on smears of every capture, leaves flat colours to the content layer
        assert verdict.code == default_code
        return
    assert verdict.code == code
    assert (
        verdict.reason
        == {
            "low_saturation": "Image lacks colour saturation",
            "abnormal_brightness": "Abnormal brightness levels",
            "no_stain_profile": "No blood smear colour profile detected",
        }[code]
    )


def test_content_layer_code_when_colour_passes():
    lavender = flat((185, 160, 215))
    paper = validate_image(lavender, "paper")
    default = validate_image(lavender)
    assert paper.valid  # every paper criterion is met by a flat lavender picture
    assert not default.valid and default.code == "not_blood_smear"
    assert all(default.checks[k].passed for k in ("saturation", "brightness", "stain_ratio"))
    assert default.checks["smear_score"].passed is False


def test_checks_report_value_threshold_and_outcome(one_smear):
    default = validate_image(one_smear).to_dict()
    assert default["valid"] and default["code"] is None and default["reason"] is None
    assert set(default["checks"]) == {"saturation", "brightness", "stain_ratio", "smear_score"}
    for check in default["checks"].values():
        assert set(check) == {"value", "threshold", "passed"} and check["passed"] is True
    paper = validate_image(one_smear, "paper").to_dict()
    assert set(paper["checks"]) == {"saturation", "brightness", "stain_ratio"}
    assert paper["checks"]["brightness"]["threshold"] == [PAPER_RULE.min_brightness, PAPER_RULE.max_brightness]


def test_unknown_preset_lists_the_valid_ones(one_smear):
    with pytest.raises(ValueError, match="default, paper"):
        validate_image(one_smear, "strict")


@pytest.mark.parametrize(
    "data, code",
    [
        (b"", "unreadable"),
        (b"plain text", "unreadable"),
        (b"GIF89a" + b"\x00" * 40, "unsupported_format"),
        (png(np.zeros((8, 8, 3), np.uint8)), "too_small"),
    ],
)
def test_validate_bytes_never_raises_for_bad_bytes(data, code):
    rgb, verdict, decode_ms = validate_bytes(data)
    assert rgb is None and not verdict.valid and verdict.code == code and verdict.checks == {}
    assert decode_ms >= 0


def test_validate_path_reports_missing_files(tmp_path):
    verdict = validate_path(tmp_path / "nope.png")
    assert not verdict.valid and verdict.code == "unreadable"


@pytest.mark.parametrize("shape", [(32, 32, 3), (32, 3000, 3), (3000, 32, 3), (40, 41, 3)])
def test_features_are_finite_for_odd_shapes(shape):
    for img in (
        np.zeros(shape, np.uint8),
        np.full(shape, 255, np.uint8),
        np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8),
    ):
        f = content_features(analysis_image(img))
        assert f.shape == (len(FEATURE_NAMES),) and np.isfinite(f).all()
        assert validate_image(img).valid is False


# --- the calibration file -------------------------------------------------------------------------------------------
def test_validator_json_records_how_it_was_made():
    data = load_calibration()
    assert data["command"].startswith("leukostage calibrate-validator")
    assert data["config"]["seed"] == 42
    for source in ("taleqani", "pbc_sample", "bccd_smears"):
        info = data["data"]["genuine"][source]
        assert info["calibration_files"] > 0 and len(info["calibration_fingerprint"]) == 16
    assert tuple(data["content"]["feature_names"]) == FEATURE_NAMES
    assert 0.0 < data["content"]["threshold"] < 1.0
    rule = get_preset("default").colour
    assert rule.min_saturation < PAPER_RULE.min_saturation and rule.max_brightness > PAPER_RULE.max_brightness
    assert Path(VALIDATOR_PATH).stat().st_size < 200_000


def test_missing_or_foreign_calibration_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="calibrate-validator"):
        load_calibration(tmp_path / "missing.json")
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="leukostage-validator/1"):
        load_calibration(foreign)
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps({**load_calibration(), "content": {"feature_names": ["old_feature"]}}))
    with pytest.raises(ValueError, match="recalibrate"):
        load_calibration(stale)


def test_serving_path_imports_no_training_libraries():
    code = (
        "import sys, numpy as np; import leukostage.validate as v; "
        "v.validate_image(np.zeros((64, 64, 3), np.uint8)); "
        "print(','.join(m for m in ('torch', 'sklearn', 'skimage') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# --- the CLI verb ---------------------------------------------------------------------------------------------------
def test_cli_validate_json_keeps_input_order(tmp_path, capsys, split):
    smear = split["taleqani"]["heldout"][0]
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    white = tmp_path / "white.png"
    white.write_bytes(png(flat((255, 255, 255))))
    code = main(["validate", "--json", str(smear), str(text), str(white)])
    results = json.loads(capsys.readouterr().out)
    assert code == 1
    assert [r["file"] for r in results] == [str(smear), str(text), str(white)]
    assert [r["valid"] for r in results] == [True, False, False]
    assert [r["code"] for r in results] == [None, "unreadable", "overexposed"]
    for r in results:
        assert set(r) - {"capture"} == {"file", "valid", "code", "reason", "checks", "validator"}
    assert results[0]["capture"]["mode"] == "direct" and "capture" not in results[1]  # a decoded image was measured
    assert set(results[0]["checks"]) == {"saturation", "brightness", "stain_ratio", "smear_score"}


def test_cli_validate_paper_preset_and_text_output(capsys, split):
    smear = split["taleqani"]["heldout"][0]
    main(["validate", "--preset", "paper", "--json", str(smear)])  # the paper's brightness ceiling may refuse it
    assert set(json.loads(capsys.readouterr().out)[0]["checks"]) == {"saturation", "brightness", "stain_ratio"}
    assert main(["validate", str(smear)]) == 0
    assert capsys.readouterr().out.strip().endswith("ok")


# --- which validator judged: --validator FILE / $LEUKOSTAGE_VALIDATOR (issue 12 item 6) ------------------------------
def strict_validator(tmp_path: Path, threshold: float = 0.99999) -> Path:
    """The packaged calibration with its content threshold raised: every real smear fails the content check only."""
    data = json.loads(VALIDATOR_PATH.read_text())
    data["content"]["threshold"] = threshold
    path = tmp_path / "strict.json"
    path.write_text(json.dumps(data))
    return path


def test_every_verdict_names_its_validator_by_file_and_hash(sample_smears):
    import hashlib

    verdict = validate_path(sample_smears["mid"]).to_dict()
    assert verdict["validator"] == {
        "name": "validator.json (packaged)",
        "sha256": hashlib.sha256(VALIDATOR_PATH.read_bytes()).hexdigest(),
    }
    assert validate_path(sample_smears["mid"], "paper").validator["sha256"] is None


def test_environment_selects_another_validator(tmp_path, sample_smears, monkeypatch):
    import hashlib

    strict = strict_validator(tmp_path)
    monkeypatch.setenv("LEUKOSTAGE_VALIDATOR", str(strict))
    verdict = validate_path(sample_smears["mid"])
    assert not verdict.valid and verdict.code == "not_blood_smear"
    assert verdict.validator == {"name": "strict.json", "sha256": hashlib.sha256(strict.read_bytes()).hexdigest()}
    monkeypatch.delenv("LEUKOSTAGE_VALIDATOR")
    assert validate_path(sample_smears["mid"]).valid


def test_content_only_failure_near_the_threshold_is_an_unusual_smear_not_tissue(tmp_path, sample_smears, monkeypatch):
    """A real smear that fails only the content check (as advanced/WBC-Malignant-Pro-005.jpg does, 0.940 < 0.962)
    is not told it resembles tissue; an image far below the threshold still is."""
    monkeypatch.setenv("LEUKOSTAGE_VALIDATOR", str(strict_validator(tmp_path)))
    verdict = validate_path(sample_smears["mid"])
    assert all(c.passed for name, c in verdict.checks.items() if name != "smear_score")
    assert "unusual smear" in verdict.reason and "tissue" not in verdict.reason
    assert f"{verdict.checks['smear_score'].value:.3f}" in verdict.reason
    monkeypatch.delenv("LEUKOSTAGE_VALIDATOR")
    tissue = validate_path(
        Path(str(sample_smears["mid"]).split("taleqani_all")[0]) / "not_blood" / "he_histology_1.png"
    )
    assert tissue.code == "not_blood_smear" and tissue.reason == MESSAGES["not_blood_smear"]


def test_cli_validator_option_and_missing_file(tmp_path, sample_smears, capsys, monkeypatch):
    monkeypatch.setenv("LEUKOSTAGE_VALIDATOR", str(VALIDATOR_PATH))  # restored after the CLI sets it in-process
    strict = strict_validator(tmp_path)
    assert main(["validate", "--json", "--validator", str(strict), str(sample_smears["mid"])]) == 1
    (row,) = json.loads(capsys.readouterr().out)
    assert row["code"] == "not_blood_smear" and row["validator"]["name"] == "strict.json"
    assert main(["predict", "--json", "--validator", str(strict), str(sample_smears["mid"])]) == 1
    assert json.loads(capsys.readouterr().out)[0]["validator"]["name"] == "strict.json"
    assert main(["predict", "--json", "--validator", str(tmp_path / "none.json"), str(sample_smears["mid"])]) == 2
    assert "validator file" in capsys.readouterr().err
