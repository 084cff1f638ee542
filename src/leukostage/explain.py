"""Grad-CAM and overlays on the serving path: numpy and OpenCV only, no torch.

The ONNX graph (see :mod:`leukostage.training.export`) returns the last convolutional layer's activations and, for every
class, Grad-CAM's channel weights (the spatial mean of the exact gradient of the class logit with respect to those
activations), so Grad-CAM here is a weighted sum and a resize.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from .classes import BY_KEY, CLASS_KEYS, parse_class
from .imaging import cap_longest_side, capped_size, preprocess
from .predict import Predictor

# How the heat map is drawn (web overlay, CLI PNG and the page's legend all read these).
# Romanowsky stains colour nuclei purple and cytoplasm pink-blue on a pale background; a colour map that starts dark
# purple (viridis) tints the whole picture purple. These stops stay in the green-to-yellow hues, opposite the stain on
# the colour wheel, and rise in lightness (readable in greyscale); low attention is left transparent instead.
HEAT_STOPS: tuple[tuple[float, str], ...] = ((0.0, "#0b6e4f"), (0.5, "#3fbf3f"), (1.0, "#ffe600"))
TRANSPARENT_BELOW = 0.2  # heat under this is not drawn at all: the image shows through unchanged
MAX_ALPHA = 0.8  # opacity of the strongest attention (alpha rises as the square root, so moderate attention shows)
EXPLAIN_MAX_SIDE = 1024  # longest side of any overlay (web and CLI): bounds time, memory and response size
METHOD = "Grad-CAM on the last convolutional layer (before its pooling), for the explained class"


class Explanation(NamedTuple):
    heatmap: np.ndarray  # float32 (H, W) of the original image (or its capped size), values in [0, 1]
    class_key: str  # the class whose score the heat map explains
    probabilities: np.ndarray  # float32 (4,), in CLASS_KEYS order


GRADCAM_OUTPUTS = frozenset(
    {"features", "weights"}
)  # the graph outputs Grad-CAM needs (see leukostage.training.export)


def gradcam(features: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Grad-CAM maps from feature maps and the gradient of one class score with respect to them.

    alpha_c = spatial mean of the gradient of channel c; map = relu(sum_c alpha_c * A_c), scaled to max 1.
    A map with no positive evidence stays all zero rather than dividing by zero.

    Args:
        features: (..., C, h, w) activations of the explained layer.
        weights: (..., C), alpha: the spatial mean of d(class logit) / d(features), as the graph returns it.

    Returns:
        float32 (..., h, w) in [0, 1].
    """
    features = np.asarray(features, np.float32)
    weights = np.asarray(weights, np.float32)
    if features.ndim < 3 or features.shape[:-2] != weights.shape:
        raise ValueError(
            f"features {features.shape} need one weight per channel, (..., C); got weights {weights.shape}"
        )
    cam = np.maximum((weights[..., None, None] * features).sum(axis=-3), 0.0)
    peak = cam.max(axis=(-2, -1), keepdims=True)
    return np.divide(cam, peak, out=np.zeros_like(cam), where=peak > 0).astype(np.float32)


