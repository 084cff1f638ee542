"""The input gate: is this a usable blood smear photograph? Layered checks, each with a code and a sentence.

1. decoding (imaging.read_header / decode_image): unreadable, unsupported_format, animated, too_small, too_large
2. colour (seed paper section 2.5): saturation, brightness, stain-hue ratio; presets ``paper`` and ``default``
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import cv2
import numpy as np

from .imaging import ImageError, decode_image, read_bytes

PRESETS = ("default", "paper")
DEFAULT_PRESET = "default"


@dataclass(frozen=True)
class ColourRule:
    """Thresholds on OpenCV HSV statistics (H in 0-179, S and V in 0-255)."""

    min_saturation: float
    min_brightness: float
    max_brightness: float
    hue_low: int
    hue_high: int
    min_stain_ratio: float


RULES: dict[str, ColourRule] = {
    # Code Snippet 4 of the seed paper, verbatim.
    "paper": ColourRule(20.0, 30.0, 240.0, 120, 180, 0.05),
    # Provisional: to be calibrated on genuine smears.
    "default": ColourRule(20.0, 30.0, 250.0, 120, 180, 0.05),
}


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

    def checks_dict(self) -> dict:
        return {k: {"value": round(c.value, 4), "threshold": c.threshold, "passed": c.passed} for k, c in self.checks.items()}

    def to_dict(self) -> dict:
        return {"valid": self.valid, "code": self.code, "reason": self.reason, "checks": self.checks_dict()}


def colour_checks(rgb: np.ndarray, rule: ColourRule) -> ValidationResult:
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    sat = float(hsv[:, :, 1].mean())
    val = float(hsv[:, :, 2].mean())
    hue = hsv[:, :, 0]
    ratio = float(((hue >= rule.hue_low) & (hue <= rule.hue_high)).mean())
    checks = {
        "saturation": Check(sat, rule.min_saturation, sat >= rule.min_saturation),
        "brightness": Check(val, [rule.min_brightness, rule.max_brightness],
                            rule.min_brightness <= val <= rule.max_brightness),
        "stain_ratio": Check(ratio, rule.min_stain_ratio, ratio >= rule.min_stain_ratio),
    }
    if not checks["saturation"].passed:
        return ValidationResult(False, "low_saturation", "Image lacks colour saturation", checks)
    if not checks["brightness"].passed:
        return ValidationResult(False, "abnormal_brightness", "Abnormal brightness levels", checks)
    if not checks["stain_ratio"].passed:
        return ValidationResult(False, "no_stain_profile", "No blood smear colour profile detected", checks)
    return ValidationResult(True, None, None, checks)


def validate_image(rgb: np.ndarray, preset: str = DEFAULT_PRESET) -> ValidationResult:
    """Run the pixel-level layers on a decoded 8-bit RGB image."""
    if preset not in RULES:
        raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    return colour_checks(rgb, RULES[preset])


def validate_bytes(data: bytes, preset: str = DEFAULT_PRESET) -> tuple[np.ndarray | None, ValidationResult, float]:
    """Decode then validate. Returns (rgb or None, verdict, decode milliseconds); never raises for bad bytes."""
    t0 = time.perf_counter()
    try:
        rgb = decode_image(data)
    except ImageError as exc:
        return None, ValidationResult(False, exc.code, exc.message), (time.perf_counter() - t0) * 1000
    decode_ms = (time.perf_counter() - t0) * 1000
    return rgb, validate_image(rgb, preset), decode_ms


def validate_path(path, preset: str = DEFAULT_PRESET) -> ValidationResult:
    """Read a file and validate it; never raises for bad files."""
    try:
        data = read_bytes(path)
    except ImageError as exc:
        return ValidationResult(False, exc.code, exc.message)
    return validate_bytes(data, preset)[1]
