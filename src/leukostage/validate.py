"""The input gate: is this a usable blood smear photograph? Layered checks, each with a code and a sentence.

1. decoding (imaging.read_header / decode_image): ``unreadable``, ``unsupported_format``, ``animated``,
   ``too_small``, ``too_large``
2. colour (seed paper section 2.5): saturation, brightness, stain-hue ratio -> ``low_saturation``,
   ``abnormal_brightness``, ``no_stain_profile``
3. content: a small learned smear-vs-other classifier on cheap colour / texture / blob features of a downscaled
   copy -> ``not_blood_smear``
4. capture (default preset, where the validator file has a ``capture`` section; see :mod:`leukostage.capture`):
   a photo through the eyepiece is cropped to its field; then ``underexposed``, ``overexposed``,
   ``magnification_out_of_range`` and ``out_of_focus``, each with what was measured and what to do. The verdict of
   a usable smear carries the model's view of it (``field``: square, at the training images' scale).
(5. uncertainty lives in predict.decide, after the CNN.)

Presets: ``paper`` is Code Snippet 4 verbatim (colour only, full resolution), kept for comparison; ``default`` uses
colour thresholds calibrated on genuine smears plus the content check. The calibrated numbers live in
``validator.json`` beside this file, written by ``leukostage calibrate-validator`` (``training.calibrate``); the paper's
numbers live in :data:`PAPER_RULE`. Nothing else holds a threshold. Serving imports only numpy and cv2.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from . import capture
from .capture import CaptureSettings
from .imaging import ImageError, decode_image, read_bytes, resize_for_model

PRESETS = ("default", "paper")
DEFAULT_PRESET = "default"
VALIDATOR_PATH = Path(__file__).with_name("validator.json")  # the packaged calibration
VALIDATOR_ENV = "LEUKOSTAGE_VALIDATOR"  # another calibration file (what `--validator FILE` sets)
ANALYSIS_SIDE = 128  # the default preset looks at a copy whose long side is this many pixels (speed, scale)
MIN_ANALYSIS_SIDE = 8  # short side floor for very elongated images

LAYER_ORDER = (
    ("saturation", "low_saturation"),
    ("brightness", "abnormal_brightness"),
    ("stain_ratio", "no_stain_profile"),
    ("smear_score", "not_blood_smear"),
)
MESSAGES = {
    "low_saturation": "Image lacks colour saturation",
    "abnormal_brightness": "Abnormal brightness levels",
    "no_stain_profile": "No blood smear colour profile detected",
    "not_blood_smear": "Image does not look like a stained blood smear field (it resembles tissue, a photograph, "
    "a drawing or a flat colour)",
}
# The capture verdicts: the cause is known, so each says what was measured and what to do about it.
CAPTURE_MESSAGES = {
    "underexposed": "The picture is too dark: the slide's background is at {level:.0f} of 255, and at least "
    "{need:.0f} is needed to read the stain. Increase the light or the exposure and retake.",
    "overexposed": "The picture is washed out: {clipped:.0%} of it is at full white and its darkest hundredth (the "
    "nuclei) is at {level:.0f} of 255 (at most {limit:.0f} can be read). Reduce the light or the exposure and retake.",
    "overexposed_red_cells": "The picture is washed out: {clipped:.0%} of it is at full white and the lamp has left "
    "no red cell to see (with none, at most {limit:.0%} at full white can be read). Reduce the light or the exposure "
    "and retake.",
    "out_of_focus": "The field is out of focus: its sharpness is {value:.2f} at the model's scale, and at least "
    "{need:.2f} is needed. Refocus and retake.",
    "magnification_out_of_range": "Red cells measure about {diameter:.0f} px across in this picture; the model reads "
    "fields where they measure about {expected:.0f} px ({ratio:.2f}x its scale; pictures at {span} are rescaled). "
    "{advice}",
}
MAGNIFICATION_ADVICE = {
    "high": "Photograph a wider field: a lower-power objective, or less camera zoom.",
    "low": "Photograph a closer field: a higher-power objective, or more camera zoom.",
    "small": "At the model's scale the field is too small to read: photograph a wider field of the same slide.",
}
# A content score this close below the threshold is a smear the validator did not expect, not tissue or a photo.
UNUSUAL_SMEAR_MARGIN = 0.25
UNUSUAL_SMEAR_MESSAGE = (
    "Image passes the colour checks, but its content is unlike the blood smears this validator "
    "was calibrated on (smear score {score:.3f}, at least {threshold:.3f} needed): an unusual "
    "smear (staining, magnification, focus) or not a smear; retake the field, or use a validator "
    "calibrated on such smears (--validator)"
)


# --- presets --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ColourRule:
    """Thresholds on OpenCV HSV statistics (H in 0-179, S and V in 0-255)."""

    min_saturation: float
    min_brightness: float
    max_brightness: float
    hue_low: int
    hue_high: int
    min_stain_ratio: float


# Code Snippet 4 of the seed paper, verbatim: the one hard-coded rule, kept for comparison.
PAPER_RULE = ColourRule(20.0, 30.0, 240.0, 120, 180, 0.05)


@dataclass(frozen=True)
class ContentModel:
    """A standardiser plus a small MLP (ReLU hidden layers, one logistic output): P(blood smear | features)."""

    mean: np.ndarray
    scale: np.ndarray
    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]
    threshold: float
    feature_names: tuple[str, ...]

    def score(self, features: np.ndarray) -> float:
        """Probability that the features come from a blood smear."""
        x = (np.asarray(features, np.float64) - self.mean) / self.scale
        for w, b in zip(self.weights[:-1], self.biases[:-1]):
            x = np.maximum(x @ w + b, 0.0)
        z = float((x @ self.weights[-1] + self.biases[-1]).ravel()[0])
        return float(1.0 / (1.0 + np.exp(-np.clip(z, -60.0, 60.0))))

    @classmethod
    def from_dict(cls, d: dict) -> ContentModel:
        layers = d["layers"]
        return cls(
            mean=np.asarray(d["mean"], np.float64),
            scale=np.asarray(d["scale"], np.float64),
            weights=tuple(np.asarray(layer["weights"], np.float64) for layer in layers),
            biases=tuple(np.asarray(layer["bias"], np.float64) for layer in layers),
            threshold=float(d["threshold"]),
            feature_names=tuple(d["feature_names"]),
        )


@dataclass(frozen=True)
class Preset:
    """One named validation policy. ``analysis_side`` None means the colour rule sees the full-resolution image."""

    name: str
    colour: ColourRule
    content: ContentModel | None = None
    analysis_side: int | None = ANALYSIS_SIDE
    validator: dict | None = None  # which calibration file: {"name", "sha256"}; recorded in every verdict
    capture: CaptureSettings | None = None  # the capture layer's thresholds (validator files that have them)


def active_validator_path() -> Path:
    """$LEUKOSTAGE_VALIDATOR, else the calibration shipped in the package."""
    return Path(os.environ.get(VALIDATOR_ENV) or VALIDATOR_PATH)


def validator_info(path: str | Path | None = None) -> dict:
    """Name and SHA-256 of a calibration file, so every result says which validator judged it."""
    path = Path(path) if path is not None else active_validator_path()
    return _file_info(str(path.resolve()))


@functools.lru_cache(maxsize=8)
def _file_info(path: str) -> dict:
    p = Path(path)
    packaged = p == VALIDATOR_PATH.resolve()
    return {
        "name": f"{p.name} (packaged)" if packaged else p.name,
        "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
    }


PAPER_VALIDATOR = {"name": "paper rule (Code Snippet 4)", "sha256": None}  # no file: the rule is in the code


@functools.lru_cache(maxsize=4)
def load_calibration(path: str | Path = VALIDATOR_PATH) -> dict:
    """The calibrated thresholds and weights written by ``leukostage calibrate-validator``.

    Raises:
        FileNotFoundError: the file is missing (run ``leukostage calibrate-validator``).
        ValueError: the file is not a validator calibration of this version.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"validator calibration {path} is missing; run `leukostage calibrate-validator`")
    data = json.loads(path.read_text())
    if data.get("format") != "leukostage-validator/1":
        raise ValueError(f"{path} is not a leukostage validator calibration (format leukostage-validator/1)")
    names = tuple(data["content"]["feature_names"])
    if names != FEATURE_NAMES:
        raise ValueError(f"{path} was calibrated on other features than this version computes; recalibrate it")
    return data


