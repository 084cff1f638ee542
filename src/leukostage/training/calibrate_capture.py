"""The capture layer's thresholds (issue 18), chosen on the blocked split and written into a validator file.

Each number comes from a rule written down before it was computed, on images the model never saw in training where
a threshold separates answers from refusals:

- ``field_px``, ``red_cell_px``, ``reference_background``: the training part's fields (their side, their median
  red-cell diameter, their median background level): the scale and light the model learned.
- ``scale_band``: the 0.5th to 99.5th percentile of the training part's diameters over their median: a scale the
  training fields almost never had is rescaled to the training scale; inside it the field is left to the model
  (trained at magnifications x0.7 to x1.5 on top), so that the ruler's own error never moves an ordinary field.
- ``min_focus``: the 0.5th percentile of the validation part's fields defocused by 1.5 px (a mild defocus, which
  must be answered); below it a field is out of focus.
- ``max_dark_level``: the 99.5th percentile of the validation part's fields at exposure x1.35 (the brightest the
  model trained on); a darkest hundredth brighter than that is washed out.
- ``max_clipped_without_red_cells``: the 99.5th percentile of the validation part's clipped share at exposure x1.2
  (the brightest lamp of an ordinary day, issue 18's mild level); a picture more clipped than that in which the ruler
  finds no red cell is washed out (the lamp has clipped them away, and the model reads such fields as pale smears).
- ``min_background`` (a quarter of the reference background: the stain's contrast then spans fewer than about 40
  grey levels), ``scale_limits`` (from 0.5: below, a rescale would invent detail; no fixed upper limit, null, since
  shrinking a picture invents nothing: a high-resolution camera's field is read at the training scale) and
  ``min_field_fraction`` (half the training side: a field that shrinks below it has too few cells, whatever its
  scale) are limits of the method, not fitted.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from .. import capture
from ..imaging import load_image
from .data import discover, make_split

SPLIT = "blocked"
MILD_BLUR_PX = 1.5
BRIGHTEST_TRAINED_EXPOSURE = 1.35
BRIGHTEST_ORDINARY_EXPOSURE = 1.2
SCALE_LIMITS = (0.5, None)  # (lowest, highest) measured / training scale; None: the field size decides
MIN_FIELD_FRACTION = 0.5
UNDEREXPOSED_SHARE = 0.25


def _blurred(rgb: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(rgb.astype(np.float32), (0, 0), MILD_BLUR_PX).round().clip(0, 255).astype(np.uint8)


def _brighter(rgb: np.ndarray, gain: float = BRIGHTEST_TRAINED_EXPOSURE) -> np.ndarray:
    return (rgb.astype(np.float32) * gain).clip(0, 255).astype(np.uint8)


def fit_capture(data: str | Path, seed: int = 42, progress: bool = False) -> dict:
    """The ``capture`` section of a validator file (see the module docstring for each rule)."""
    from tqdm import tqdm

    ds = discover(data)
    split = make_split(ds, SPLIT, seed)
    train = [load_image(ds.paths[i]) for i in tqdm(split["train"], desc="training fields", disable=not progress)]
    val = [load_image(ds.paths[i]) for i in tqdm(split["val"], desc="validation fields", disable=not progress)]
    diameters = np.array([d for d in map(capture.red_cell_diameter, train) if d is not None])
    red_cell_px = float(np.median(diameters))
    band = np.quantile(diameters / red_cell_px, [0.005, 0.995])
    reference = float(np.median([capture.background_level(im) for im in train]))
    sides = {im.shape[0] for im in train} | {im.shape[1] for im in train}
    if len(sides) != 1:
        raise ValueError(f"the training fields are not all one square size ({sorted(sides)}); the scale is undefined")
    focus = [capture.focus_measure(_blurred(im)) for im in val]
    dark = [capture.dark_level(_brighter(im)) for im in val]
    clipped = [capture.clipped_share(_brighter(im, BRIGHTEST_ORDINARY_EXPOSURE)) for im in val]
    return {
        "field_px": sides.pop(),
        "red_cell_px": round(red_cell_px, 2),
        "scale_band": [round(float(band[0]), 3), round(float(band[1]), 3)],
        "scale_limits": list(SCALE_LIMITS),
        "min_field_fraction": MIN_FIELD_FRACTION,
        "min_focus": round(float(np.quantile(focus, 0.005)), 4),
        "min_background": round(UNDEREXPOSED_SHARE * reference, 1),
        "reference_background": round(reference, 1),
        "max_dark_level": round(float(np.quantile(dark, 0.995)), 1),
        "max_clipped_without_red_cells": round(float(np.quantile(clipped, 0.995)), 3),
        "derivation": {
            "split": SPLIT,
            "seed": seed,
            "fingerprint": ds.fingerprint,
            "training_fields": len(train),
            "fields_measured": int(diameters.size),
            "validation_fields": len(val),
            "rules": __doc__.split("\n\n", 1)[1].strip(),
        },
    }


def write_capture(validator_in: str | Path, out: str | Path, section: dict) -> Path:
    """A copy of ``validator_in`` with its ``capture`` section replaced by ``section``."""
    doc = json.loads(Path(validator_in).read_text())
    doc["capture"] = section
    out = Path(out)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    return out
