"""Shortcut audit: does the model read the cells, or the acquisition (background tint, illumination, scale bar)?

The Taleqani classes were photographed in different sessions, so their backgrounds differ in colour and brightness,
and the scale bar in the bottom-right corner comes in variants. This module measures, on the model's own test split:
how much Grad-CAM mass falls on cell pixels (cell masks from the dataset's ``segmented/`` twins), and how accuracy
moves when the corner is masked, the background is replaced, only the segmented cells are shown, or the colour and
illumination are shifted. ``leukostage audit`` writes metrics.json and report.md; rerunning it reproduces every number.

Perturbations are pure functions on full-resolution 8-bit RGB images; the model then sees them through
:func:`leukostage.imaging.preprocess`, like any served image.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import cv2
import numpy as np

from ..classes import CLASS_KEYS, CLASSES
from ..explain import METHOD, gradcam, overlay, upsample
from ..imaging import load_image, preprocess
from ..predict import Predictor
from .data import MASK_THRESHOLD, Dataset, cell_mask, discover, make_split, segmented_twin

# --- the numbers (one place) -------------------------------------------------------------------------------------
# The scale bar sits in the bottom-right corner: about 31 x 21 px of 224 x 224 (rows 203-222, columns 193-223) in
# its common variant; a larger "200 pixel" variant reaches rows 194-224. A 15% square (34 x 34 px) covers both.
SCALE_BAR_CORNER = "bottom_right"
CORNER_FRAC = 0.15
CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right")
NEUTRAL_BACKGROUND = (224, 224, 224)  # grey at about the mean brightness of the smears' backgrounds
TONE_GAMMA = 0.8  # (f) a camera tone-curve change: not a per-channel gain, so colour normalisation cannot undo it
MIN_AREA_FOR_RATIO = 0.01  # per-image mass/area ratios are only averaged over masks covering at least 1% of the image
BATCH = 32
TARGETS = {  # the acceptance targets for a shipped model: accuracy within +-N points of the unshifted one
    "white_balanced_drop_max_points": 3.0,
    "other_class_tint_drop_max_points": 3.0,
    "scale_bar_masked_drop_max_points": 1.0,
    "cell_mass_to_area_ratio_min": 2.0,
}


# --- masks and perturbations (pure functions on 8-bit RGB) ---------------------------------------------------------
def load_mask(original: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """The boolean cell mask of an original image, from its ``segmented/`` twin (same class folder, same name).

    Raises:
        FileNotFoundError: the twin is missing.
        ValueError: the twin's size differs from ``shape`` (the original's).
    """
    twin = segmented_twin(Path(original))
    if not twin.is_file():
        raise FileNotFoundError(f"segmented twin {twin} of {original} not found; the audit needs the segmented/ folder")
    mask = cell_mask(load_image(twin))
    if shape is not None and mask.shape != tuple(shape):
        raise ValueError(f"segmented twin {twin} is {mask.shape[::-1]} px, the original is {tuple(shape)[::-1]} px")
    return mask


def _check_rgb(rgb: np.ndarray) -> None:
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected 8-bit RGB (H, W, 3) uint8, got {rgb.dtype} {rgb.shape}")


def _check_mask(rgb: np.ndarray, mask: np.ndarray) -> None:
    if mask.shape != rgb.shape[:2]:
        raise ValueError(f"mask {mask.shape} must match the image size {rgb.shape[:2]}")


def corner_box(shape: tuple[int, ...], frac: float, corner: str) -> tuple[slice, slice]:
    """Row and column slices of a square-ish corner patch, ``frac`` of each side."""
    if corner not in CORNERS:
        raise ValueError(f"unknown corner {corner!r}; expected one of {', '.join(CORNERS)}")
    if not 0.0 < frac <= 0.5:
        raise ValueError(f"corner fraction must be in (0, 0.5], got {frac}")
    h, w = shape[:2]
    dh, dw = max(1, round(h * frac)), max(1, round(w * frac))
    rows = slice(0, dh) if corner.startswith("top") else slice(h - dh, h)
    cols = slice(0, dw) if corner.endswith("left") else slice(w - dw, w)
    return rows, cols


def mask_corners(
    rgb: np.ndarray,
    frac: float = CORNER_FRAC,
    corners: Iterable[str] = (SCALE_BAR_CORNER,),
    fill: tuple[int, int, int] | None = None,
) -> np.ndarray:
    """Paint corner patches (by default the scale-bar corner) with one colour.

    The default fill is the image's own median colour (its background), so the patch does not become a new cue.
    """
    _check_rgb(rgb)
    colour = np.median(rgb.reshape(-1, 3), axis=0) if fill is None else np.asarray(fill)
    out = rgb.copy()
    for corner in corners:
        rows, cols = corner_box(rgb.shape, frac, corner)
        out[rows, cols] = np.round(colour).astype(np.uint8)
    return out


def replace_background(
    rgb: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int] = NEUTRAL_BACKGROUND
) -> np.ndarray:
    """Keep the cell pixels, paint everything else one fixed colour."""
    _check_rgb(rgb)
    _check_mask(rgb, mask)
    out = np.empty_like(rgb)
    out[:] = np.asarray(colour, np.uint8)
    out[mask] = rgb[mask]
    return out


def background_mean(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean RGB of the non-cell pixels (the whole image when the mask covers everything)."""
    _check_rgb(rgb)
    _check_mask(rgb, mask)
    background = rgb[~mask] if (~mask).any() else rgb.reshape(-1, 3)
    return background.astype(np.float64).mean(axis=0)