def get_preset(name: str = DEFAULT_PRESET, path: str | Path | None = None) -> Preset:
    """Build a preset by name; ``default`` reads its calibration file (``path``, else :func:`active_validator_path`)
    once.

    Raises:
        ValueError: unknown name (the message lists the valid ones).
        FileNotFoundError: the calibration file is missing.
    """
    return _build_preset(name, str(Path(path) if path is not None else active_validator_path()))


@functools.lru_cache(maxsize=8)
def _build_preset(name: str, path: str) -> Preset:
    if name == "paper":
        return Preset("paper", PAPER_RULE, None, None, PAPER_VALIDATOR)
    if name == "default":
        data = load_calibration(path)
        return Preset(
            "default",
            ColourRule(**data["colour"]),
            ContentModel.from_dict(data["content"]),
            int(data["analysis_side"]),
            validator_info(path),
            CaptureSettings.from_dict(data["capture"]) if "capture" in data else None,
        )
    raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}")


# --- results --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    value: float
    threshold: float | list[float]
    passed: bool


@dataclass
class ValidationResult:
    valid: bool
    code: str | None = None
    reason: str | None = None
    checks: dict[str, Check] = field(default_factory=dict)
    validator: dict | None = None  # validator_info() of the calibration that judged the image
    capture: dict | None = None  # what the capture layer measured and did (mode, scale, focus, exposure)
    view: np.ndarray | None = field(default=None, repr=False)  # a usable smear: what the model is to read

    def checks_dict(self) -> dict:
        return {
            k: {"value": round(c.value, 4), "threshold": c.threshold, "passed": c.passed}
            for k, c in self.checks.items()
        }

    def to_dict(self) -> dict:
        out = {
            "valid": self.valid,
            "code": self.code,
            "reason": self.reason,
            "checks": self.checks_dict(),
            "validator": self.validator,
        }
        if self.capture is not None:
            out["capture"] = self.capture
        return out


