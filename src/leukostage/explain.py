"""Grad-CAM and overlays on the serving path: numpy and OpenCV only, no torch.

The ONNX graph (see :mod:`leukostage.export`) returns the last convolutional layer's activations and, for every
class, Grad-CAM's channel weights (the spatial mean of the exact gradient of the class logit with respect to those
activations), so Grad-CAM here is a weighted sum and a resize.
"""
from __future__ import annotations

import base64
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from .classes import BY_KEY, CLASS_KEYS, class_info
from .imaging import preprocess
from .predict import Predictor

OVERLAY_ALPHA = 0.45  # weight of the heat-map colours in the blend
COLORMAP = cv2.COLORMAP_VIRIDIS  # perceptually uniform, readable in greyscale and by colour-blind readers
METHOD = "Grad-CAM on the last convolutional layer (before its pooling), for the explained class"


class Explanation(NamedTuple):
    heatmap: np.ndarray  # float32 (H, W) of the original image, values in [0, 1]
    class_key: str  # the class whose score the heat map explains
    probabilities: np.ndarray  # float32 (4,), in CLASS_KEYS order


GRADCAM_OUTPUTS = frozenset({"features", "weights"})  # the graph outputs Grad-CAM needs (see leukostage.export)


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
    return CLASS_KEYS.index(class_info(class_key).key)


def explain_image(predictor: Predictor, rgb: np.ndarray, class_key: str | None = None,
                  outputs: dict[str, np.ndarray] | None = None) -> Explanation:
    """Grad-CAM for one 8-bit RGB image at its original resolution.

    Args:
        predictor: a loaded model whose graph returns ``features`` and ``weights``.
        rgb: (H, W, 3) uint8, as decoded by :func:`leukostage.imaging.decode_image`.
        class_key: the class to explain (default: the predicted class).
        outputs: the graph's outputs for this image (batch of one) when the caller already ran it.

    Raises:
        ValueError: unknown class key, or a model exported without the Grad-CAM outputs.
    """
    if class_key is not None:
        class_info(class_key)  # fail before inference, with the list of valid keys
    missing = GRADCAM_OUTPUTS - set(predictor.outputs)
    if missing:
        raise ValueError(
            f"model {predictor.path} has no {', '.join(sorted(missing))} output; re-export it with leukostage export"
        )
    out = outputs if outputs is not None else predictor.run_all(preprocess(rgb, predictor.image_size)[None])
    probs = out["probabilities"][0]
    k = resolve_class(class_key, probs)
    cam = gradcam(out["features"][0], out["weights"][0, k])
    return Explanation(upsample(cam, rgb.shape[0], rgb.shape[1]), CLASS_KEYS[k], probs)


def overlay(rgb: np.ndarray, heat: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """Blend a [0, 1] heat map, coloured with a perceptual colour map, over the image (same H x W).

    Raises:
        ValueError: the heat map's size differs from the image's, or alpha is outside [0, 1].
    """
    if heat.shape != rgb.shape[:2]:
        raise ValueError(f"heat map {heat.shape} must match the image size {rgb.shape[:2]}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    levels = np.round(np.clip(heat, 0.0, 1.0) * 255).astype(np.uint8)
    colours = cv2.cvtColor(cv2.applyColorMap(levels, COLORMAP), cv2.COLOR_BGR2RGB)
    blend = (1.0 - alpha) * rgb.astype(np.float32) + alpha * colours.astype(np.float32)
    return np.clip(np.round(blend), 0, 255).astype(np.uint8)


def png_bytes(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def overlay_png_base64(rgb: np.ndarray, heat: np.ndarray, alpha: float = OVERLAY_ALPHA) -> str:
    """The overlay as base64 PNG text, ready for JSON or a ``data:image/png;base64,`` URL."""
    return base64.b64encode(png_bytes(overlay(rgb, heat, alpha))).decode("ascii")


def explain_rgb(predictor: Predictor, rgb: np.ndarray, class_key: str | None = None,
                alpha: float = OVERLAY_ALPHA, outputs: dict[str, np.ndarray] | None = None) -> dict:
    """The JSON-ready explanation the web API adds to a result when asked (``?explain=1``).

    Raises:
        ValueError: unknown class key (lists the valid ones).
    """
    exp = explain_image(predictor, rgb, class_key, outputs)
    info = BY_KEY[exp.class_key]
    return {
        "method": METHOD,
        "class": exp.class_key,
        "display_class": info.display_name,
        "dataset_label": info.dataset_label,
        "media_type": "image/png",
        "overlay_png_base64": overlay_png_base64(rgb, exp.heatmap, alpha),
    }


def save_explanation(out_dir: str | Path, stem: str, rgb: np.ndarray, heat: np.ndarray,
                     alpha: float = OVERLAY_ALPHA) -> tuple[Path, Path]:
    """Write ``<stem>.gradcam.png`` (overlay at original size) and ``<stem>.gradcam.npy`` (float32 H x W)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png, npy = out / f"{stem}.gradcam.png", out / f"{stem}.gradcam.npy"
    png.write_bytes(png_bytes(overlay(rgb, heat, alpha)))
    np.save(npy, np.asarray(heat, np.float32))
    return png, npy
