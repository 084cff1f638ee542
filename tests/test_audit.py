"""Shortcut audit: the perturbations on small synthetic images, the masks on a real one, and the whole audit on the
shipped model against the issue targets and its committed report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import require

from leukostage.training.audit import (
    CORNER_FRAC,
    audit_name,
    background_mean,
    cell_attention,
    corner_box,
    heat_mass_share,
    load_mask,
    mask_corners,
    replace_background,
    retint_background,
    scale_channels,
    tone_curve,
    white_balance,
)


@pytest.fixture
def smear() -> tuple[np.ndarray, np.ndarray]:
    """A 20 x 20 'smear': bluish background (200, 220, 240) and a purple 'cell' square."""
    rgb = np.empty((20, 20, 3), np.uint8)
    rgb[:] = (200, 220, 240)
    mask = np.zeros((20, 20), bool)
    mask[5:10, 5:10] = True
    rgb[mask] = (120, 60, 160)
    return rgb, mask


def test_mask_corners_paints_only_the_bottom_right_patch_with_the_background_colour(smear):
    rgb, _ = smear
    rgb = rgb.copy()
    rgb[-2:, -4:] = 0  # a dark 'scale bar'
    out = mask_corners(rgb, frac=0.25)
    assert (out[-5:, -5:] == (200, 220, 240)).all()  # median colour: the background
    untouched = np.ones((20, 20), bool)
    untouched[-5:, -5:] = False
    assert np.array_equal(out[untouched], rgb[untouched])
    assert rgb[-1, -1].sum() == 0  # pure: the input is not modified
    both = mask_corners(rgb, frac=0.25, corners=("top_left", "bottom_right"), fill=(1, 2, 3))
    assert (both[:5, :5] == (1, 2, 3)).all() and (both[-5:, -5:] == (1, 2, 3)).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"corners": ("middle",)}, "unknown corner 'middle'; expected one of top_left"),
        ({"frac": 0.0}, "corner fraction must be in"),
        ({"frac": 0.7}, "corner fraction must be in"),
    ],
)
def test_mask_corners_rejects_bad_arguments(smear, kwargs, message):
    with pytest.raises(ValueError, match=message):
        mask_corners(smear[0], **kwargs)


def test_corner_box_at_full_resolution_covers_the_scale_bar():
    rows, cols = corner_box((224, 224, 3), CORNER_FRAC, "bottom_right")
    # measured scale bar: rows 194-223, columns 193-223 (large variant)
    assert rows.start <= 194 and cols.start <= 193 and rows.stop == cols.stop == 224


def test_replace_background_keeps_cells(smear):
    rgb, mask = smear
    out = replace_background(rgb, mask, (50, 60, 70))
    assert np.array_equal(out[mask], rgb[mask])
    assert (out[~mask] == (50, 60, 70)).all()
    with pytest.raises(ValueError, match="must match"):
        replace_background(rgb, mask[:-1])


def test_background_mean_ignores_cells(smear):
    rgb, mask = smear
    assert np.allclose(background_mean(rgb, mask), (200, 220, 240))
    assert np.allclose(background_mean(rgb, np.ones_like(mask)), rgb.reshape(-1, 3).mean(0))  # no background left


def test_white_balance_makes_the_background_neutral_grey(smear):
    rgb, mask = smear
    out = white_balance(rgb, mask)
    bg = background_mean(out, mask)
    assert np.allclose(bg, 220, atol=0.5)  # grey, same brightness
    assert np.allclose(out[mask][0], np.round(np.array([120, 60, 160]) * 220 / np.array([200, 220, 240])))


def test_retint_background_moves_the_background_to_the_target(smear):
    rgb, mask = smear
    out = retint_background(rgb, mask, np.array([230.0, 200.0, 180.0]))
    assert np.allclose(background_mean(out, mask), (230, 200, 180), atol=0.5)
    assert out.dtype == np.uint8


def test_scale_channels_clips_and_checks_input():
    out = scale_channels(np.full((2, 2, 3), 200, np.uint8), np.array([2.0, 1.0, 0.5]))
    assert (out[0, 0] == (255, 200, 100)).all()
    with pytest.raises(ValueError, match="8-bit RGB"):
        scale_channels(np.zeros((2, 2), np.uint8), np.ones(3))


def test_tone_curve_brightens_mid_tones_and_keeps_black_and_white(smear):
    rgb, _ = smear
    assert np.array_equal(tone_curve(rgb, 1.0), rgb)
    out = tone_curve(rgb, 0.8)
    assert (out >= rgb).all() and (out[7, 7] > rgb[7, 7]).all()
    ends = np.array([[[0, 255, 0]]], np.uint8)
    assert np.array_equal(tone_curve(ends, 0.8), ends)


def test_heat_mass_share_and_cell_attention():
    mask = np.zeros((10, 10), bool)
    mask[:5] = True
    assert heat_mass_share(np.ones((10, 10)), mask) == pytest.approx(0.5)
    assert np.isnan(heat_mass_share(np.zeros((10, 10)), mask))
    focused = mask.astype(np.float32)  # all heat on the cells: twice their 50% area share
    att = cell_attention([focused, np.ones((10, 10), np.float32)], [mask, mask], np.array([0, 1]))
    assert att["per_class"]["normal"]["ratio_of_means"] == pytest.approx(2.0)
    assert att["per_class"]["early"]["ratio_of_means"] == pytest.approx(1.0)
    assert att["overall"]["ratio_of_means"] == pytest.approx(1.5)


def test_load_mask_on_a_real_image(sample_smears):
    from leukostage.imaging import load_image

    path = sample_smears["mid"]
    rgb = load_image(path)
    mask = load_mask(path, rgb.shape[:2])
    assert mask.dtype == bool and mask.shape == rgb.shape[:2]
    assert 0.001 < mask.mean() < 0.6
    # cells are stained (dark, saturated) compared with the background
    assert rgb[mask].mean() < rgb[~mask].mean()


def test_load_mask_missing_twin(tmp_path):
    path = tmp_path / "original" / "normal" / "x.jpg"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="segmented twin"):
        load_mask(path)


def test_audit_name():
    assert audit_name("runs/paper-random/best.pt") == "paper-random"
    assert audit_name("models/paper.onnx") == "paper"


def test_audit_refuses_a_split_the_model_was_not_trained_on(data_dir, tmp_path):
    torch = require("torch")
    from leukostage.training.audit import run_audit

    ckpt = tmp_path / "best.pt"
    torch.save(
        {"meta": {"split": "random", "seed": 42, "fingerprint": "whatever"}, "model_config": {"image_size": 128}}, ckpt
    )
    with pytest.raises(ValueError, match="trained on the random split"):
        run_audit(ckpt, data_dir, split="blocked", out=tmp_path / "audit")


# The issues' acceptance targets, stated here rather than read from audit.TARGETS (which the checks are computed from):
# accuracy within 2 points under white balance, other-class tints and with the scale bar masked (issue 9; issue 5 had
# 3 / 3 / 1), and Grad-CAM mass on cells at least twice their area share.
ISSUE_TARGETS = {"white_balanced": 2.0, "other_class_tint": 2.0, "scale_bar_masked": 1.0}
CELL_MASS_TO_AREA_MIN = 2.0


@pytest.fixture(scope="module")
def shipped_audit(model_path, data_dir, tmp_path_factory):
    """The whole audit (~1-2 min) of the shipped model through `leukostage audit`, and its committed report."""
    import contextlib
    import io
    import json

    from leukostage.cli import main
    from leukostage.predict import card_path_for

    card = json.loads(card_path_for(model_path).read_text())
    committed = Path("reports") / card["name"] / card["training"]["split"] / "audit" / "metrics.json"
    expected = json.loads((Path(__file__).resolve().parents[1] / committed).read_text())
    out = tmp_path_factory.mktemp("shipped-audit")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert (
            main(["audit", "--model", str(model_path), "--data", str(data_dir), "--out", str(out), "--no-examples"])
            == 0
        )
    return card, expected, json.loads(stdout.getvalue()), json.loads((out / "metrics.json").read_text()), out


def test_shipped_model_meets_the_accuracy_targets_and_reproduces_its_committed_report(shipped_audit):
    """Every accuracy target holds, and the numbers in the committed report come back (to one test image, in case
    another CPU rounds a borderline image the other way)."""
    card, expected, printed, doc, out = shipped_audit
    assert printed == {"report": doc["meta"]["report"], "drops_points": doc["drops_points"], "checks": doc["checks"]}
    assert (out / "report.md").is_file()
    assert doc["meta"]["split"] == card["training"]["split"] and doc["meta"]["n_test"] == expected["meta"]["n_test"]
    for name, limit in ISSUE_TARGETS.items():
        assert abs(doc["drops_points"][name]) <= limit, (name, doc["drops_points"][name])
    assert all(v for k, v in doc["checks"].items() if k != "cell_attention"), doc["checks"]
    one_image = 100.0 / doc["meta"]["n_test"] + 1e-9
    for name, drop in expected["drops_points"].items():
        assert doc["drops_points"][name] == pytest.approx(drop, abs=one_image), name
    got, want = doc["cell_attention"]["overall"], expected["cell_attention"]["overall"]
    assert got["ratio_of_means"] == pytest.approx(want["ratio_of_means"], rel=0.01)


def test_shipped_model_puts_gradcam_mass_on_the_cells(shipped_audit):
    _, _, _, doc, _ = shipped_audit
    assert doc["cell_attention"]["overall"]["ratio_of_means"] >= CELL_MASS_TO_AREA_MIN
    assert doc["checks"]["cell_attention"]
    # more than an average: the evidence is on the cells for the classes whose cells are visible at all (Normal,
    # Early, Mid: cell masks >= 5 % of the area; Advanced 2 %), not only for one class that lifts the mean
    visible = {k: v for k, v in doc["cell_attention"]["per_class"].items() if v["mean_cell_area_share"] >= 0.05}
    assert len(visible) == 3 and all(v["ratio_of_means"] >= 1.5 for v in visible.values()), visible


def test_audit_of_the_validation_part_scores_the_val_images_only(model_path, data_dir, tmp_path):
    """``--part val`` is what a training setting (the cell-attention weight) is chosen by: it must audit the
    validation images of the model's own split, never the test part."""
    import json

    from leukostage.predict import card_path_for
    from leukostage.training.audit import run_audit
    from leukostage.training.data import discover, make_split

    card = json.loads(card_path_for(model_path).read_text())
    parts = make_split(discover(data_dir), card["training"]["split"], card["training"]["seed"])
    doc = run_audit(model_path, data_dir, out=tmp_path, examples=False, part="val")
    assert doc["meta"]["part"] == "val" and doc["meta"]["n_test"] == len(parts["val"])
    assert doc["cell_attention"]["overall"]["n"] == len(parts["val"])
    assert json.loads((tmp_path / "baseline" / "metrics.json").read_text())["meta"]["part"] == "val"
    assert "(val part)" in (tmp_path / "report.md").read_text()