# --- layer 2: colour ------------------------------------------------------------------------------------------------
def analysis_image(rgb: np.ndarray, side: int = ANALYSIS_SIDE) -> np.ndarray:
    """A copy whose long side is ``side`` pixels: every image is analysed at one scale, and quickly."""
    h, w = rgb.shape[:2]
    s = side / max(h, w)
    size = (max(MIN_ANALYSIS_SIDE, round(w * s)), max(MIN_ANALYSIS_SIDE, round(h * s)))
    if size == (w, h):
        return rgb
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)


def colour_stats(hsv: np.ndarray, rule: ColourRule) -> tuple[float, float, float]:
    """Mean saturation, mean brightness and the fraction of pixels with a stain hue (Code Snippet 4)."""
    hue = hsv[:, :, 0]
    ratio = float(((hue >= rule.hue_low) & (hue <= rule.hue_high)).mean())
    return float(hsv[:, :, 1].mean()), float(hsv[:, :, 2].mean()), ratio


def colour_checks(hsv: np.ndarray, rule: ColourRule) -> dict[str, Check]:
    sat, val, ratio = colour_stats(hsv, rule)
    return {
        "saturation": Check(sat, rule.min_saturation, sat >= rule.min_saturation),
        "brightness": Check(
            val, [rule.min_brightness, rule.max_brightness], rule.min_brightness <= val <= rule.max_brightness
        ),
        "stain_ratio": Check(ratio, rule.min_stain_ratio, ratio >= rule.min_stain_ratio),
    }


# --- layer 3: content features --------------------------------------------------------------------------------------
def _names() -> tuple[str, ...]:
    n: list[str] = []
    n += [f"hue_sat_{k}" for k in range(12)]
    n += [f"sat_hist_{k}" for k in range(8)]
    n += [f"val_hist_{k}" for k in range(8)]
    for ch in ("L", "a", "b"):
        n += [f"{ch}_mean", f"{ch}_std", f"{ch}_p05", f"{ch}_p50", f"{ch}_p95"]
    n += ["bright_a", "bright_b", "bright_L_std", "dark_a", "dark_b", "dark_L"]
    n += [
        "grad_mean",
        "grad_std",
        "grad_p50",
        "grad_p90",
        "grad_p99",
        "grad_flat",
        "lap_zero",
        "lap_abs",
        "grad_fine_coarse",
        "edge_density",
        "axis_aligned",
        "chroma_grad_a",
        "chroma_grad_b",
    ]
    n += ["colours_used", "top3_colours", "top1_colour"]
    n += [
        "otsu_level",
        "otsu_separation",
        "fg_fraction",
        "blob_count",
        "blob_largest",
        "blob_median_area",
        "blob_extent",
        "blob_roundness",
        "blob_small_fraction",
        "nucleus_fraction",
        "nucleus_blobs",
    ]
    return tuple(n)


