"""Pictures that are not blood smears, made by code: the negatives the input validator is calibrated and tested on.

Each generator is a function of a seeded ``numpy.random.Generator`` (and, for derived kinds, of source pictures), so
the calibration set and the tests are rebuilt bit-for-bit from a seed instead of living in the repository as files.
Real sources (scikit-image's bundled pictures, the two tissue images in ``not_blood/``, genuine smears to derive
greyscale or hue-shifted versions from) are split into a ``calibration`` part and a ``heldout`` part, so what the
validator is scored on was never seen while fitting it. Training/test code only: scikit-image is imported lazily.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..imaging import STAIN_BASIS, load_image, to_unit_range

PARTS = ("calibration", "heldout")
# Table 7 of the seed paper: the categories its validator is said to reject.
TABLE7 = ("landscape", "text_screenshot", "blank_white", "dark", "greyscale_microscopy", "random_colour", "photograph")
# The ones a colour rule takes for a smear (issue 3).
HARD = ("tissue_he", "tissue_ihc", "tissue_synthetic", "purple_photo", "flat_lavender", "purple_drawing")
# Beyond both lists: smears and photos whose hues were rotated far from any Romanowsky stain.
EXTRA = ("hue_shifted",)
CATEGORIES = TABLE7 + HARD + EXTRA

# scikit-image pictures that load without a network, split by source so held-out pictures are unseen.
PHOTOS = {
    "calibration": ("astronaut", "coffee", "rocket", "retina"),
    "heldout": ("chelsea", "stereo_motorcycle", "hubble_deep_field"),
}
TEXTURES = {
    "calibration": ("camera", "brick", "grass", "coins", "moon"),
    "heldout": ("gravel", "clock", "text", "microaneurysms"),
}
DOCUMENTS = {"calibration": ("page",), "heldout": ("text",)}

# Optical densities per RGB channel for rendering stained tissue by Beer-Lambert (the rows of the stain basis).
HAEMATOXYLIN, EOSIN, DAB = STAIN_BASIS


@dataclass(frozen=True)
class Sources:
    """Real pictures that some generators derive from; one instance per part."""

    photos: tuple[np.ndarray, ...] = ()  # RGB photographs
    textures: tuple[np.ndarray, ...] = ()  # greyscale uint8 pictures
    documents: tuple[np.ndarray, ...] = ()  # greyscale scans of text
    microscopy: tuple[np.ndarray, ...] = ()  # greyscale microscopy (unstained)
    he: tuple[np.ndarray, ...] = ()  # RGB H&E tissue
    ihc: tuple[np.ndarray, ...] = ()  # RGB IHC tissue
    smears: tuple[np.ndarray, ...] = ()  # genuine smears (RGB) to derive unstained / hue-shifted versions from


def _half(img: np.ndarray, part: str) -> np.ndarray:
    """Left half for calibration, right half for held-out: disjoint pixels when one picture must serve both."""
    w = img.shape[1] // 2
    return np.ascontiguousarray(img[:, :w] if part == "calibration" else img[:, w:])


def _skimage(name: str) -> np.ndarray:
    from skimage import data as skdata

    img = getattr(skdata, name)()
    if isinstance(img, tuple):  # stereo_motorcycle: (left, right, disparity)
        img = img[0]
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, :3]
    return np.ascontiguousarray(img.astype(np.uint8))


def load_sources(part: str, data_dir: str | Path | None = None, smears: tuple[np.ndarray, ...] = ()) -> Sources:
    """The real pictures of one part. Tissue comes from ``<data_dir>/not_blood`` (scikit-image's IHC otherwise).

    Raises:
        ValueError: unknown part.
    """
    if part not in PARTS:
        raise ValueError(f"unknown part {part!r}; expected one of {', '.join(PARTS)}")
    he: tuple[np.ndarray, ...] = ()
    ihc = (_skimage("immunohistochemistry"),)
    if data_dir is not None and (Path(data_dir) / "not_blood").is_dir():
        folder = Path(data_dir) / "not_blood"
        he = tuple(load_image(p) for p in sorted(folder.glob("he_*")))
        ihc = tuple(load_image(p) for p in sorted(folder.glob("ihc_*"))) or ihc
    return Sources(
        photos=tuple(_skimage(n) for n in PHOTOS[part]),
        textures=tuple(_skimage(n) for n in TEXTURES[part]),
        documents=tuple(_skimage(n) for n in DOCUMENTS[part]),
        microscopy=(_half(_skimage("cell"), part),),
        he=tuple(_half(x, part) for x in he),
        ihc=tuple(_half(x, part) for x in ihc),
        smears=tuple(smears),
    )


# --- small helpers --------------------------------------------------------------------------------------------------
def _size(rng: np.random.Generator) -> tuple[int, int]:
    """A plausible upload size (height, width): 120 to 800 pixels, portrait, square or landscape."""
    w = int(rng.integers(160, 800))
    h = int(np.clip(w * rng.choice([0.5, 0.75, 1.0, 1.0, 1.33]), 120, 800))
    return h, w


def _fbm(rng: np.random.Generator, h: int, w: int, octaves: int = 5, base: int = 4) -> np.ndarray:
    """Smooth fractal noise in [0, 1]: clouds, terrain, tissue texture."""
    sh, sw = min(h, 256), min(w, 256)  # build small, upsample once: the finest octave is far below 256 cells
    out = np.zeros((sh, sw), np.float32)
    amp = 1.0
    for o in range(octaves):
        cells = base * 2**o
        grid = rng.random((cells, cells)).astype(np.float32)
        out += amp * cv2.resize(grid, (sw, sh), interpolation=cv2.INTER_CUBIC)
        amp *= 0.5
    out = cv2.resize(out, (w, h), interpolation=cv2.INTER_LINEAR) if (sh, sw) != (h, w) else out
    return (out - out.min()) / max(float(out.max() - out.min()), 1e-6)


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def _noise(img: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    return _to_u8(img.astype(np.float32) + rng.normal(0, sigma, img.shape).astype(np.float32)) if sigma else img


def _maybe_jpeg(img: np.ndarray, rng: np.random.Generator, p: float = 0.4) -> np.ndarray:
    """Round-trip through JPEG sometimes: uploads are usually compressed."""
    if rng.random() >= p:
        return img
    ok, buf = cv2.imencode(
        ".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(60, 96))]
    )
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _grey_rgb(g: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(g, cv2.COLOR_GRAY2RGB)


def _crop(img: np.ndarray, rng: np.random.Generator, min_frac: float = 0.4) -> np.ndarray:
    """A random crop (at least ``min_frac`` of each side), flipped or rotated, resized to an upload size."""
    h, w = img.shape[:2]
    ch = int(h * rng.uniform(min_frac, 1.0))
    cw = int(w * rng.uniform(min_frac, 1.0))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    out = np.rot90(img[y : y + ch, x : x + cw], int(rng.integers(0, 4)))
    if rng.random() < 0.5:
        out = out[:, ::-1]
    th, tw = _size(rng)
    s = min(th / out.shape[0], tw / out.shape[1], 2.5)
    size = (max(40, int(out.shape[1] * s)), max(40, int(out.shape[0] * s)))
    return cv2.resize(np.ascontiguousarray(out), size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)


def _pick(seq: tuple[np.ndarray, ...], rng: np.random.Generator, what: str) -> np.ndarray:
    if not seq:
        raise ValueError(f"this generator needs {what} sources; pass them to load_sources")
    return seq[int(rng.integers(0, len(seq)))]


def _as_rgb(img: np.ndarray) -> np.ndarray:
    return _grey_rgb(img) if img.ndim == 2 else img


def _hsv_colour(h: float, s: float, v: float) -> np.ndarray:
    """An RGB colour (float 0-255) from OpenCV HSV (H 0-179)."""
    px = np.array([[[h, s, v]]], np.uint8)
    return cv2.cvtColor(px, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _purple(rng: np.random.Generator, s: tuple[int, int] = (40, 200), v: tuple[int, int] = (90, 230)) -> np.ndarray:
    """A purple / violet / magenta / lavender colour: the stain hues the paper's rule looks for."""
    return _hsv_colour(rng.integers(118, 172), rng.integers(*s), rng.integers(*v))


def _words(rng: np.random.Generator, k: int) -> str:
    letters = string.ascii_letters + "     "
    return "".join(rng.choice(list(letters), size=k))


# --- Table 7 categories ---------------------------------------------------------------------------------------------
def blank_white(rng: np.random.Generator, src: Sources) -> np.ndarray:
    h, w = _size(rng)
    base = rng.uniform(236, 256) - np.abs(rng.normal(0, 3, 3))
    img = np.ones((h, w, 3), np.float32) * base
    if rng.random() < 0.4:
        img += np.linspace(-rng.uniform(0, 8), 0, w, dtype=np.float32)[None, :, None]
    return _maybe_jpeg(_noise(_to_u8(img), rng, rng.choice([0.0, 0.0, 1.0, 2.5])), rng)


def dark(rng: np.random.Generator, src: Sources) -> np.ndarray:
    h, w = _size(rng)
    kind = rng.integers(0, 3)
    if kind == 0 or not src.photos:  # black / near black, maybe tinted, maybe noisy
        img = _noise(_to_u8(np.ones((h, w, 3), np.float32) * rng.uniform(0, 25, 3)), rng, rng.choice([0.0, 2.0, 5.0]))
    elif kind == 1:  # an underexposed photograph
        img = _to_u8(_crop(_pick(src.photos, rng, "photo"), rng).astype(np.float32) * rng.uniform(0.03, 0.12))
    else:  # a dark purple field: stain-coloured but far too dark to be a smear
        img = _noise(_to_u8(np.ones((h, w, 3), np.float32) * _purple(rng, v=(10, 32))), rng, 1.5)
    return _maybe_jpeg(img, rng)


def landscape(rng: np.random.Generator, src: Sources) -> np.ndarray:
    """Sky, clouds, mountain ridges, ground and maybe water and a sun."""
    h, w = _size(rng)
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    sunset = rng.random() < 0.3
    top = np.array([30, 80, 180]) + rng.normal(0, 15, 3)
    horizon = (np.array([250, 170, 110]) if sunset else np.array([170, 210, 240])) + rng.normal(0, 10, 3)
    img = (1 - t) * top + t * horizon + np.zeros((h, w, 3), np.float32)
    clouds = _fbm(rng, h, w, 5, 3)[:, :, None]
    img = img * (1 - np.clip((clouds - 0.55) * 2.5, 0, 1)) + 245 * np.clip((clouds - 0.55) * 2.5, 0, 1)
    if rng.random() < 0.4:
        cv2.circle(
            img,
            (int(rng.integers(0, w)), int(rng.integers(0, h // 3))),
            int(rng.integers(8, 40)),
            (255, 240, 200),
            -1,
            cv2.LINE_AA,
        )
    xs = np.arange(w)
    for layer in range(int(rng.integers(1, 4))):
        ridge = np.cumsum(rng.normal(0, 2.0 + layer, w))
        ridge = cv2.GaussianBlur(ridge.reshape(1, -1).astype(np.float32), (0, 0), 6).ravel()
        ridge = ridge - ridge.mean() + h * rng.uniform(0.35, 0.6) + layer * h * 0.06
        colour = np.array([90, 100, 120]) * (1 - 0.25 * layer) + rng.normal(0, 10, 3)
        if rng.random() < 0.5:
            colour = np.array([50, 110, 60]) * (1 - 0.2 * layer) + rng.normal(0, 10, 3)
        below = np.arange(h)[:, None] > ridge[None, xs]
        tex = _fbm(rng, h, w, 5, 8)[:, :, None] * 50 - 25
        img = np.where(below[:, :, None], colour + tex, img)
    ground_top = int(h * rng.uniform(0.65, 0.85))
    ground = np.array([80, 130, 50]) + rng.normal(0, 20, 3)
    if rng.random() < 0.3:
        ground = np.array([190, 160, 90]) + rng.normal(0, 15, 3)  # fields / sand
    tex = _fbm(rng, h - ground_top, w, 6, 8)[:, :, None] * 70 - 35
    img[ground_top:] = ground + tex
    if rng.random() < 0.3:  # a lake mirroring the sky
        y = ground_top + (h - ground_top) // 3
        img[y:] = img[y:] * 0.4 + np.array([60, 110, 170]) * 0.6
    return _maybe_jpeg(_noise(_to_u8(img), rng, 2.0), rng, 0.7)


def _document(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    paper = rng.uniform(235, 255) - np.abs(rng.normal(0, 4, 3))
    img = _to_u8(np.ones((h, w, 3), np.float32) * paper)
    ink = tuple(float(c) for c in rng.uniform(0, 60, 3))
    y = int(rng.integers(20, 50))
    font = int(
        rng.choice(
            [
                cv2.FONT_HERSHEY_SIMPLEX,
                cv2.FONT_HERSHEY_COMPLEX,
                cv2.FONT_HERSHEY_PLAIN,
                cv2.FONT_HERSHEY_DUPLEX,
                cv2.FONT_HERSHEY_TRIPLEX,
            ]
        )
    )
    scale = rng.uniform(0.35, 0.8)
    while y < h - 10:
        heading = rng.random() < 0.1
        cv2.putText(
            img,
            _words(rng, int(rng.integers(5, 80))),
            (int(rng.integers(8, 30)), y),
            font,
            scale * (1.6 if heading else 1.0),
            ink,
            2 if heading else 1,
            cv2.LINE_AA,
        )
        y += int(22 * scale / 0.5 * (1.6 if heading else 1.0)) + int(rng.integers(0, 8))
    return img


def _screenshot(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """An application window: bars, panels, buttons, icons and text; light or dark theme, any accent colour."""
    dark_mode = rng.random() < 0.3
    bg = rng.uniform(20, 50, 3) if dark_mode else rng.uniform(225, 255, 3)
    fg = (220, 220, 220) if dark_mode else (30, 30, 30)
    img = np.ones((h, w, 3), np.float32) * bg
    accent = _hsv_colour(rng.integers(0, 180), rng.integers(60, 255), rng.integers(120, 255))
    bar = int(rng.integers(24, 60))
    img[:bar] = accent
    side = int(w * rng.uniform(0.0, 0.3))
    if side:
        img[bar:, :side] = bg * 0.92 + 8
    for _ in range(int(rng.integers(3, 12))):  # buttons and panels
        x0, y0 = int(rng.integers(side, w - 40)), int(rng.integers(bar, h - 20))
        x1, y1 = min(w - 1, x0 + int(rng.integers(40, 200))), min(h - 1, y0 + int(rng.integers(16, 80)))
        colour = (
            accent
            if rng.random() < 0.4
            else _hsv_colour(rng.integers(0, 180), rng.integers(0, 120), rng.integers(150, 255))
        )
        cv2.rectangle(img, (x0, y0), (x1, y1), tuple(float(c) for c in colour), -1 if rng.random() < 0.7 else 1)
    for _ in range(int(rng.integers(0, 6))):  # round icons / avatars
        cv2.circle(
            img,
            (int(rng.integers(0, w)), int(rng.integers(bar, h))),
            int(rng.integers(5, 18)),
            tuple(float(c) for c in _hsv_colour(rng.integers(0, 180), rng.integers(50, 255), 200)),
            -1,
            cv2.LINE_AA,
        )
    img = _to_u8(img)  # putText draws on 8-bit images only
    y = bar + 20
    while y < h - 8:
        cv2.putText(
            img,
            _words(rng, int(rng.integers(4, 40))),
            (side + int(rng.integers(6, 40)), y),
            cv2.FONT_HERSHEY_SIMPLEX,
            rng.uniform(0.35, 0.6),
            fg,
            1,
            cv2.LINE_AA,
        )
        y += int(rng.integers(16, 40))
    return _to_u8(img)


def text_screenshot(rng: np.random.Generator, src: Sources) -> np.ndarray:
    h, w = _size(rng)
    kind = rng.integers(0, 3)
    if kind == 2 and src.documents:  # a real scanned page
        img = _grey_rgb(_crop(_pick(src.documents, rng, "document"), rng, 0.6))
    elif kind == 1:
        img = _screenshot(rng, h, w)
    else:
        img = _document(rng, h, w)
    return _maybe_jpeg(img, rng, 0.3)


def greyscale_microscopy(rng: np.random.Generator, src: Sources) -> np.ndarray:
    """Unstained microscopy: greyscale or nearly colourless smears, and a real greyscale cell image."""
    kind = rng.integers(0, 3)
    if kind == 2 and src.microscopy:
        return _maybe_jpeg(_grey_rgb(_crop(_pick(src.microscopy, rng, "microscopy"), rng)), rng)
    if not src.smears:
        raise ValueError("greyscale_microscopy needs genuine smears as sources")
    smear = _crop(_pick(src.smears, rng, "smear"), rng, 0.6)
    grey = cv2.cvtColor(smear, cv2.COLOR_RGB2GRAY)
    grey = _to_u8((grey.astype(np.float32) - 128) * rng.uniform(0.7, 1.4) + 128 + rng.uniform(-20, 20))
    if kind == 0:
        return _maybe_jpeg(_grey_rgb(grey), rng)
    # unstained brightfield: the cells' faint warm or cool cast, saturation near zero
    tint = np.array([1.0, 1.0, 1.0]) + rng.normal(0, 0.02, 3)
    return _maybe_jpeg(_to_u8(_grey_rgb(grey).astype(np.float32) * tint), rng)


def random_colour(rng: np.random.Generator, src: Sources) -> np.ndarray:
    h, w = _size(rng)
    kind = rng.integers(0, 5)
    if kind == 0:  # uniform noise
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    elif kind == 1:  # smooth random colour field
        img = _to_u8(np.dstack([_fbm(rng, h, w, 4, int(rng.integers(2, 8))) for _ in range(3)]) * 255)
    elif kind == 2:  # random coloured discs
        img = np.ones((h, w, 3), np.float32) * rng.uniform(0, 255, 3)
        for _ in range(int(rng.integers(5, 120))):
            cv2.circle(
                img,
                (int(rng.integers(0, w)), int(rng.integers(0, h))),
                int(rng.integers(3, 60)),
                tuple(float(c) for c in rng.uniform(0, 255, 3)),
                -1,
                cv2.LINE_AA,
            )
        img = _to_u8(img)
    elif kind == 3:  # Mondrian rectangles
        img = np.ones((h, w, 3), np.float32) * rng.uniform(0, 255, 3)
        for _ in range(int(rng.integers(3, 30))):
            x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
            cv2.rectangle(
                img,
                (x0, y0),
                (x0 + int(rng.integers(10, w // 2)), y0 + int(rng.integers(10, h // 2))),
                tuple(float(c) for c in rng.uniform(0, 255, 3)),
                -1,
            )
        img = _to_u8(img)
    else:  # a gradient between two random colours, linear or radial
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        if rng.random() < 0.5:
            angle = rng.uniform(0, np.pi)
            t = xx * np.cos(angle) + yy * np.sin(angle)
        else:
            t = np.hypot(xx - rng.uniform(0, w), yy - rng.uniform(0, h))
        t = ((t - t.min()) / max(float(t.max() - t.min()), 1e-6))[:, :, None]
        img = _to_u8((1 - t) * c0 + t * c1)
    return _maybe_jpeg(img, rng, 0.3)


def photograph(rng: np.random.Generator, src: Sources) -> np.ndarray:
    img = _crop(_pick(src.photos, rng, "photo"), rng).astype(np.float32)
    img = img * rng.uniform(0.8, 1.2) + rng.uniform(-15, 15)
    return _maybe_jpeg(_to_u8(img), rng)


# --- hard negatives -------------------------------------------------------------------------------------------------
def _tissue_crop(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = _crop(img, rng, 0.25).astype(np.float32)
    hsv = cv2.cvtColor(_to_u8(out), cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[:, :, 0] = (hsv[:, :, 0] + rng.uniform(-4, 4)) % 180  # stain batches differ a little
    hsv[:, :, 1] *= rng.uniform(0.8, 1.2)
    hsv[:, :, 2] *= rng.uniform(0.9, 1.1)
    return _maybe_jpeg(cv2.cvtColor(_to_u8(hsv), cv2.COLOR_HSV2RGB), rng)


def tissue_he(rng: np.random.Generator, src: Sources) -> np.ndarray:
    """Crops of a real H&E section (disjoint halves per part)."""
    return _tissue_crop(_pick(src.he, rng, "H&E tissue"), rng)


def tissue_ihc(rng: np.random.Generator, src: Sources) -> np.ndarray:
    """Crops of a real IHC section (haematoxylin + DAB; disjoint halves per part)."""
    return _tissue_crop(_pick(src.ihc, rng, "IHC tissue"), rng)


def _render_stains(densities: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Beer-Lambert: transmitted light 255 * exp(-sum of density x optical-density vector)."""
    od = sum(d[:, :, None] * vec[None, None, :] for d, vec in densities)
    return _to_u8(255.0 * np.exp(-od))


def tissue_synthetic(rng: np.random.Generator, src: Sources) -> np.ndarray:
    """A tissue section rendered from stain densities: packed nuclei and eosin or DAB stroma.

    Nuclei are packed ellipses, sometimes taken from a real greyscale texture, so the content check learns tissue
    architecture (dense, continuous, little empty background) rather than one photograph's colours.
    """
    h, w = _size(rng)
    nuclei = np.zeros((h, w), np.float32)
    density = _fbm(rng, h, w, 4, 3)
    r = rng.uniform(3, 9)
    for _ in range(int(h * w / (r * r) * rng.uniform(0.05, 0.25))):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        if density[y, x] < rng.uniform(0.2, 0.6):
            continue
        axes = (max(1, int(r * rng.uniform(0.7, 1.4))), max(1, int(r * rng.uniform(0.5, 1.0))))
        cv2.ellipse(
            nuclei, (x, y), axes, float(rng.uniform(0, 180)), 0, 360, float(rng.uniform(0.6, 1.0)), -1, cv2.LINE_AA
        )
    if src.textures and rng.random() < 0.4:
        tex = to_unit_range(cv2.resize(_pick(src.textures, rng, "texture"), (w, h)))
        nuclei = np.maximum(nuclei, (1 - tex) ** 2)
    nuclei = cv2.GaussianBlur(nuclei, (0, 0), rng.uniform(0.5, 1.5))
    stroma = _fbm(rng, h, w, 6, int(rng.integers(4, 16)))
    lumen = _fbm(rng, h, w, 3, 2) > rng.uniform(0.75, 1.0)  # occasional empty spaces
    counter = DAB if rng.random() < 0.35 else EOSIN
    h_amount, c_amount = rng.uniform(0.6, 1.6), rng.uniform(0.2, 0.8)
    stroma_d = (0.3 + 0.7 * stroma) * c_amount * (~lumen)
    img = _render_stains([(nuclei * h_amount + 0.05, HAEMATOXYLIN), (stroma_d, counter)])
    return _maybe_jpeg(_noise(img, rng, 2.0), rng)


def purple_photo(rng: np.random.Generator, src: Sources) -> np.ndarray:
    """A photograph or texture seen through purple: blended, duotoned, filtered or re-hued."""
    pool = src.photos + src.textures
    img = _as_rgb(_crop(_pick(pool, rng, "photo"), rng)).astype(np.float32)
    colour = _purple(rng)
    kind = rng.integers(0, 4)
    if kind == 0:  # blend with a purple wash
        a = rng.uniform(0.3, 0.75)
        out = (1 - a) * img + a * colour
    elif kind == 1:  # duotone: dark purple shadows to light lavender / pink highlights
        lum = to_unit_range(cv2.cvtColor(_to_u8(img), cv2.COLOR_RGB2GRAY))[:, :, None]
        lo, hi = _purple(rng, (80, 255), (40, 140)), _purple(rng, (10, 60), (220, 255))
        out = (1 - lum) * lo + lum * hi
    elif kind == 2:  # multiply by a purple filter
        out = img * (colour / max(float(colour.max()), 1.0)) * rng.uniform(1.0, 1.4)
    else:  # every hue moved into the stain range
        hsv = cv2.cvtColor(_to_u8(img), cv2.COLOR_RGB2HSV).astype(np.float32)
        hsv[:, :, 0] = rng.uniform(120, 165) + rng.normal(0, 4, hsv.shape[:2])
        hsv[:, :, 1] = np.clip(hsv[:, :, 1] * rng.uniform(0.8, 1.5) + 30, 0, 255)
        out = cv2.cvtColor(_to_u8(hsv), cv2.COLOR_HSV2RGB).astype(np.float32)
    return _maybe_jpeg(_to_u8(out), rng)


def flat_lavender(rng: np.random.Generator, src: Sources) -> np.ndarray:
    """A (nearly) flat lavender, lilac, mauve or pink field: the stain colours with no cells at all."""
    h, w = _size(rng)
    img = np.ones((h, w, 3), np.float32) * _purple(rng, (15, 120), (150, 250))
    if rng.random() < 0.5:  # vignette or gradient, as from a phone camera
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        r = np.hypot((xx - w / 2) / w, (yy - h / 2) / h)[:, :, None]
        img *= 1 - rng.uniform(0, 0.35) * r
    if rng.random() < 0.3:  # soft blotches
        img *= (0.9 + 0.2 * _fbm(rng, h, w, 3, 2))[:, :, None]
    return _maybe_jpeg(_noise(_to_u8(img), rng, rng.choice([0.0, 1.0, 3.0, 6.0])), rng)


def purple_drawing(rng: np.random.Generator, src: Sources) -> np.ndarray:
    """Drawings in stain colours: cartoon smears (pink discs, purple blobs), shapes, scribbles, text."""
    h, w = _size(rng)
    paper = rng.uniform(235, 256, 3) - np.abs(rng.normal(0, 6, 3))
    img = np.ones((h, w, 3), np.float32) * paper
    kind = rng.integers(0, 3)
    if kind == 0:  # a cartoon blood smear
        r = int(rng.integers(6, 30))
        pink = _hsv_colour(rng.integers(160, 180), rng.integers(40, 120), rng.integers(180, 240))
        for _ in range(int(h * w / (r * r) * rng.uniform(0.1, 0.5))):
            c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.circle(img, c, r, tuple(float(v) for v in pink), -1, cv2.LINE_AA)
            if rng.random() < 0.6:
                cv2.circle(img, c, max(1, r // 3), tuple(float(v) for v in (pink + paper) / 2), -1, cv2.LINE_AA)
        for _ in range(int(rng.integers(1, 8))):
            cv2.circle(
                img,
                (int(rng.integers(0, w)), int(rng.integers(0, h))),
                int(r * rng.uniform(1.2, 2.2)),
                tuple(float(v) for v in _purple(rng, (80, 220), (60, 180))),
                -1,
                cv2.LINE_AA,
            )
    elif kind == 1:  # shapes and scribbles
        for _ in range(int(rng.integers(3, 40))):
            colour = tuple(float(v) for v in _purple(rng))
            x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
            shape = rng.integers(0, 3)
            if shape == 0:
                cv2.ellipse(
                    img,
                    (x, y),
                    (int(rng.integers(5, 80)), int(rng.integers(5, 80))),
                    float(rng.uniform(0, 180)),
                    0,
                    360,
                    colour,
                    int(rng.choice([-1, 2, 4])),
                    cv2.LINE_AA,
                )
            elif shape == 1:
                pts = np.cumsum(rng.normal(0, 15, (int(rng.integers(3, 30)), 2)), axis=0) + (x, y)
                cv2.polylines(img, [pts.astype(np.int32)], False, colour, int(rng.integers(1, 6)), cv2.LINE_AA)
            else:
                cv2.rectangle(
                    img,
                    (x, y),
                    (x + int(rng.integers(10, 120)), y + int(rng.integers(10, 120))),
                    colour,
                    int(rng.choice([-1, 2])),
                )
    else:  # purple text and diagrams
        img = _to_u8(img)  # putText draws on 8-bit images only
        colour = tuple(float(v) for v in _purple(rng, (80, 255), (60, 200)))
        y = int(rng.integers(20, 40))
        while y < h - 8:
            cv2.putText(
                img,
                _words(rng, int(rng.integers(3, 40))),
                (int(rng.integers(5, 40)), y),
                cv2.FONT_HERSHEY_SIMPLEX,
                rng.uniform(0.4, 1.2),
                colour,
                int(rng.integers(1, 3)),
                cv2.LINE_AA,
            )
            y += int(rng.integers(20, 50))
    img = _to_u8(img)
    if rng.random() < 0.3:  # photographed or scanned: slightly soft
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 1.2))
    return _maybe_jpeg(img, rng)


def hue_shifted(rng: np.random.Generator, src: Sources) -> np.ndarray:
    """Smears or photos with hues rotated 140-200 degrees: purple stain turns yellow-green, pink turns green-cyan.

    Smaller rotations stay clear: a blue-grey or magenta cast is within real stain variation (Taleqani's red cells
    are blue-grey), and the validator must accept it.
    """
    pool = src.smears if src.smears and rng.random() < 0.6 else src.photos
    img = _crop(_pick(pool, rng, "smear or photo"), rng, 0.6)
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV).astype(np.int32)
    hsv[:, :, 0] = (hsv[:, :, 0] + int(rng.integers(70, 101))) % 180
    return _maybe_jpeg(cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB), rng)


GENERATORS: dict[str, Callable[[np.random.Generator, Sources], np.ndarray]] = {
    "landscape": landscape,
    "text_screenshot": text_screenshot,
    "blank_white": blank_white,
    "dark": dark,
    "greyscale_microscopy": greyscale_microscopy,
    "random_colour": random_colour,
    "photograph": photograph,
    "tissue_he": tissue_he,
    "tissue_ihc": tissue_ihc,
    "tissue_synthetic": tissue_synthetic,
    "purple_photo": purple_photo,
    "flat_lavender": flat_lavender,
    "purple_drawing": purple_drawing,
    "hue_shifted": hue_shifted,
}


def available(category: str, src: Sources) -> bool:
    """Whether the sources this category derives from are present (real tissue may be missing)."""
    needs = {
        "tissue_he": src.he,
        "tissue_ihc": src.ihc,
        "photograph": src.photos,
        "hue_shifted": src.photos,
        "greyscale_microscopy": src.smears,
    }
    return bool(needs.get(category, True))


def generate(category: str, n: int, seed: int, src: Sources) -> list[np.ndarray]:
    """``n`` images of one category; the same (category, n, seed, sources) always gives the same pixels.

    Raises:
        ValueError: unknown category (the message lists them).
    """
    if category not in GENERATORS:
        raise ValueError(f"unknown negative category {category!r}; expected one of {', '.join(CATEGORIES)}")
    offset = CATEGORIES.index(category)
    rng = np.random.default_rng([seed, offset])
    return [np.ascontiguousarray(GENERATORS[category](rng, src)) for _ in range(n)]