def scale_channels(rgb: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """Multiply each channel by its gain (a von Kries colour / illumination change), clipped to 8 bits."""
    _check_rgb(rgb)
    return np.clip(np.round(rgb.astype(np.float64) * np.asarray(gains, np.float64)), 0, 255).astype(np.uint8)


def white_balance(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Scale each channel so the background mean becomes neutral grey of the same brightness."""
    bg = np.maximum(background_mean(rgb, mask), 1.0)
    return scale_channels(rgb, bg.mean() / bg)


def retint_background(rgb: np.ndarray, mask: np.ndarray, target_bg_mean: np.ndarray) -> np.ndarray:
    """Scale each channel so this image's background mean matches a target (e.g. another class's mean background)."""
    bg = np.maximum(background_mean(rgb, mask), 1.0)
    return scale_channels(rgb, np.asarray(target_bg_mean, np.float64) / bg)


def tone_curve(rgb: np.ndarray, gamma: float = TONE_GAMMA) -> np.ndarray:
    """Apply one gamma curve to every channel (brightens mid-tones for gamma < 1), as a camera's tone setting does."""
    _check_rgb(rgb)
    return np.round(255.0 * (rgb / 255.0) ** gamma).astype(np.uint8)


def heat_mass_share(heat: np.ndarray, region: np.ndarray) -> float:
    """Share of the heat map's mass inside a region (NaN for an all-zero map)."""
    total = float(heat.sum())
    return float((heat * region).sum() / total) if total > 0 else float("nan")


# --- model access ----------------------------------------------------------------------------------------------------
def audit_name(model_path: str | Path) -> str:
    """A report name: the ONNX stem, or the run folder's name for a run's ``best.pt``."""
    path = Path(model_path)
    return path.parent.name if path.suffix == ".pt" and path.stem in ("best", "last") else path.stem


def load_predictor(model_path: str | Path, workdir: str | Path) -> Predictor:
    """An ONNX predictor for either file kind: a checkpoint is exported into ``workdir`` first.

    Scoring checkpoints through the exported graph keeps the audit on the serving path (the same Grad-CAM code).
    """
    path = Path(model_path)
    if path.suffix == ".pt":
        from .export import export_model

        onnx = Path(workdir) / f"{audit_name(path)}.onnx"
        export_model(path, onnx, name=audit_name(path))
        return Predictor.load(onnx)
    return Predictor.load(path)


def predict_images(predictor: Predictor, images: list[np.ndarray]) -> np.ndarray:
    """Probabilities (N, 4) for full-resolution RGB images, each preprocessed as serving does."""
    out = [
        predictor.predict_proba(np.stack([preprocess(im, predictor.image_size) for im in images[i : i + BATCH]]))
        for i in range(0, len(images), BATCH)
    ]
    return np.concatenate(out) if out else np.zeros((0, len(CLASS_KEYS)), np.float32)


def gradcam_images(
    predictor: Predictor, images: list[np.ndarray]
) -> tuple[list[np.ndarray], np.ndarray, tuple[int, int]]:
    """Grad-CAM heat maps (for the predicted class, at each image's size), probabilities, and the maps' own size."""
    heats: list[np.ndarray] = []
    probs: list[np.ndarray] = []
    for i in range(0, len(images), BATCH):
        chunk = images[i : i + BATCH]
        out = predictor.run_all(np.stack([preprocess(im, predictor.image_size) for im in chunk]))
        top = out["probabilities"].argmax(1)
        cams = gradcam(out["features"], out["weights"][np.arange(len(chunk)), top])
        heats += [upsample(cam, *im.shape[:2]) for cam, im in zip(cams, chunk)]
        probs.append(out["probabilities"])
    return heats, np.concatenate(probs), tuple(cams.shape[-2:])


# --- the audit -------------------------------------------------------------------------------------------------------
def _summary(y: np.ndarray, probs: np.ndarray) -> dict:
    from .evaluate import compute_metrics, headline_metrics

    return headline_metrics(compute_metrics(y, probs), ("accuracy", "macro_f1"))


def class_background_tints(ds: Dataset, indices: np.ndarray) -> dict[str, list[float]]:
    """Mean background colour per class over the given (training) images."""
    sums = {k: np.zeros(3) for k in CLASS_KEYS}
    counts = dict.fromkeys(CLASS_KEYS, 0)
    for i in indices:
        rgb = load_image(ds.paths[i])
        key = CLASS_KEYS[ds.labels[i]]
        sums[key] += background_mean(rgb, load_mask(ds.paths[i], rgb.shape[:2]))
        counts[key] += 1
    return {k: (sums[k] / max(counts[k], 1)).round(3).tolist() for k in CLASS_KEYS}


def cell_attention(heats: list[np.ndarray], masks: list[np.ndarray], y: np.ndarray) -> dict:
    """Heat-map mass on cell pixels against the cells' share of the area, per class and overall.

    The headline ratio is mean mass share / mean area share (stable when masks are tiny); the mean of per-image
    ratios is also given, over images whose mask covers at least ``MIN_AREA_FOR_RATIO`` of the area.
    """
    mass = np.array([heat_mass_share(h, m) for h, m in zip(heats, masks)])
    area = np.array([m.mean() for m in masks])
    corner = []
    for h in heats:
        rows, cols = corner_box(h.shape, CORNER_FRAC, SCALE_BAR_CORNER)
        region = np.zeros(h.shape, bool)
        region[rows, cols] = True
        corner.append(heat_mass_share(h, region))
    corner_arr = np.array(corner)

    def mean(values: np.ndarray) -> float:
        return float(values.mean()) if values.size else float("nan")

    def block(sel: np.ndarray) -> dict:
        ok = sel & ~np.isnan(mass)
        usable = ok & (area >= MIN_AREA_FOR_RATIO)
        m, a = mean(mass[ok]), mean(area[ok])
        return {
            "n": int(sel.sum()),
            "mean_mass_share_on_cells": m,
            "mean_cell_area_share": a,
            "ratio_of_means": m / a if a > 0 else float("nan"),
            "mean_per_image_ratio": mean(mass[usable] / area[usable]),
            "n_images_in_per_image_ratio": int(usable.sum()),
            "n_all_zero_maps": int((sel & np.isnan(mass)).sum()),
            "mean_mass_share_in_scale_bar_corner": mean(corner_arr[ok]),
        }

    per_class = {k: block(y == c) for c, k in enumerate(CLASS_KEYS)}
    overall = block(np.ones(len(y), bool))
    overall["macro_ratio_of_means"] = mean(np.array([v["ratio_of_means"] for v in per_class.values() if v["n"]]))
    rows, cols = corner_box(heats[0].shape, CORNER_FRAC, SCALE_BAR_CORNER)
    overall["scale_bar_corner_area_share"] = float(np.zeros(heats[0].shape)[rows, cols].size / heats[0].size)
    return {"overall": overall, "per_class": per_class}


def _points(a: float, b: float) -> float:
    return round(100.0 * (a - b), 2)


def perturbations(
    ds: Dataset, test: np.ndarray, originals: list[np.ndarray], masks: list[np.ndarray], tints: dict[str, list[float]]
) -> dict[str, Callable[[int], np.ndarray]]:
    """Each perturbed variant of the audited images, by name: the j-th audited image so changed."""
    variants: dict[str, Callable[[int], np.ndarray]] = {
        "scale_bar_masked": lambda j: mask_corners(originals[j]),
        "background_neutral": lambda j: replace_background(originals[j], masks[j]),
        "segmented": lambda j: load_image(segmented_twin(ds.paths[test[j]])),
        "white_balanced": lambda j: white_balance(originals[j], masks[j]),
        "tone_curve": lambda j: tone_curve(originals[j]),
    }
    for key in CLASS_KEYS:
        variants[f"tint_{key}"] = lambda j, key=key: retint_background(originals[j], masks[j], tints[key])
    return variants


def other_class_tint(correct: dict[str, np.ndarray], y: np.ndarray) -> dict:
    """(e) another class's tint: each audited image tinted with every other class's mean training background;
    accuracy and recall over those, the worst tint per class, and the whole true class x tint recall table."""
    other = np.array(
        [np.mean([correct[f"tint_{k}"][j] for c, k in enumerate(CLASS_KEYS) if c != y[j]]) for j in range(len(y))]
    )
    tint_matrix = {
        CLASS_KEYS[c]: {k: float(correct[f"tint_{k}"][y == c].mean()) for k in CLASS_KEYS}
        for c in range(len(CLASS_KEYS))
    }
    return {
        "accuracy": float(other.mean()),
        "recall": {CLASS_KEYS[c]: float(other[y == c].mean()) for c in range(len(CLASS_KEYS))},
        "worst_tint_recall": {c: min(v for k, v in row.items() if k != c) for c, row in tint_matrix.items()},
        "recall_by_true_class_and_tint_source": tint_matrix,
    }


def target_checks(drops: dict[str, float], attention: dict) -> dict[str, bool]:
    """Whether each of ``TARGETS`` is met."""
    return {
        "white_balanced": abs(drops["white_balanced"]) <= TARGETS["white_balanced_drop_max_points"],
        "other_class_tint": abs(drops["other_class_tint"]) <= TARGETS["other_class_tint_drop_max_points"],
        "scale_bar_masked": abs(drops["scale_bar_masked"]) <= TARGETS["scale_bar_masked_drop_max_points"],
        "cell_attention": attention["overall"]["ratio_of_means"] >= TARGETS["cell_mass_to_area_ratio_min"],
    }


def audit_meta(
    model_path: Path, data, ds: Dataset, split: str, seed: int, part: str, parts: dict, out: Path, heats_shape
) -> dict:
    """Provenance and settings of an audit, with the command that reproduces it."""
    return {
        "model": str(model_path),
        "model_sha256": hashlib.sha256(model_path.read_bytes()).hexdigest()[:16],
        "scored_with": "ONNX Runtime"
        + (" (checkpoint exported to a temporary ONNX file)" if model_path.suffix == ".pt" else ""),
        "data_fingerprint": ds.fingerprint,
        "split": split,
        "seed": seed,
        "part": part,
        "n_test": int(len(parts[part])),
        "n_train_for_tints": int(len(parts["train"])),
        "report": str(out),
        "command": f"leukostage audit --model {model_path} --data {data} --split {split} --part {part} --out {out}",
        "settings": {
            "scale_bar_corner": SCALE_BAR_CORNER,
            "corner_frac": CORNER_FRAC,
            "mask_threshold": MASK_THRESHOLD,
            "neutral_background": list(NEUTRAL_BACKGROUND),
            "min_area_for_ratio": MIN_AREA_FOR_RATIO,
            "tone_gamma": TONE_GAMMA,
            "gradcam": f"{METHOD}; map {heats_shape[0]}x{heats_shape[1]} before upsampling",
        },
    }


def run_audit(
    model_path: str | Path,
    data: str | Path,
    split: str | None = None,
    out: str | Path | None = None,
    examples: bool = True,
    part: str = "test",
) -> dict:
    """Audit a model on a part of its own split (the test part; ``part="val"`` where a training setting is chosen
    by the audit's numbers); writes metrics.json and report.md into ``out``.

    Raises:
        ValueError: the split or seed is not the model's own, or the data differ from its training data (the guard of
            :func:`leukostage.training.evaluate.evaluate_model`, which also scores the unperturbed baseline).
        FileNotFoundError: a segmented twin is missing.
    """
    from .evaluate import evaluate_model, model_provenance

    model_path = Path(model_path)
    prov = model_provenance(model_path)
    split = split or prov["split"]
    out = Path(out) if out else Path("reports") / f"audit-{audit_name(model_path)}-{split}"
    out.mkdir(parents=True, exist_ok=True)
    # evaluate_model refuses a split the model was not trained on and a changed data folder; it is the baseline too
    baseline = evaluate_model(model_path, data, split=split, part=part, out=out / "baseline")
    ds = discover(data)
    parts = make_split(ds, split, prov["seed"])
    test = parts[part]
    y = ds.labels[test]

    tints = class_background_tints(ds, parts["train"])
    originals = [load_image(ds.paths[i]) for i in test]
    masks = [load_mask(ds.paths[i], im.shape[:2]) for i, im in zip(test, originals)]
    with tempfile.TemporaryDirectory() as tmp:
        predictor = load_predictor(model_path, tmp)
        heats, base_probs, heats_shape = gradcam_images(predictor, originals)
        probs = {"original": base_probs}
        for name, make in perturbations(ds, test, originals, masks, tints).items():
            probs[name] = predict_images(predictor, [make(j) for j in range(len(test))])
        if examples:
            write_examples(out / "gradcam_examples.png", originals, heats, masks, y)

    accuracy = {name: _summary(y, p) for name, p in probs.items()}
    base = accuracy["original"]["accuracy"]
    other_tint = other_class_tint({name: p.argmax(1) == y for name, p in probs.items()}, y)
    drops = {name: _points(base, m["accuracy"]) for name, m in accuracy.items() if name != "original"}
    drops["other_class_tint"] = _points(base, other_tint["accuracy"])
    attention = cell_attention(heats, masks, y)
    doc = {
        "meta": audit_meta(model_path, data, ds, split, prov["seed"], part, parts, out, heats_shape),
        "baseline_evaluate": baseline,
        "class_background_tints_train": tints,
        "accuracy": accuracy,
        "other_class_tint": other_tint,
        "drops_points": drops,
        "cell_attention": attention,
        "mask_area_share_by_class": {k: attention["per_class"][k]["mean_cell_area_share"] for k in CLASS_KEYS},
        "targets": TARGETS,
        "checks": target_checks(drops, attention),
    }
    (out / "metrics.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / "report.md").write_text(report_markdown(doc))
    return doc


# --- output ----------------------------------------------------------------------------------------------------------
def write_examples(
    path: Path, originals: list[np.ndarray], heats: list[np.ndarray], masks: list[np.ndarray], y: np.ndarray
) -> None:
    """One row per class (its first test image): original | Grad-CAM overlay | cell mask."""
    rows = []
    for c in range(len(CLASS_KEYS)):
        hits = np.flatnonzero(y == c)
        if not len(hits):
            continue
        j = int(hits[0])
        mask_rgb = np.repeat((masks[j] * 255).astype(np.uint8)[..., None], 3, axis=2)
        rows.append(np.concatenate([originals[j], overlay(originals[j], heats[j]), mask_rgb], axis=1))
    if rows:
        width = max(r.shape[1] for r in rows)
        rows = [cv2.resize(r, (width, r.shape[0] * width // r.shape[1])) if r.shape[1] != width else r for r in rows]
        cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR))


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def report_markdown(doc: dict) -> str:
    """The human-readable report; every number comes from metrics.json."""
    meta, acc, drops, att = doc["meta"], doc["accuracy"], doc["drops_points"], doc["cell_attention"]
    names = {c.key: c.display_name for c in CLASSES}
    labels = {
        "original": f"(a) original {meta['part']} images",
        "scale_bar_masked": f"(b) scale-bar corner masked ({SCALE_BAR_CORNER}, {CORNER_FRAC:.0%} of each side)",
        "background_neutral": f"(c) background replaced by grey {tuple(NEUTRAL_BACKGROUND)} (cells kept)",
        "segmented": "(d) segmented images (cells on black)",
        "white_balanced": "(e) white-balanced (background scaled to neutral grey)",
        "tone_curve": f"(f) tone curve: gamma {TONE_GAMMA} on every channel (not a target; not a per-channel gain)",
    }
    lines = [
        f"# Shortcut audit: {audit_name(meta['model'])} ({Path(meta['model']).name}) on the {meta['split']} split "
        f"({meta['part']} part)",
        "",
        *(f"- {k}: {v}" for k, v in meta.items() if k != "settings"),
        f"- settings: {json.dumps(meta['settings'])}",
        f"- baseline from `leukostage evaluate` (same split guard): accuracy "
        f"{doc['baseline_evaluate']['accuracy']:.4f}",
        "",
        "## Accuracy under perturbations",
        "",
        f"| {meta['part']} images | accuracy | drop (points) | macro-F1 | "
        + " | ".join(f"recall {names[k]}" for k in CLASS_KEYS)
        + " |",
        "|---|---|---|---|" + "---|" * len(CLASS_KEYS),
    ]
    for name, label in labels.items():
        m = acc[name]
        drop = "" if name == "original" else f"{drops[name]:+.2f}"
        lines.append(
            f"| {label} | {m['accuracy']:.4f} | {drop} | {m['macro_f1']:.4f} | "
            + " | ".join(f"{m['recall'][k]:.3f}" for k in CLASS_KEYS)
            + " |"
        )
    ot = doc["other_class_tint"]
    lines.append(
        f"| (e) another class's mean background tint (mean over the 3 other classes) | {ot['accuracy']:.4f} "
        f"| {drops['other_class_tint']:+.2f} | | " + " | ".join(f"{ot['recall'][k]:.3f}" for k in CLASS_KEYS) + " |"
    )
    lines += [
        "",
        "Drops are (a) minus the perturbed accuracy, in percentage points (positive: worse).",
        "",
        "### Recall by true class (rows) when given each class's mean training background tint (columns)",
        "",
        "The diagonal is the control (own class's tint).",
        "",
        "| true class \\ tint of | " + " | ".join(names[k] for k in CLASS_KEYS) + " |",
        "|---|" + "---|" * len(CLASS_KEYS),
    ]
    for c, row in ot["recall_by_true_class_and_tint_source"].items():
        lines.append(f"| {names[c]} | " + " | ".join(f"{row[k]:.3f}" for k in CLASS_KEYS) + " |")
    tints = doc["class_background_tints_train"]
    lines += [
        "",
        "Mean background colour (RGB) per class, training part: "
        + "; ".join(f"{names[k]} {tuple(round(v) for v in rgb)}" for k, rgb in tints.items()),
        "",
        f"## Where the Grad-CAM heat lies (predicted class, original {meta['part']} images)",
        "",
        "| class | images | heat mass on cells | cell area share | ratio of means | mean per-image ratio (n) "
        "| heat mass in scale-bar corner |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, b in [*att["per_class"].items(), ("overall", att["overall"])]:
        lines.append(
            f"| {names.get(key, 'all')} | {b['n']} | {_pct(b['mean_mass_share_on_cells'])} | "
            f"{_pct(b['mean_cell_area_share'])} | {b['ratio_of_means']:.2f} | "
            f"{b['mean_per_image_ratio']:.2f} ({b['n_images_in_per_image_ratio']}) | "
            f"{_pct(b['mean_mass_share_in_scale_bar_corner'])} |"
        )
    lines += [
        "",
        f"Macro average of the per-class ratios: {att['overall']['macro_ratio_of_means']:.2f}. "
        f"The scale-bar corner is {_pct(att['overall']['scale_bar_corner_area_share'])} of the image area.",
        "",
        "Cell masks are the non-black pixels of the dataset's `segmented/` twins (brightest channel > "
        f"{MASK_THRESHOLD}). They mostly cover the stained white cells and blasts, rarely the red cells, and they are "
        "nearly empty for some classes (see the area shares): perturbations (c) and (d) and the mass ratio inherit "
        "that segmentation's quality.",
        "",
        "## Targets",
        "",
        "| target | value | met |",
        "|---|---|---|",
        f"| white-balanced change within +-{TARGETS['white_balanced_drop_max_points']} points "
        f"| {drops['white_balanced']:+.2f} "
        f"| {'yes' if doc['checks']['white_balanced'] else 'NO'} |",
        f"| other-class tint change within +-{TARGETS['other_class_tint_drop_max_points']} points | "
        f"{drops['other_class_tint']:+.2f} | {'yes' if doc['checks']['other_class_tint'] else 'NO'} |",
        f"| scale-bar corner masked change within +-{TARGETS['scale_bar_masked_drop_max_points']} point | "
        f"{drops['scale_bar_masked']:+.2f} | {'yes' if doc['checks']['scale_bar_masked'] else 'NO'} |",
        f"| heat mass on cells >= {TARGETS['cell_mass_to_area_ratio_min']}x their area share (ratio of means) | "
        f"{att['overall']['ratio_of_means']:.2f} | {'yes' if doc['checks']['cell_attention'] else 'NO'} |",
        "",
        "![Grad-CAM examples: original, overlay, cell mask](gradcam_examples.png)",
        "",
        f"Reproduce: `{meta['command']}`",
        "",
    ]
    return "\n".join(lines)