FEATURE_NAMES = _names()


_LEVELS = np.arange(256, dtype=np.float64)


def _histogram_stats(channel: np.ndarray, qs: tuple[float, ...]) -> tuple[float, float, np.ndarray]:
    """Mean, standard deviation and quantiles of an 8-bit channel from one histogram (exact and cheap)."""
    hist = np.bincount(channel.ravel(), minlength=256).astype(np.float64)
    n = hist.sum()
    mean = float(hist @ _LEVELS) / n
    std = float(np.sqrt(max(float(hist @ (_LEVELS * _LEVELS)) / n - mean * mean, 0.0)))
    return mean, std, np.searchsorted(np.cumsum(hist), np.asarray(qs) * (n - 1) + 1).astype(np.float64)


def _mean(x: np.ndarray) -> float:
    """Mean of an integer array, summed exactly in float64."""
    return float(x.mean(dtype=np.float64)) if x.size else 0.0


def _gradient(channel: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer Sobel derivatives of an 8-bit channel and their float64 magnitude (exact, hence reproducible)."""
    gx = cv2.Sobel(channel, cv2.CV_16S, 1, 0, ksize=3).astype(np.int32)
    gy = cv2.Sobel(channel, cv2.CV_16S, 0, 1, ksize=3).astype(np.int32)
    return gx, gy, np.sqrt((gx * gx + gy * gy).astype(np.float64))


def _l1_gradient(channel: np.ndarray) -> float:
    """Mean |d/dx| + |d/dy| of an 8-bit channel (integer Sobel), per 255."""
    gx = cv2.Sobel(channel, cv2.CV_16S, 1, 0, ksize=3)
    gy = cv2.Sobel(channel, cv2.CV_16S, 0, 1, ksize=3)
    return (_mean(np.abs(gx)) + _mean(np.abs(gy))) / 255


def _blob_features(dark: np.ndarray, n: int) -> list[float]:
    """Connected components of the darker (stained) pixels: cells are many, mid-sized, round and separate."""
    count, _, stats, _ = cv2.connectedComponentsWithStats(dark, connectivity=8)
    stats = stats[1:]
    stats = stats[stats[:, cv2.CC_STAT_AREA] >= 4]
    fg = float(dark.mean() / 255.0)
    if len(stats) == 0:
        return [fg, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    area = stats[:, cv2.CC_STAT_AREA].astype(np.float64)
    bw = stats[:, cv2.CC_STAT_WIDTH].astype(np.float64)
    bh = stats[:, cv2.CC_STAT_HEIGHT].astype(np.float64)
    return [
        fg,
        float(np.log1p(len(stats) * 1000.0 / n)),
        float(area.max() / max(area.sum(), 1.0)),
        float(np.log1p(np.median(area) * 1000.0 / n)),
        float(np.average(area / (bw * bh), weights=area)),
        float(np.average(np.minimum(bw, bh) / np.maximum(bw, bh), weights=area)),
        float((area < 0.0005 * n).mean()),
    ]


def content_features(small: np.ndarray, hsv: np.ndarray | None = None) -> np.ndarray:
    """Cheap colour, texture and blob statistics of a downscaled RGB image (see :data:`FEATURE_NAMES`).

    Integer inputs and exact sums throughout, so the same image gives the same features, bit for bit.
    """
    hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV) if hsv is None else hsv
    lab = cv2.cvtColor(small, cv2.COLOR_RGB2LAB)
    n = small.shape[0] * small.shape[1]
    hue, sat, val = hsv[:, :, 0].ravel(), hsv[:, :, 1].ravel(), hsv[:, :, 2].ravel()
    f: list[float] = []
    # colour: where the saturated pixels sit on the hue circle, and how saturated / bright the image is
    f += list(np.bincount(np.minimum(hue // 15, 11), weights=sat / 255.0, minlength=12) / n)
    f += list(np.bincount(sat >> 5, minlength=8) / n)
    f += list(np.bincount(val >> 5, minlength=8) / n)
    L, a, b = lab[:, :, 0], lab[:, :, 1], lab[:, :, 2]
    for k, ch in enumerate((L, a, b)):
        mean, std, q = _histogram_stats(ch, (0.05, 0.5, 0.95, 0.2, 0.8))
        f += [mean / 255, std / 255, *(q[:3] / 255)]
        if k == 0:
            lo, hi = q[3], q[4]
    # the background (brightest fifth) and the stain (darkest fifth): their chemistry, not just their average
    bright, dark = L >= hi, L <= lo
    f += [(_mean(a[bright]) - 128) / 128, (_mean(b[bright]) - 128) / 128, float(L[bright].std(dtype=np.float64)) / 255]
    f += [(_mean(a[dark]) - 128) / 128, (_mean(b[dark]) - 128) / 128, _mean(L[dark]) / 255]
    # texture: smear photographs are smooth-edged blobs with sensor noise; drawings and UIs are flat, axis-aligned
    gx, gy, mag = _gradient(L)
    mag_mean = float(mag.mean())
    mag8 = np.minimum(mag * 0.25, 255).astype(np.uint8)
    _, _, q = _histogram_stats(mag8, (0.5, 0.9, 0.99))
    f += [mag_mean / 255, float(mag.std()) / 255, *(q * 4 / 255), float((mag < 2.0).mean())]
    lap = cv2.Laplacian(L, cv2.CV_16S, ksize=1)
    f += [float((lap == 0).mean()), _mean(np.abs(lap)) / 255]
    half = cv2.resize(L, (max(2, L.shape[1] // 2), max(2, L.shape[0] // 2)), interpolation=cv2.INTER_AREA)
    f += [float(np.log((mag_mean + 1.0) / (_gradient(half)[2].mean() + 1.0)))]
    f += [float(np.count_nonzero(mag >= 100.0)) / n]  # share of sharp edges
    strong = mag > max(8.0, q[1] * 4.0)  # the strongest tenth of the edges
    ax, ay = np.abs(gx[strong]), np.abs(gy[strong])
    f += [float((5 * np.minimum(ax, ay) < np.maximum(ax, ay)).mean()) if ax.size else 0.0]
    f += [_l1_gradient(a), _l1_gradient(b)]
    # palette: drawings, screenshots and flat fills use few colours
    q4 = (small >> 4).astype(np.int32)
    counts = np.bincount(((q4[:, :, 0] << 8) | (q4[:, :, 1] << 4) | q4[:, :, 2]).ravel(), minlength=4096)
    top = np.sort(counts)[-3:]
    f += [float(np.count_nonzero(counts)) / min(n, 4096), float(top.sum()) / n, float(top.max()) / n]
    # blobs: Otsu on lightness separates cells from background in a smear
    level, mask = cv2.threshold(L, 0, 255, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
    fg_sel = mask > 0
    sep = (_mean(L[~fg_sel]) - _mean(L[fg_sel])) / 255 if 0 < fg_sel.sum() < n else 0.0
    f += [float(level) / 255, sep]
    f += _blob_features(mask, n)
    h2 = hsv[:, :, 0]
    nucleus = (fg_sel & (h2 >= 110) & (h2 <= 170) & (hsv[:, :, 1] >= 40)).astype(np.uint8)
    n_nuc = cv2.connectedComponents(nucleus, connectivity=8)[0] - 1
    f += [float(nucleus.mean()), float(np.log1p(n_nuc * 1000.0 / n))]
    return np.asarray(f, np.float64)


# --- the gate -------------------------------------------------------------------------------------------------------
def run_checks(rgb: np.ndarray, preset: Preset) -> ValidationResult:
    """Run a preset's pixel-level layers (colour, then content) on a decoded 8-bit RGB image.

    Every check of the preset is computed and reported; the verdict's code is the first failure in layer order.
    """
    small = rgb if preset.analysis_side is None else analysis_image(rgb, preset.analysis_side)
    hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)
    checks = colour_checks(hsv, preset.colour)
    if preset.content is not None:
        score = preset.content.score(content_features(small, hsv))
        checks["smear_score"] = Check(score, preset.content.threshold, score >= preset.content.threshold)
    for name, code in LAYER_ORDER:
        if name in checks and not checks[name].passed:
            return ValidationResult(False, code, failure_message(code, checks), checks, preset.validator)
    return ValidationResult(True, None, None, checks, preset.validator)


def run_gate(rgb: np.ndarray, preset: Preset) -> ValidationResult:
    """The whole gate on a decoded image: the capture layer around the colour and content layers (:func:`run_checks`).

    Returns:
        The verdict; a usable smear's carries ``view``, what the model is to read: a square field at the training
        images' scale (``CaptureSettings.field_px``), or the image as it is where the preset has no capture layer.
    """
    s = preset.capture
    if s is None:  # the paper preset, or a validator file without capture thresholds: the image as it is
        verdict = run_checks(rgb, preset)
        verdict.view = rgb if verdict.valid else None
        return verdict
    field_px = s.field_px
    info: dict = {"mode": "direct"}
    # one small copy (working) for the eyepiece, the exposure levels and the ruler
    rgb, working, eyepiece = capture.field_of_view(rgb)
    if eyepiece:
        info["mode"] = "eyepiece"
    small = working[0]
    level = capture.background_level(small)
    info["background_level"] = round(level, 1)
    if level < s.min_background:  # the colour and content layers' checks come with every refusal, for the record
        return _refuse("underexposed", {"level": level, "need": s.min_background}, preset, info, _checks(rgb, preset))
    dark = capture.dark_level(small)
    clipped = capture.clipped_share(small)
    info.update(dark_level=round(dark, 1), clipped_share=round(clipped, 3))
    washed_out = {"clipped": clipped, "level": dark, "limit": s.max_dark_level}
    if dark > s.max_dark_level:
        return _refuse("overexposed", washed_out, preset, info, _checks(rgb, preset))
    verdict = run_checks(capture.with_background(rgb, level, s.reference_background), preset)
    verdict.capture = info
    if not verdict.valid and clipped >= capture.WASHED_OUT_SHARE:
        rule = preset.colour
        if capture.washed_out_stain(rgb, (rule.hue_low, rule.hue_high)):
            return _refuse("overexposed", washed_out, preset, info, verdict.checks)  # the lamp, not the subject
    if not verdict.valid and verdict.code != "not_blood_smear":
        return verdict  # the colour layer: nothing here is a smear to measure
    diameter = capture.red_cell_diameter(rgb, working)
    ratio = None if diameter is None else diameter / s.red_cell_px
    info["red_cell_diameter_px"] = None if diameter is None else round(diameter, 1)
    info["scale"] = None if ratio is None else round(ratio, 3)
    no_red_cells_limit = s.max_clipped_without_red_cells
    if verdict.valid and diameter is None and no_red_cells_limit is not None and clipped > no_red_cells_limit:
        # a lamp bright enough to clip the red cells away leaves fields the model reads as pale smears of another
        # class (validation fields at x1.5-x2: most answers wrong), and no ruler for their scale either
        values = {"clipped": clipped, "limit": no_red_cells_limit}
        return _refuse("overexposed", values, preset, info, verdict.checks, "overexposed_red_cells")
    if ratio is not None and ratio < s.scale_band[0] and clipped > capture.RULER_MAX_CLIPPED:
        info["ruler"] = "not used: the lamp clipped the red cells' pale parts, which shrinks them"
        ratio = 1.0  # read as taken: neither rescaled nor refused on a reading the exposure made
    if ratio is not None and not s.scale_limits[0] <= ratio <= s.scale_limits[1]:
        if not verdict.valid:
            return verdict
        advice = "high" if ratio > s.scale_limits[1] else "low"
        return _magnification(diameter, ratio, advice, preset, info, verdict)
    if ratio is None:
        view = resize_for_model(rgb, field_px)  # no ruler in this picture: the whole field, as before
    else:
        rescale = not s.scale_band[0] <= ratio <= s.scale_band[1]
        if min(capture.training_shape(rgb, ratio) if rescale else rgb.shape[:2]) < s.min_field_fraction * field_px:
            # blur swells the ruler's reading: a field too small only because of that is out of focus as taken
            if not verdict.valid:
                return verdict
            focus = capture.focus_measure(rgb)
            info["focus"] = round(focus, 3)
            if focus < s.min_focus:
                return _refuse("out_of_focus", {"value": focus, "need": s.min_focus}, preset, info, verdict.checks)
            return _magnification(diameter, ratio, "small", preset, info, verdict)
        if rescale:
            info["rescaled_by"] = round(1.0 / ratio, 3)
            view = capture.training_view(rgb, ratio, field_px, working)
        else:
            view = capture.model_view(rgb, field_px, working)
    focus = capture.focus_measure(view)
    info["focus"] = round(focus, 3)
    if focus < s.min_focus and verdict.valid:  # a smear, and blurred: refocus (a picture that is no smear stays so)
        return _refuse("out_of_focus", {"value": focus, "need": s.min_focus}, preset, info, verdict.checks)
    if verdict.valid:
        verdict.view = view
    return verdict


def _checks(rgb: np.ndarray, preset: Preset) -> dict:
    return run_checks(rgb, preset).checks


def _refuse(
    code: str, values: dict, preset: Preset, info: dict, checks: dict | None = None, message: str | None = None
) -> ValidationResult:
    """A capture verdict: ``code`` with its message (``CAPTURE_MESSAGES[message or code]``) filled from ``values``."""
    text = CAPTURE_MESSAGES[message or code].format(**values)
    return ValidationResult(False, code, text, dict(checks or {}), preset.validator, info)


def scale_span(s: CaptureSettings) -> str:
    """The scales the capture layer rescales, in words: with no fixed upper limit, the field's size is the limit."""
    low, high = s.scale_limits
    if math.isinf(high):
        keeps = f"{s.min_field_fraction:.0%} of the model's side"
        return f"{low:g}x and up, while the rescaled field keeps at least {keeps}"
    return f"{low:g}x to {high:g}x"


def _magnification(diameter: float, ratio: float, advice: str, preset: Preset, info: dict, verdict) -> ValidationResult:
    s = preset.capture
    values = {
        "diameter": diameter,
        "expected": s.red_cell_px,
        "ratio": ratio,
        "span": scale_span(s),
        "advice": MAGNIFICATION_ADVICE[advice],
    }
    return _refuse("magnification_out_of_range", values, preset, info, verdict.checks)


def failure_message(code: str, checks: dict[str, Check]) -> str:
    """The sentence for a failed layer. A content score just short of the threshold (colour passed, since colour
    failures come first) is named an unusual smear, not tissue or a photograph."""
    score = checks.get("smear_score")
    if code == "not_blood_smear" and score is not None and score.value >= score.threshold - UNUSUAL_SMEAR_MARGIN:
        return UNUSUAL_SMEAR_MESSAGE.format(score=score.value, threshold=score.threshold)
    return MESSAGES[code]


def validate_image(rgb: np.ndarray, preset: str = DEFAULT_PRESET) -> ValidationResult:
    """Validate a decoded 8-bit RGB image with a named preset (see :func:`run_gate`).

    Raises:
        ValueError: unknown preset.
    """
    return run_gate(rgb, get_preset(preset))


def validate_bytes(
    data: bytes, preset: str = DEFAULT_PRESET, path: str | Path | None = None
) -> tuple[np.ndarray | None, ValidationResult, float]:
    """Decode then validate (``path``: the calibration file, else the active one). Returns (rgb or None, verdict,
    decode milliseconds); never raises for bad bytes."""
    gate = get_preset(preset, path)
    t0 = time.perf_counter()
    try:
        rgb = decode_image(data)
    except ImageError as exc:
        return (
            None,
            ValidationResult(False, exc.code, exc.message, validator=gate.validator),
            (time.perf_counter() - t0) * 1000,
        )
    decode_ms = (time.perf_counter() - t0) * 1000
    return rgb, run_gate(rgb, gate), decode_ms


def validate_path(path, preset: str = DEFAULT_PRESET) -> ValidationResult:
    """Read a file and validate it; never raises for bad files."""
    try:
        data = read_bytes(path)
    except ImageError as exc:
        return ValidationResult(False, exc.code, exc.message)  # nothing was judged: no validator recorded
    return validate_bytes(data, preset)[1]