def upsample(cam: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a (h, w) map to the original image size, kept in [0, 1]."""
    heat = cv2.resize(np.asarray(cam, np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(heat, 0.0, 1.0).astype(np.float32)


def resolve_class(class_key: str | None, probabilities: np.ndarray) -> int:
    """Index of the class to explain: the given key, else the predicted (top) class.

    Raises:
        ValueError: an unknown key; the message lists the valid keys.
    """
    if class_key is None:
        return int(np.argmax(probabilities))
    return CLASS_KEYS.index(parse_class(class_key).key)


def explain_image(
    predictor: Predictor,
    rgb: np.ndarray,
    class_key: str | None = None,
    outputs: dict[str, np.ndarray] | None = None,
    max_side: int | None = None,
) -> Explanation:
    """Grad-CAM for one 8-bit RGB image, at its original resolution or at most ``max_side`` on its longest side.

    Args:
        predictor: a loaded model whose graph returns ``features`` and ``weights``.
        rgb: (H, W, 3) uint8, as decoded by :func:`leukostage.imaging.decode_image`.
        class_key: the class to explain (key, display name or dataset label; default: the predicted class).
        outputs: the graph's outputs for this image (batch of one) when the caller already ran it.

    Raises:
        ValueError: unknown class key, or a model exported without the Grad-CAM outputs.
    """
    if class_key is not None:
        parse_class(class_key)  # fail before inference, with the list of valid keys
    missing = GRADCAM_OUTPUTS - set(predictor.outputs)
    if missing:
        raise ValueError(
            f"model {predictor.path} has no {', '.join(sorted(missing))} output; re-export it with leukostage export"
        )
    out = outputs if outputs is not None else predictor.run_all(preprocess(rgb, predictor.image_size)[None])
    probs = out["probabilities"][0]
    k = resolve_class(class_key, probs)
    cam = gradcam(out["features"][0], out["weights"][0, k])
    height, width = rgb.shape[:2] if max_side is None else capped_size(*rgb.shape[:2], max_side)
    return Explanation(upsample(cam, height, width), CLASS_KEYS[k], probs)


def heat_colours(levels: np.ndarray) -> np.ndarray:
    """RGB colours (..., 3) float32 for heat values in [0, 1], interpolated between ``HEAT_STOPS``."""
    xs = np.array([x for x, _ in HEAT_STOPS], np.float32)
    rgb = np.array([[int(c[i : i + 2], 16) for i in (1, 3, 5)] for _, c in HEAT_STOPS], np.float32)
    flat = np.clip(np.asarray(levels, np.float32), 0.0, 1.0).ravel()
    out = np.stack([np.interp(flat, xs, rgb[:, ch]) for ch in range(3)], axis=-1)
    return out.reshape(*np.shape(levels), 3).astype(np.float32)


def heat_alpha(heat: np.ndarray, max_alpha: float = MAX_ALPHA) -> np.ndarray:
    """Per-pixel opacity from the map: 0 below ``TRANSPARENT_BELOW``, rising (square root) to ``max_alpha`` at 1."""
    ramp = (np.asarray(heat, np.float32) - TRANSPARENT_BELOW) / (1.0 - TRANSPARENT_BELOW)
    return (max_alpha * np.sqrt(np.clip(ramp, 0.0, 1.0))).astype(np.float32)


def overlay(rgb: np.ndarray, heat: np.ndarray, max_alpha: float = MAX_ALPHA) -> np.ndarray:
    """Draw a [0, 1] heat map over the image (same H x W): colour from ``HEAT_STOPS``, opacity from the map, so
    low attention leaves the image untouched.

    Raises:
        ValueError: the heat map's size differs from the image's, or max_alpha is outside [0, 1].
    """
    if heat.shape != rgb.shape[:2]:
        raise ValueError(f"heat map {heat.shape} must match the image size {rgb.shape[:2]}")
    if not 0.0 <= max_alpha <= 1.0:
        raise ValueError(f"max_alpha must be in [0, 1], got {max_alpha}")
    alpha = heat_alpha(heat, max_alpha)[..., None]
    blend = (1.0 - alpha) * rgb.astype(np.float32) + alpha * heat_colours(heat)
    return np.clip(np.round(blend), 0, 255).astype(np.uint8)


def colour_scale(height: int) -> np.ndarray:
    """A legend strip (height, w, 3) to put beside an overlay: the colour bar (high at the top, fading to the image
    below ``TRANSPARENT_BELOW``, drawn over white) labelled "high" and "low"."""
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, max(0.35, height / 700)
    thick = max(1, round(scale * 1.5))
    (tw, th), _ = cv2.getTextSize("high", font, scale, thick)
    margin, bar_w = max(4, height // 60), max(10, height // 30)
    width = margin * 3 + bar_w + tw
    strip = np.full((height, width, 3), 255, np.uint8)
    top, bottom = margin + th, height - margin - th
    if bottom - top >= 2:
        levels = np.linspace(1.0, 0.0, bottom - top, dtype=np.float32)[:, None].repeat(bar_w, axis=1)
        white = np.full((*levels.shape, 3), 255, np.uint8)
        strip[top:bottom, margin : margin + bar_w] = overlay(white, levels)
        cv2.rectangle(strip, (margin - 1, top - 1), (margin + bar_w, bottom), (90, 90, 90), 1)
    x = margin * 2 + bar_w
    cv2.putText(strip, "high", (x, top + th // 2), font, scale, (0, 0, 0), thick, cv2.LINE_AA)
    cv2.putText(strip, "low", (x, bottom), font, scale, (0, 0, 0), thick, cv2.LINE_AA)
    return strip


def render(rgb: np.ndarray, heat: np.ndarray, with_scale: bool, max_side: int = EXPLAIN_MAX_SIDE) -> np.ndarray:
    """The picture of an explanation, web and CLI alike: the overlay at most ``max_side`` pixels on its longest
    side, and with ``with_scale`` the colour scale beside it (the web page draws its own, in HTML)."""
    small = cap_longest_side(rgb, max_side)
    if heat.shape != small.shape[:2]:  # a full-size map (the CLI keeps one for its .npy): shrink it like the image
        heat = np.clip(cv2.resize(heat, small.shape[1::-1], interpolation=cv2.INTER_AREA), 0.0, 1.0)
    picture = overlay(small, heat)
    return np.hstack([picture, colour_scale(picture.shape[0])]) if with_scale else picture


def png_bytes(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def overlay_png_base64(rgb: np.ndarray, heat: np.ndarray, with_scale: bool = False) -> str:
    """The rendered explanation as base64 PNG text, ready for JSON or a ``data:image/png;base64,`` URL."""
    return base64.b64encode(png_bytes(render(rgb, heat, with_scale))).decode("ascii")


def colour_scale_info(levels: int = 11) -> dict:
    """How the overlay is coloured, for API clients and the page's colour scale (one source: the constants above):
    the stops, the transparency rule, and ``ramp``, the drawn colour and opacity sampled at ``levels`` heat values."""
    xs = np.linspace(0.0, 1.0, levels, dtype=np.float32)
    colours = np.round(heat_colours(xs)).astype(int)
    ramp = [
        {"at": round(float(x), 3), "colour": "#{:02x}{:02x}{:02x}".format(*c), "alpha": round(float(a), 3)}
        for x, c, a in zip(xs, colours, heat_alpha(xs))
    ]
    return {
        "stops": [{"at": x, "colour": c} for x, c in HEAT_STOPS],
        "transparent_below": TRANSPARENT_BELOW,
        "max_alpha": MAX_ALPHA,
        "ramp": ramp,
    }


def explain_rgb(
    predictor: Predictor, rgb: np.ndarray, class_key: str | None = None, outputs: dict[str, np.ndarray] | None = None
) -> dict:
    """The JSON-ready explanation the web API adds to a result when asked (``?explain=1``).

    The heat map is computed and drawn at most ``EXPLAIN_MAX_SIDE`` pixels on a side, never at the upload's full
    size: a 49-megapixel photo costs the same as a 1-megapixel one here.

    Raises:
        ValueError: unknown class key (lists the valid ones).
    """
    exp = explain_image(predictor, rgb, class_key, outputs, max_side=EXPLAIN_MAX_SIDE)
    info = BY_KEY[exp.class_key]
    height, width = exp.heatmap.shape
    return {
        "method": METHOD,
        "class": exp.class_key,
        "display_class": info.display_name,
        "dataset_label": info.dataset_label,
        "media_type": "image/png",
        "width": width,
        "height": height,
        "colour_scale": colour_scale_info(),
        "overlay_png_base64": overlay_png_base64(rgb, exp.heatmap),
    }


def save_explanation(out_dir: str | Path, stem: str, rgb: np.ndarray, heat: np.ndarray) -> tuple[Path, Path]:
    """Write ``<stem>.gradcam.png`` (the overlay, at most ``EXPLAIN_MAX_SIDE`` on a side, with its colour scale)
    and ``<stem>.gradcam.npy`` (the map itself, float32, at the heat map's full resolution)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png, npy = out / f"{stem}.gradcam.png", out / f"{stem}.gradcam.npy"
    png.write_bytes(png_bytes(render(rgb, heat, with_scale=True)))
    np.save(npy, np.asarray(heat, np.float32))
    return png, npy
