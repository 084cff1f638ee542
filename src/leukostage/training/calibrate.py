"""Calibrate the input validator on real data, then score it honestly on images it never saw.

What it does (``leukostage calibrate-validator``):

1. Split genuine smears deterministically into a calibration part and a held-out part: Taleqani by the served
   model's split (``make_split(discover(data), "blocked", seed)``: train + val calibrate, test is held out, so that
   the gate's answers on that test part, shifted or not, are on fields it never saw), PBC per cell type
   and BCCD each by a seeded half / half.
2. Colour rule: thresholds placed a margin beyond the most extreme calibration smear (:func:`derive_colour_rule`).
3. Content check: a small MLP on :func:`validate.content_features`, trained on calibration smears (plus augmented
   copies) against calibration negatives (:mod:`.negatives`, ``calibration`` part); its threshold is the lowest
   per-source 0.2 % quantile of out-of-fold smear scores, so >= 99.8 % of each source's smears pass when unseen;
   with ``--capture``, also no higher than what keeps 97 % of each mild capture (:data:`MILD_CAPTURES`) of unseen
   Taleqani fields, so an ordinary day's JPEG, focus, lamp, stain and magnification are not turned away.
4. Write ``validator.json`` (weights, thresholds, provenance), then score the ``paper`` and ``default`` presets on
   the held-out smears and the ``heldout`` negatives and write ``reports/validation/report.md`` + ``metrics.json``.

Training-time only (scikit-learn, scikit-image); serving reads the JSON with numpy alone.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import sys
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..capture import background_level, field_of_view, with_background
from ..imaging import iter_image_files, load_image
from ..validate import (
    ANALYSIS_SIDE,
    FEATURE_NAMES,
    PAPER_RULE,
    VALIDATOR_PATH,
    ColourRule,
    ContentModel,
    Preset,
    ValidationResult,
    analysis_image,
    colour_stats,
    content_features,
    run_checks,
)
from . import negatives
from .augment import CaptureConfig, capture_image, simulate_eyepiece
from .data import discover, make_split
from .shifts import Shift

GENUINE_SOURCES = ("taleqani", "pbc_sample", "bccd_smears")
TALEQANI_SPLIT = "blocked"  # the split the served model is measured on (issue 18's shift table is its test part)
# Content threshold: the share of each source's unseen (out-of-fold) smears that must pass (issue 3 asks >= 99.5 %;
# the extra margin keeps held-out acceptance clear of the 99 % target).
TARGET_ACCEPTANCE = 0.998
EYEPIECE_SHARE = 0.15  # capture-augmented calibration smears that are eyepiece photos
COLOUR_MARGIN = 0.8  # lower colour thresholds sit at 80 % of the lowest calibration smear's value
# With --capture, the content threshold is also no higher than what lets MILD_ACCEPTANCE of each mild capture of the
# unseen Taleqani calibration fields through: issue 18's mild levels (an ordinary day), made with this package's own
# capture chain (:class:`.shifts.Shift`), each on every MILD_EVERY-th field, and seen as the gate sees them.
MILD_CAPTURES: tuple[Shift, ...] = (
    Shift("jpeg", "q40", jpeg=40),
    Shift("jpeg", "q20", jpeg=20),
    Shift("focus", "1.5px", blur=1.5),
    Shift("exposure", "x0.7", exposure=0.7),
    Shift("exposure", "x1.2", exposure=1.2),
    Shift("stain", "x0.75", od=((0.75, 0.0, 0.0), (0.0, 0.75, 0.0), (0.0, 0.0, 0.75))),
    Shift("stain", "x1.3", od=((1.3, 0.0, 0.0), (0.0, 1.3, 0.0), (0.0, 0.0, 1.3))),
    Shift("magnification", "x0.85", magnification=0.85),
    Shift("magnification", "x1.2", magnification=1.2),
    Shift("eyepiece", "x2", eyepiece=2.0, jpeg=80),
)
MILD_ACCEPTANCE = 0.97
MILD_EVERY = 4
TARGETS = {"genuine": 0.99, "table7": 1.0, "hard": 0.95}  # issue 3: accepted share / rejected share per category


@dataclass(frozen=True)
class CalibrationConfig:
    """Everything that decides the calibration; stored in validator.json so a run can be repeated exactly."""

    data: str = "../shared/data"
    seed: int = 42
    negatives_per_category: int = 200  # calibration part
    heldout_per_category: int = 150  # held-out part, for the report
    genuine_per_source: int = 1000  # calibration smears per source after augmentation (originals always kept)
    capture: bool = False  # augment the calibration smears with the model's capture chain too (issue 18)
    capture_per_source: int = 800  # with capture: this many capture-chain copies of each source's smears, on top
    hidden: tuple[int, ...] = (32,)
    alpha: float = 1.0  # L2 penalty of the MLP: strong, so scores spread out instead of saturating at 0 or 1
    folds: int = 5


# --- genuine smears -------------------------------------------------------------------------------------------------
def genuine_split(data_dir: str | Path, seed: int = 42) -> dict[str, dict[str, list[Path]]]:
    """Calibration / held-out file lists per genuine source; deterministic for a given seed and folder content.

    Raises:
        FileNotFoundError: a source folder is missing.
    """
    data_dir = Path(data_dir)
    out: dict[str, dict[str, list[Path]]] = {}
    ds = discover(data_dir)
    split = make_split(ds, TALEQANI_SPLIT, seed)
    out["taleqani"] = {
        "calibration": [ds.paths[i] for i in np.concatenate([split["train"], split["val"]])],
        "heldout": [ds.paths[i] for i in split["test"]],
    }
    rng = np.random.default_rng(seed)
    pbc = data_dir / "pbc_sample"
    if not pbc.is_dir():
        raise FileNotFoundError(f"genuine smear folder {pbc} is missing")
    out["pbc_sample"] = {"calibration": [], "heldout": []}
    for folder in sorted(p for p in pbc.iterdir() if p.is_dir()):
        files = [Path(f) for f, _ in iter_image_files(folder)]
        order = rng.permutation(len(files))
        half = len(files) // 2
        out["pbc_sample"]["calibration"] += [files[i] for i in sorted(order[:half])]
        out["pbc_sample"]["heldout"] += [files[i] for i in sorted(order[half:])]
    bccd = data_dir / "bccd_smears"
    if not bccd.is_dir():
        raise FileNotFoundError(f"genuine smear folder {bccd} is missing")
    files = [Path(f) for f, _ in iter_image_files(bccd)]
    order = rng.permutation(len(files))
    half = len(files) // 2
    out["bccd_smears"] = {
        "calibration": [files[i] for i in sorted(order[:half])],
        "heldout": [files[i] for i in sorted(order[half:])],
    }
    return out


def fingerprint(paths: list[Path], root: Path) -> str:
    """A hash over relative names and contents: changes when any file of the list changes."""
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(f"{p.relative_to(root)}:{hashlib.sha256(p.read_bytes()).hexdigest()}\n".encode())
    return h.hexdigest()[:16]


def augment_smear(rgb: np.ndarray, rng: np.random.Generator, capture: bool = False) -> np.ndarray:
    """A smear as another laboratory might photograph it: cropped, rotated, rescaled, another stain and light.

    Colour moves in Lab, separately for the background (bright pixels) and the stained cells, so three sources
    spread into the space between them (measured: a source left out of calibration is mostly still accepted,
    see the report's ablations). Hue moves stay far from the hue-shifted negatives (140-200 degrees away).
    With ``capture``, the model's capture chain replaces the light blur and JPEG, and some smears become eyepiece
    photos as the gate crops them, so the content check accepts what the capture layer can answer.
    """
    h, w = rgb.shape[:2]
    ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    img = np.rot90(rgb[y : y + ch, x : x + cw], int(rng.integers(0, 4)))
    if rng.random() < 0.5:
        img = img[:, ::-1]
    s = rng.uniform(0.4, 2.5)
    img = cv2.resize(
        np.ascontiguousarray(img),
        (max(48, int(img.shape[1] * s)), max(48, int(img.shape[0] * s))),
        interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR,
    )
    lab = cv2.cvtColor(img, cv2.COLOR_RGB2LAB).astype(np.float32)
    background = np.clip((lab[:, :, 0] / 255.0 - 0.55) / 0.35, 0, 1)
    lab[:, :, 0] = lab[:, :, 0] * rng.uniform(0.85, 1.1) + rng.uniform(-15, 15)
    for k in (1, 2):
        chroma = (lab[:, :, k] - 128) * rng.uniform(0.4, 1.6)
        lab[:, :, k] = 128 + chroma + background * rng.normal(0, 10) + (1 - background) * rng.normal(0, 10)
    img = cv2.cvtColor(np.clip(lab, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)
    if capture:  # the model's capture chain (issue 18): another stain, focus, light, sensor and JPEG
        img = capture_image(img, CaptureConfig(), int(rng.integers(2**31)))
        if rng.random() < EYEPIECE_SHARE:  # a phone at the eyepiece, as the gate will see it: the field cut out
            img = field_of_view(simulate_eyepiece(img, rng, rng.uniform(1.5, 2.5)))[0]
        return np.ascontiguousarray(img)
    if rng.random() < 0.2:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.4, 1.2))
    if rng.random() < 0.5:
        ok, buf = cv2.imencode(".jpg", img[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(70, 96))])
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1]
    return np.ascontiguousarray(img)


# --- the calibration set --------------------------------------------------------------------------------------------
@dataclass
class Samples:
    """Feature rows with what each row is: label (1 smear), source/category, group (for folds), original or not."""

    features: list[np.ndarray] = field(default_factory=list)
    stats: list[tuple[float, float, float]] = field(default_factory=list)
    label: list[int] = field(default_factory=list)
    kind: list[str] = field(default_factory=list)
    group: list[str] = field(default_factory=list)
    original: list[bool] = field(default_factory=list)
    # mild captures of calibration smears: scored by the fold model that never saw their field, never fitted on
    mild_features: list[np.ndarray] = field(default_factory=list)
    mild_level: list[str] = field(default_factory=list)
    mild_group: list[str] = field(default_factory=list)
    capture: dict | None = None  # the validator's capture section, where --capture made it first

    def add(self, rgb: np.ndarray, label: int, kind: str, group: str, original: bool) -> None:
        small = analysis_image(rgb, ANALYSIS_SIDE)
        self.features.append(content_features(small))
        self.stats.append(colour_stats(cv2.cvtColor(small, cv2.COLOR_RGB2HSV), PAPER_RULE))
        self.label.append(label)
        self.kind.append(kind)
        self.group.append(group)
        self.original.append(original)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return (
            np.vstack(self.features),
            np.asarray(self.label),
            np.asarray(self.kind),
            np.asarray(self.group),
            np.asarray(self.original),
        )

    def add_mild(self, rgb: np.ndarray, level: str, group: str) -> None:
        self.mild_features.append(content_features(analysis_image(rgb, ANALYSIS_SIDE)))
        self.mild_level.append(level)
        self.mild_group.append(group)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def collect_calibration(cfg: CalibrationConfig, split: dict[str, dict[str, list[Path]]]) -> Samples:
    """Features of calibration smears (originals + augmented copies) and calibration negatives."""
    rng = np.random.default_rng([cfg.seed, 1])
    samples = Samples()
    smears_for_negatives: list[np.ndarray] = []
    for source in GENUINE_SOURCES:
        files = split[source]["calibration"]
        _log(f"calibration smears: {source} ({len(files)} files)")
        images = [load_image(p) for p in files]
        for i, rgb in enumerate(images):
            samples.add(rgb, 1, source, f"{source}:{i}", True)
        for k in range(max(0, cfg.genuine_per_source - len(images))):
            i = k % len(images)
            samples.add(augment_smear(images[i], rng), 1, source, f"{source}:{i}", False)
        for _k in range(cfg.capture_per_source if cfg.capture else 0):
            i = int(rng.integers(len(images)))
            samples.add(augment_smear(images[i], rng, capture=True), 1, source, f"{source}:{i}", False)
        step = max(1, len(images) // 40)
        smears_for_negatives += images[::step]
        if cfg.capture and source == "taleqani":
            from .calibrate_capture import fit_capture

            _log("capture thresholds (blocked split)")
            samples.capture = fit_capture(cfg.data, cfg.seed)
            add_mild_captures(samples, images, samples.capture["reference_background"], cfg.seed)
    src = negatives.load_sources("calibration", cfg.data, tuple(smears_for_negatives))
    for category in negatives.CATEGORIES:
        if not negatives.available(category, src):
            _log(f"calibration negatives: {category} skipped (no sources)")
            continue
        _log(f"calibration negatives: {category}")
        for i, rgb in enumerate(negatives.generate(category, cfg.negatives_per_category, cfg.seed, src)):
            samples.add(rgb, 0, category, f"{category}:{i}", True)
    return samples


def gate_input(rgb: np.ndarray, reference: float) -> np.ndarray:
    """What the gate's colour and content layers read (:func:`validate.run_gate`): the eyepiece's field cut out,
    and a dim picture brought to the reference background."""
    rgb, working, _ = field_of_view(rgb)
    return with_background(rgb, background_level(working[0]), reference)


def add_mild_captures(samples: Samples, images: list[np.ndarray], reference: float, seed: int) -> None:
    """Every :data:`MILD_CAPTURES` level of every ``MILD_EVERY``-th Taleqani calibration field, grouped by field."""
    index = list(range(0, len(images), MILD_EVERY))
    fields = np.stack([images[i] for i in index])
    for shift in MILD_CAPTURES:
        _log(f"mild captures: {shift.name} ({len(index)} fields)")
        for i, rgb in zip(index, shift.apply(fields, seed)):
            samples.add_mild(gate_input(rgb, reference), shift.name, f"taleqani:{i}")


# --- fitting --------------------------------------------------------------------------------------------------------
def derive_colour_rule(stats: np.ndarray) -> ColourRule:
    """Colour thresholds from calibration smears' (saturation, brightness, stain ratio): a margin beyond the extremes.

    The colour layer is a coarse gate that must never turn away a real smear; the content check does the fine work.
    The stain hue band stays the paper's (OpenCV 120-180).
    """
    sat, val, ratio = stats[:, 0], stats[:, 1], stats[:, 2]
    return ColourRule(
        min_saturation=math.floor(COLOUR_MARGIN * float(sat.min()) * 10) / 10,
        min_brightness=math.floor(COLOUR_MARGIN * float(val.min())),
        max_brightness=float(min(255, math.ceil(float(val.max()) + 0.5 * (255 - float(val.max()))))),
        hue_low=PAPER_RULE.hue_low,
        hue_high=PAPER_RULE.hue_high,
        min_stain_ratio=math.floor(COLOUR_MARGIN * float(ratio.min()) * 1000) / 1000,
    )


def sample_weights(label: np.ndarray, kind: np.ndarray) -> np.ndarray:
    """Each genuine source and each negative category weighs the same, and smears weigh as much as non-smears."""
    w = np.zeros(len(label))
    for positive in (0, 1):
        kinds = np.unique(kind[label == positive])
        for k in kinds:
            sel = (label == positive) & (kind == k)
            w[sel] = 1.0 / (len(kinds) * sel.sum())
    return w * len(label) / 2.0


def fit_mlp(x: np.ndarray, y: np.ndarray, w: np.ndarray, hidden: tuple[int, ...], alpha: float, seed: int) -> dict:
    """Standardise, fit a ReLU MLP with a logistic output, and export it as plain lists (see ContentModel)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-9] = 1.0
    clf = MLPClassifier(hidden_layer_sizes=hidden, alpha=alpha, solver="lbfgs", max_iter=3000, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit((x - mean) / scale, y, sample_weight=w)
    return {
        "feature_names": list(FEATURE_NAMES),
        "mean": mean.tolist(),
        "scale": scale.tolist(),
        "layers": [{"weights": c.tolist(), "bias": b.tolist()} for c, b in zip(clf.coefs_, clf.intercepts_)],
        "threshold": 0.5,
    }


def model_scores(model: dict, x: np.ndarray) -> np.ndarray:
    m = ContentModel.from_dict(model)
    return np.array([m.score(row) for row in x])


def out_of_fold_scores(
    x: np.ndarray,
    y: np.ndarray,
    kind: np.ndarray,
    group: np.ndarray,
    cfg: CalibrationConfig,
    extra: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each row scored by a model that never saw its group (an image and its augmented copies).

    ``extra`` (features, group) are rows never fitted on, each scored by the fold model that left its group out
    (NaN where no fold did). Returns the rows' scores and the extra rows' scores.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    oof = np.zeros(len(y))
    extra_x, extra_group = extra if extra is not None else (np.zeros((0, x.shape[1])), np.zeros(0, dtype=str))
    extra_oof = np.full(len(extra_x), np.nan)
    folds = StratifiedGroupKFold(n_splits=cfg.folds, shuffle=True, random_state=cfg.seed)
    for train, test in folds.split(x, y, group):
        model = fit_mlp(x[train], y[train], sample_weights(y[train], kind[train]), cfg.hidden, cfg.alpha, cfg.seed)
        oof[test] = model_scores(model, x[test])
        left_out = np.isin(extra_group, group[test])
        if left_out.any():
            extra_oof[left_out] = model_scores(model, extra_x[left_out])
    return oof, extra_oof


def choose_threshold(scores: np.ndarray, kind: np.ndarray, target: float = TARGET_ACCEPTANCE) -> float:
    """The lowest per-source (1 - target) quantile of smear scores: every source keeps >= target of its smears."""
    per_source = [float(np.quantile(scores[kind == k], 1.0 - target, method="lower")) for k in np.unique(kind)]
    return float(min(per_source))


def mild_rule() -> str:
    """The mild-capture bound on the content threshold, in words (the validator's derivation and the report)."""
    return (
        f"no higher than the lowest per-level {1 - MILD_ACCEPTANCE:.0%} quantile of the out-of-fold scores of mild "
        f"captures of every {MILD_EVERY}th Taleqani calibration field"
    )


def _round(obj, digits: int = 6):
    """Round floats in nested lists/dicts to significant digits: a small, diff-friendly JSON."""
    if isinstance(obj, float):
        return float(f"{obj:.{digits}g}")
    if isinstance(obj, list):
        return [_round(v, digits) for v in obj]
    if isinstance(obj, dict):
        return {k: _round(v, digits) for k, v in obj.items()}
    return obj


def _versions() -> dict:
    import sklearn

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "scikit-learn": sklearn.__version__,
    }


def fit_validator(samples: Samples, cfg: CalibrationConfig, exclude: tuple[str, ...] = ()) -> dict:
    """Fit the colour rule and the content model on calibration samples (minus ``exclude`` sources/categories)."""
    x, y, kind, group, original = samples.arrays()
    keep = ~np.isin(kind, exclude)
    x, y, kind, group, original = x[keep], y[keep], kind[keep], group[keep], original[keep]
    stats = np.asarray(samples.stats)[keep]
    # the colour gate must pass every smear the capture layer can answer: with capture, its copies count too
    rule = derive_colour_rule(stats[(y == 1) & (original | cfg.capture)])
    model = fit_mlp(x, y, sample_weights(y, kind), cfg.hidden, cfg.alpha, cfg.seed)
    mild_x = np.asarray(samples.mild_features).reshape(-1, x.shape[1])
    mild_level, mild_group = np.asarray(samples.mild_level, dtype=str), np.asarray(samples.mild_group, dtype=str)
    oof, mild_oof = out_of_fold_scores(x, y, kind, group, cfg, (mild_x, mild_group))
    genuine = (y == 1) & original
    model["threshold"] = choose_threshold(oof[genuine], kind[genuine])
    scored = ~np.isnan(mild_oof)  # none where the Taleqani smears are left out (an ablation)
    mild = {}
    if scored.any():
        bound = choose_threshold(mild_oof[scored], mild_level[scored], MILD_ACCEPTANCE)  # each level keeps its share
        model["threshold_bound"] = "mild captures" if bound < model["threshold"] else "originals"
        model["threshold"] = min(model["threshold"], bound)
        mild = {
            k: float((mild_oof[scored & (mild_level == k)] >= model["threshold"]).mean())
            for k in dict.fromkeys(mild_level[scored])
        }
    neg = y == 0
    model["out_of_fold"] = {
        "smears_accepted": {
            k: float((oof[genuine & (kind == k)] >= model["threshold"]).mean()) for k in np.unique(kind[genuine])
        },
        "negatives_rejected": {
            k: float((oof[neg & (kind == k)] < model["threshold"]).mean()) for k in np.unique(kind[neg])
        },
        **({"mild_captures_accepted": mild} if mild else {}),
    }
    return {"colour": asdict(rule), "content": model}


def preset_from(validator: dict) -> Preset:
    return Preset(
        "default",
        ColourRule(**validator["colour"]),
        ContentModel.from_dict(validator["content"]),
        int(validator.get("analysis_side", ANALYSIS_SIDE)),
    )


def calibrate(
    cfg: CalibrationConfig, split: dict[str, dict[str, list[Path]]] | None = None, samples: Samples | None = None
) -> dict:
    """The whole validator.json: thresholds, weights and how they were made."""
    split = split or genuine_split(cfg.data, cfg.seed)
    samples = samples or collect_calibration(cfg, split)
    fitted = fit_validator(samples, cfg)
    root = Path(cfg.data)
    kind = np.asarray(samples.kind)
    data = {
        "genuine": {
            source: {
                "rule": (
                    f"make_split(discover(data), {TALEQANI_SPLIT!r}, seed): train + val"
                    if source == "taleqani"
                    else "seeded half / half" + (" per cell type" if source == "pbc_sample" else "")
                ),
                "calibration_files": len(split[source]["calibration"]),
                "calibration_fingerprint": fingerprint(split[source]["calibration"], root),
                "heldout_files": len(split[source]["heldout"]),
                "heldout_fingerprint": fingerprint(split[source]["heldout"], root),
                "samples_with_augmentation": int((kind == source).sum()),
            }
            for source in GENUINE_SOURCES
        },
        "negatives": {
            "generator": "leukostage.training.negatives.generate(category, n, seed, load_sources('calibration', data))",
            "per_category": {k: int((kind == k).sum()) for k in negatives.CATEGORIES if (kind == k).any()},
            "sources": {
                "photos": list(negatives.PHOTOS["calibration"]),
                "textures": list(negatives.TEXTURES["calibration"]),
                "documents": list(negatives.DOCUMENTS["calibration"]),
                "tissue": "left halves of not_blood/he_*.png and ihc_*.png",
                "microscopy": "left half of skimage.data.cell()",
            },
        },
    }
    validator = {
        "format": "leukostage-validator/1",
        "command": f"leukostage calibrate-validator --data {cfg.data} --seed {cfg.seed}"
        + (" --capture" if cfg.capture else ""),
        "config": asdict(cfg),
        "versions": _versions(),
        "analysis_side": ANALYSIS_SIDE,
        "colour": fitted["colour"],
        "colour_derivation": (
            f"lower thresholds at {COLOUR_MARGIN} x the most extreme calibration smear "
            "(OpenCV HSV of the analysis copy); max brightness halfway from the brightest smear "
            "to 255; stain hue band kept from the paper"
        ),
        "content": fitted["content"],
        "content_derivation": (
            f"MLP {list(cfg.hidden)} (ReLU, logistic output) on {len(FEATURE_NAMES)} features; "
            f"threshold = lowest per-source {1 - TARGET_ACCEPTANCE:.3%} quantile of "
            f"{cfg.folds}-fold out-of-fold smear scores (grouped by image)"
            + (f", and {mild_rule()} ({', '.join(m.name for m in MILD_CAPTURES)})" if cfg.capture else "")
        ),
        "data": data,
    }
    validator["content"] = _round(validator["content"])
    if cfg.capture:
        validator["capture"] = samples.capture
    return validator


def write_validator(validator: dict, path: str | Path = VALIDATOR_PATH) -> Path:
    path = Path(path)
    path.write_text(json.dumps(validator, indent=1) + "\n")
    return path


# --- honest scoring -------------------------------------------------------------------------------------------------
def _group(category: str) -> str:
    if category in GENUINE_SOURCES:
        return "genuine"
    return "table7" if category in negatives.TABLE7 else ("hard" if category in negatives.HARD else "extra")


def _tally(results: dict, category: str, preset: str, verdict: ValidationResult) -> None:
    results.setdefault((category, preset), []).append(None if verdict.valid else verdict.code)


def evaluate(cfg: CalibrationConfig, presets: dict[str, Preset], split: dict[str, dict[str, list[Path]]]) -> dict:
    """Score presets on held-out smears and held-out negatives, streaming (images are not kept in memory).

    Returns per category: n, the share accepted (smears) or rejected (negatives) per preset, and codes.
    """
    outcomes: dict[tuple[str, str], list[str | None]] = {}
    smears_for_negatives: list[np.ndarray] = []
    for source in GENUINE_SOURCES:
        files = split[source]["heldout"]
        _log(f"held-out smears: {source} ({len(files)} files)")
        for p in files:
            rgb = load_image(p)
            for name, preset in presets.items():
                _tally(outcomes, source, name, run_checks(rgb, preset))
        step = max(1, len(files) // 20)
        smears_for_negatives += [load_image(p) for p in files[::step]]
    src = negatives.load_sources("heldout", cfg.data, tuple(smears_for_negatives))
    for category in negatives.CATEGORIES:
        if not negatives.available(category, src):
            continue
        _log(f"held-out negatives: {category}")
        for rgb in negatives.generate(category, cfg.heldout_per_category, cfg.seed + 1000, src):
            for name, preset in presets.items():
                _tally(outcomes, category, name, run_checks(rgb, preset))
    table: dict[str, dict] = {}
    for (category, name), codes in outcomes.items():
        row = table.setdefault(category, {"group": _group(category), "n": len(codes)})
        genuine = category in GENUINE_SOURCES
        passed = sum(c is None for c in codes)
        row[name] = {
            "accepted" if genuine else "rejected": round((passed if genuine else len(codes) - passed) / len(codes), 4),
            "codes": _code_counts(codes),
        }
    return table


def _code_counts(codes: list[str | None]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for c in codes:
        key = c or "accepted"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def _share(row: dict, preset: str) -> float:
    cell = row[preset]
    return cell["accepted"] if "accepted" in cell else cell["rejected"]


def _met(row: dict, preset: str) -> bool:
    return _share(row, preset) >= TARGETS.get(row["group"], 0.0) - 1e-9


ABLATIONS = {
    "without_taleqani": ("taleqani",),
    "without_pbc_sample": ("pbc_sample",),
    "without_bccd_smears": ("bccd_smears",),
    "without_real_tissue": ("tissue_he", "tissue_ihc"),
}


def run(
    cfg: CalibrationConfig,
    validator_path: str | Path = VALIDATOR_PATH,
    report_dir: str | Path = "reports/validation",
    refit: bool = True,
    ablations: bool = True,
) -> dict:
    """Calibrate (unless ``refit`` is False: then score the existing JSON), score on held-out data, write the report.

    Ablations refit without one genuine source (a lab never seen) or without the real tissue crops (tissue never
    seen), and score those models on the same held-out images.
    """
    validator = None
    if not refit:  # score the JSON as it was made: its seed decides which smears are held out
        validator = json.loads(Path(validator_path).read_text())
        made = {**validator["config"], "data": cfg.data}
        cfg = CalibrationConfig(**{**made, "hidden": tuple(made["hidden"])})
    split = genuine_split(cfg.data, cfg.seed)
    samples: Samples | None = None
    if validator is None:
        samples = collect_calibration(cfg, split)
        validator = calibrate(cfg, split, samples)
        write_validator(validator, validator_path)
        _log(f"wrote {validator_path}")
    presets = {"paper": Preset("paper", PAPER_RULE, None, None), "default": preset_from(validator)}
    if ablations:
        samples = samples or collect_calibration(cfg, split)
        for name, exclude in ABLATIONS.items():
            _log(f"ablation: {name}")
            presets[name] = preset_from({**fit_validator(samples, cfg, exclude), "analysis_side": ANALYSIS_SIDE})
    table = evaluate(cfg, presets, split)
    root = Path(cfg.data)
    metrics = {
        "command": validator["command"] + (" (report from the existing validator.json)" if not refit else ""),
        "config": asdict(cfg),
        "targets": TARGETS,
        "thresholds": {
            "paper": asdict(PAPER_RULE),
            "default": {**validator["colour"], "smear_score": validator["content"]["threshold"]},
        },
        "out_of_fold": validator["content"].get("out_of_fold"),
        "table": table,
        "ablations": {name: list(exclude) for name, exclude in ABLATIONS.items()} if ablations else {},
        "heldout_files": {s: [str(p.relative_to(root)) for p in split[s]["heldout"]] for s in GENUINE_SOURCES},
        "heldout_negative_sources": {
            "photos": list(negatives.PHOTOS["heldout"]),
            "textures": list(negatives.TEXTURES["heldout"]),
            "documents": list(negatives.DOCUMENTS["heldout"]),
            "tissue": "right halves of not_blood/he_*.png and ihc_*.png",
            "microscopy": "right half of skimage.data.cell()",
            "seed": cfg.seed + 1000,
        },
    }
    write_report(metrics, report_dir)
    return metrics


def summary(metrics: dict) -> dict[str, dict]:
    """Per category: n and the share accepted (smears) or rejected (negatives) by each preset."""
    return {
        c: {"n": row["n"], **{p: _share(row, p) for p in ("paper", "default")}} for c, row in metrics["table"].items()
    }


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _worst_unseen_lab(metrics: dict) -> str:
    """' (worst: X, N % accepted when left out)' from the leave-one-source-out ablations, or '' without them."""
    shares = {
        s: _share(metrics["table"][s], f"without_{s}")
        for s in GENUINE_SOURCES
        if f"without_{s}" in metrics["ablations"] and s in metrics["table"]
    }
    if not shares:
        return ""
    worst = min(shares, key=shares.get)
    return f" (worst: {worst}, {_pct(shares[worst])} accepted when left out)"


def _mild_sentence(out_of_fold: dict) -> str:
    mild = out_of_fold.get("mild_captures_accepted")
    if not mild:
        return "."
    shares = ", ".join(f"{k} {_pct(v)}" for k, v in mild.items())
    return (
        f", and {mild_rule()} (issue 18's mild levels, seen as the gate sees them). "
        f"Out of fold, those captures pass at: {shares}."
    )


def report_markdown(metrics: dict) -> str:
    """The held-out table (paper vs default per category), the ablations, and how the numbers were made."""
    table, targets = metrics["table"], metrics["targets"]
    order = [c for c in (*GENUINE_SOURCES, *negatives.CATEGORIES) if c in table]
    titles = {
        "genuine": "Genuine smears (share accepted)",
        "table7": "Table 7 categories (share rejected)",
        "hard": "Hard negatives (share rejected)",
        "extra": "Extra negatives (share rejected, no target)",
    }
    lines = [
        "# Input validation: held-out results",
        "",
        f"Regenerate with `{metrics['command'].split(' (')[0]}` (add `--report-only` to score the shipped "
        "`validator.json` without refitting). Every number below comes from images that played no part in "
        "calibration: Taleqani's test split, the held-out halves of PBC and BCCD, and negatives generated from "
        "held-out sources with another seed.",
        "",
    ]
    for group in ("genuine", "table7", "hard", "extra"):
        rows = [c for c in order if table[c]["group"] == group]
        if not rows:
            continue
        target = targets.get(group)
        lines += [
            f"## {titles[group]}" + (f" - target >= {_pct(target)}" if target else ""),
            "",
            "| category | n | paper preset | default preset | default meets target | default rejection codes |",
            "|---|---:|---:|---:|:---:|---|",
        ]
        for c in rows:
            row = table[c]
            codes = ", ".join(f"{k} {v}" for k, v in row["default"]["codes"].items() if k != "accepted") or "-"
            met = ("yes" if _met(row, "default") else "**no**") if target else "-"
            lines.append(
                f"| {c} | {row['n']} | {_pct(_share(row, 'paper'))} | {_pct(_share(row, 'default'))} | "
                f"{met} | {codes} |"
            )
        lines.append("")
    if metrics["ablations"]:
        cols = list(GENUINE_SOURCES) + ["tissue_he", "tissue_ihc"]
        cols = [c for c in cols if c in table]
        lines += [
            "## Ablations: refit without part of the calibration data, scored on the same held-out images",
            "",
            "Leaving a genuine source out asks how the validator treats a laboratory it has never seen; "
            "leaving the real tissue crops out asks how it treats tissue it has never seen (only "
            "procedurally rendered tissue remains).",
            "",
            "| model | left out | " + " | ".join(cols) + " | worst Table 7 | worst hard |",
            "|---|---|" + "---:|" * (len(cols) + 2),
        ]
        for name, exclude in [("default", [])] + list(metrics["ablations"].items()):
            cells = [_pct(_share(table[c], name)) for c in cols]
            worst = {
                g: min(_share(table[c], name) for c in table if table[c]["group"] == g) for g in ("table7", "hard")
            }
            lines.append(
                f"| {name} | {', '.join(exclude) or '-'} | "
                + " | ".join(cells)
                + f" | {_pct(worst['table7'])} | {_pct(worst['hard'])} |"
            )
        lines.append("")
    thr, src = metrics["thresholds"], metrics["heldout_negative_sources"]
    lines += [
        "## Thresholds",
        "",
        "| check | paper | default |",
        "|---|---|---|",
        f"| mean saturation >= | {thr['paper']['min_saturation']} | {thr['default']['min_saturation']} |",
        f"| mean brightness in | {thr['paper']['min_brightness']}-{thr['paper']['max_brightness']} | "
        f"{thr['default']['min_brightness']}-{thr['default']['max_brightness']} |",
        f"| stain-hue share (H {thr['paper']['hue_low']}-{thr['paper']['hue_high']}) >= | "
        f"{thr['paper']['min_stain_ratio']} | {thr['default']['min_stain_ratio']} |",
        f"| smear score >= | - | {thr['default']['smear_score']:.4g} |",
        "",
        "The paper preset applies Code Snippet 4 to the full-resolution image; the default preset analyses a copy "
        f"whose long side is {ANALYSIS_SIDE} px, so colour statistics differ slightly between the two.",
        "",
        "## How the default preset decides",
        "",
        "1. Colour (the paper's three criteria, the paper's messages): thresholds sit a margin beyond the most "
        "extreme calibration smear, so this layer only turns away what is plainly not a stained smear (blank, "
        "grey, dark, no stain hue at all).",
        f"2. Content: {len(FEATURE_NAMES)} cheap features of the {ANALYSIS_SIDE}-px copy (hue / saturation / "
        "brightness histograms, Lab moments, background and stain chemistry, gradient and edge statistics, "
        "palette size, Otsu blobs and purple-nucleus blobs) feed a one-hidden-layer MLP trained on calibration "
        "smears (with stain, exposure and scale augmentation) against calibration negatives. Its threshold is the "
        f"lowest per-source {1 - TARGET_ACCEPTANCE:.1%} quantile of out-of-fold smear scores"
        + _mild_sentence(metrics.get("out_of_fold") or {}),
        "",
        "## Limits",
        "",
        "- Three laboratories only. The ablations show what happens with a fourth: a source left out of "
        f"calibration is accepted less often{_worst_unseen_lab(metrics)}. Recalibrate with a laboratory's own "
        "smears before using the validator there.",
        "- Negatives are mostly generated. Real tissue is one H&E and one IHC slide; real photographs are a handful "
        "of scikit-image pictures. 100 % on 150 generated images per category is a measurement, not a guarantee.",
        "- Not covered: smears photographed with a phone through the eyepiece, screenshots that contain a smear, "
        "other stains (e.g. unstained phase contrast in colour), bone marrow aspirates.",
        "",
        "## How the held-out negatives were made",
        "",
        "Generated by `leukostage.training.negatives` from the `heldout` sources with seed "
        f"{src['seed']}: photographs {', '.join(src['photos'])}; textures {', '.join(src['textures'])}; "
        f"documents {', '.join(src['documents'])}; tissue: {src['tissue']}; microscopy: {src['microscopy']}; "
        "greyscale / hue-shifted smears derive from held-out smears. The calibration part uses other scikit-image "
        "pictures, the left halves of the tissue images and calibration smears. Real tissue is scarce (one H&E and one "
        "IHC image), so its held-out crops come from the unseen half of the same slides; the `without_real_tissue` "
        "ablation shows the rejection rate when no real tissue pixel was seen at all.",
        "",
    ]
    return "\n".join(lines)


def write_report(metrics: dict, report_dir: str | Path) -> Path:
    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    (out / "report.md").write_text(report_markdown(metrics))
    return out
