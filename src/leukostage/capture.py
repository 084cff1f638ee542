"""What the camera did to a field, and undoing what can be undone (serving path: numpy and OpenCV only).

A laboratory photographs its smears with its own microscope, camera and habits. Four things vary every day and each
has a physical handle:

- **The eyepiece photo.** A phone held to the eyepiece records the round field stop and a black surround. The field
  is the bright disc; outside it there is nothing to read. :func:`find_eyepiece_field` finds the disc,
  :func:`eyepiece_field` keeps it, flattens the lens's radial fall-off and fills the surround with the slide's
  background colour.
- **Exposure.** A brighter or dimmer lamp multiplies every pixel by one gain; the model's own colour normalisation
  divides gains out, so only what has no information left is refused: a background too dark to hold the stain's
  contrast (:func:`background_level`), or a picture washed out so that even its darkest hundredth (the nuclei)
  is near white (:func:`dark_level`).
- **Magnification.** Red cells are a ruler: about 7.5 um across in every smear. :func:`red_cell_diameter` measures
  them in pixels; a field within a factor of the training scale is rescaled to it (:func:`to_training_scale`),
  beyond that it is refused with the measured scale.
- **Focus.** A defocused field has lost its fine edges relative to its coarse ones (:func:`focus_measure`, measured
  at the training scale, so magnification does not pass for blur).

Every threshold comes from validation data and lives in the validator file (``capture`` section, written by
``leukostage calibrate-validator``); this module holds only the physics.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np

from .imaging import BACKGROUND_QUANTILE

# --- the physics (constants of the method, not tuned thresholds) ----------------------------------------------------
RED_CELL_UM = 7.5  # a normal red cell's diameter: the ruler every smear carries
WORKING_SIDE = 128  # the eyepiece search, the exposure levels and the ruler share one copy at most this long (speed)
MIN_RULER_PX = 6.0  # below this many pixels at the working copy the ruler looks again at full resolution ...
CLOSER_SIDE = 512  # ... on a central window at most this long (a smear's red cells are alike across a field)
RULER_STEPS = 7  # bisection steps of the granulometry: the diameter to within 1 % of the largest cell radius
SURROUND_FRACTION = 0.25  # the eyepiece's surround is darker than this share of the field's bright level
MIN_SURROUND_AT_EDGE = 0.4  # share of the picture's outer rim that must be surround for an eyepiece photo
MIN_ROUNDNESS = 0.8  # the bright region fills at least this share of its enclosing circle (within the picture)
EYEPIECE_RIM = 0.03  # the outer 3 % of the disc radius is the field stop's blurred edge: filled, not kept
EYEPIECE_RINGS = 20  # rings of the lens's fall-off profile: with 10, the level of a ring's brighter inner edge left
# its outer edge ~2 % too dark after flattening (validation fields' eyepiece photos); 20 leave < 1 %
FALL_OFF_SIDE = 256  # the fall-off is read on a copy of the disc at most this long (it is smooth)
MIN_RING_PIXELS = 20  # a ring with fewer pixels in the field (a small disc's centre) takes the next one's level
FOCUS_FINE_SIGMA = 0.7  # focus: gradients after this much smoothing (pixels at the training scale; damps noise) ...
FOCUS_COARSE_SIGMA = 2.0  # ... over gradients after this much: ~1.9 in focus, ~1.4 at 1.5 px blur, ~1.15 at 3 px
CLIPPED_LEVEL = 250  # a pixel this bright in every channel has lost what the stain did to it
WASHED_OUT_SHARE = (
    0.5  # a picture at least half clipped, refused by the smear layers, is overexposed if its rest is stain
)
RULER_MAX_CLIPPED = 0.4  # above this clipped share a lamp has whitened the red cells' pale rims and centres:
# the ruler then reads them smaller than they are (x1.2 exposure: a median 0.94 of the training scale, a twentieth
# under 0.54), so a reading below the band read as it is (``scale_band``) is not used. Chosen on the validation part:
# its clean fields are at most 0.36 clipped; at x1.2 gain 70 % of them are over 0.4.
REMAINDER_SHARE = 0.01  # under this share of the picture unclipped: nothing left to judge
REMAINDER_MIN_SATURATION = 12  # HSV saturation (of 255) above which a washed-out pixel still shows its colour
DARK_QUANTILE = 0.01  # the picture's darkest hundredth: nuclei; if even these are near white, the stain is gone
LARGE_PICTURE = 4  # a picture over this many model views in area is rescaled only where the model reads it
LARGE_DISC = 1024  # an eyepiece disc longer than this is flattened from a sample of its pixels (a phone's photo)


@dataclass(frozen=True)
class Circle:
    cx: float
    cy: float
    r: float


@dataclass(frozen=True)
class CaptureSettings:
    """The capture thresholds of a validator file (chosen on validation data by ``calibrate-validator``)."""

    field_px: int  # the side of the training fields: every model's view is a square this size, at their scale
    red_cell_px: float  # median red-cell diameter over the training part's fields, in their pixels
    scale_band: tuple[float, float]  # measured / training diameter within this: left to the model, not rescaled
    # beyond this: refused (magnification_out_of_range); the upper one may be inf (a file's null): shrinking a
    # picture invents nothing, so only min_field_fraction limits it
    scale_limits: tuple[float, float]
    min_field_fraction: float  # a rescaled field shorter than this share of the model input is refused too
    min_focus: float  # focus_measure below this: out_of_focus
    min_background: float  # background_level (0-255) below this: underexposed
    reference_background: float  # the training fields' median background level: darker fields are brought to it
    max_dark_level: float  # dark_level (0-255) above this: overexposed
    # clipped_share above this with no red cell left to measure: overexposed (None: a validator file from before it)
    max_clipped_without_red_cells: float | None = None

    @classmethod
    def from_dict(cls, d: dict) -> CaptureSettings:
        return cls(
            field_px=int(d["field_px"]),
            red_cell_px=float(d["red_cell_px"]),
            scale_band=tuple(float(v) for v in d["scale_band"]),
            scale_limits=tuple(math.inf if v is None else float(v) for v in d["scale_limits"]),
            min_field_fraction=float(d["min_field_fraction"]),
            min_focus=float(d["min_focus"]),
            min_background=float(d["min_background"]),
            reference_background=float(d["reference_background"]),
            max_dark_level=float(d["max_dark_level"]),
            max_clipped_without_red_cells=(
                None if d.get("max_clipped_without_red_cells") is None else float(d["max_clipped_without_red_cells"])
            ),
        )


# --- small pure measurements -----------------------------------------------------------------------------------------
def shrink(rgb: np.ndarray, side: int) -> tuple[np.ndarray, float]:
    """A copy at most ``side`` pixels on its longest side, and the factor it was scaled by (<= 1)."""
    h, w = rgb.shape[:2]
    s = min(1.0, side / max(h, w))
    if s == 1.0:
        return rgb, 1.0
    return cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA), s


def working_copy(rgb: np.ndarray, working: tuple[np.ndarray, float] | None = None) -> tuple[np.ndarray, float]:
    """``shrink(rgb, WORKING_SIDE)``, or ``working`` where the caller already made it (one resize per picture: the
    area resize costs more than most measurements on its copy)."""
    return shrink(rgb, WORKING_SIDE) if working is None else working


def grey(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def quantile_u8(values: np.ndarray, q: float) -> float:
    """The ``q`` quantile of 8-bit values, from their histogram (exact for integers, and several times faster)."""
    cumulative = np.cumsum(np.bincount(values.ravel(), minlength=256))
    return float(np.searchsorted(cumulative, q * (cumulative[-1] - 1) + 1))


def quantile_f(values: np.ndarray, q: float) -> float:
    """The ``q`` quantile (lower) of float values by one partial sort."""
    flat = values.ravel()
    k = int(q * (flat.size - 1))
    return float(np.partition(flat, k)[k])


def channel_quantiles(rgb: np.ndarray, q: float) -> list[float]:
    """:func:`quantile_u8` of each channel, from OpenCV's histograms (no copy of the interleaved channels)."""
    return [_histogram_quantile(cv2.calcHist([rgb], [c], None, [256], [0, 256]).ravel(), q) for c in range(3)]


def _histogram_quantile(hist: np.ndarray, q: float) -> float:
    cumulative = np.cumsum(hist)
    return float(np.searchsorted(cumulative, q * (cumulative[-1] - 1) + 1))


def background_level(rgb: np.ndarray) -> float:
    """The slide's brightness (0-255): the brightest channel's ``BACKGROUND_QUANTILE`` quantile.

    Assumes bright-field illumination, where the empty slide is the brightest part and covers more than a tenth of
    any field (the same assumption as the model's colour normalisation).
    """
    small, _ = shrink(rgb, WORKING_SIDE)
    return max(channel_quantiles(small, BACKGROUND_QUANTILE))


def dark_level(rgb: np.ndarray) -> float:
    """The grey level (0-255) of the picture's darkest hundredth: the nuclei, the most stained. Near 255: washed out."""
    small, _ = shrink(rgb, WORKING_SIDE)
    return quantile_u8(grey(small), DARK_QUANTILE)


def with_background(rgb: np.ndarray, level: float, reference: float) -> np.ndarray:
    """A dim picture brightened by one gain so its background sits at ``reference`` (what a brighter lamp would have
    recorded); pictures at or above it are returned as they are (a clipped highlight cannot be undone)."""
    if level >= reference or level <= 0:
        return rgb
    table = np.clip(np.arange(256, dtype=np.float32) * np.float32(reference / level), 0, 255).astype(np.uint8)
    return cv2.LUT(rgb, table)  # one lookup per pixel: the float product's numbers, several times faster


def clipped_share(rgb: np.ndarray) -> float:
    """Share of the picture at full white in every channel: a lamp so bright that the sensor saturated."""
    small, _ = shrink(rgb, WORKING_SIDE)
    darkest = cv2.min(cv2.min(small[:, :, 0], small[:, :, 1]), small[:, :, 2])
    return float(np.count_nonzero(darkest >= CLIPPED_LEVEL)) / darkest.size


def washed_out_stain(rgb: np.ndarray, hue_band: tuple[int, int]) -> bool:
    """Whether what the lamp left unclipped is a washed-out stain (or nothing at all), so that a mostly white picture
    is an overexposed smear, not a document or a drawing on white: most of its coloured pixels have the stain's hue
    (OpenCV hue in ``hue_band``), or under a hundredth of the picture is left."""
    small, _ = shrink(rgb, WORKING_SIDE)
    darkest = cv2.min(cv2.min(small[:, :, 0], small[:, :, 1]), small[:, :, 2])
    left = darkest < CLIPPED_LEVEL
    if np.count_nonzero(left) < REMAINDER_SHARE * left.size:
        return True
    hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)[left]
    coloured = hsv[hsv[:, 1] >= REMAINDER_MIN_SATURATION]
    if len(coloured) < REMAINDER_SHARE * left.size:
        return False  # grey or black marks on white: text, a drawing, a greyscale picture
    in_band = (coloured[:, 0] >= hue_band[0]) & (coloured[:, 0] <= hue_band[1])
    return bool(in_band.mean() >= 0.5)


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """Summed optical density over the channels, relative to each channel's background (Beer-Lambert): 0 on the
    empty slide, larger where more stain absorbs; independent of the lamp's brightness and colour."""
    bg = np.array(channel_quantiles(rgb, BACKGROUND_QUANTILE), np.float32).clip(1.0, 255.0)
    lut = np.maximum(-np.log(np.maximum(np.arange(256, dtype=np.float32), 1.0)[:, None] / bg), 0.0)  # (256, 3)
    per_channel = cv2.LUT(np.ascontiguousarray(rgb), np.ascontiguousarray(lut.reshape(1, 256, 3)))
    return cv2.transform(per_channel, np.ones((1, 3), np.float32))  # the channels' sum


def cell_mask(rgb: np.ndarray) -> np.ndarray | None:
    """Cells (uint8 0/1) by Otsu's threshold on optical density, with small enclosed holes (a red cell's central
    pallor) filled. None when the picture has no two populations (no cells, or nothing but cells)."""
    od = optical_density(rgb)
    top = quantile_f(od, 0.99)
    if top <= 0.05:
        return None
    od8 = np.minimum(od * (255.0 / top), 255).astype(np.uint8)  # optical density is never negative
    _, mask = cv2.threshold(od8, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    share = cv2.countNonZero(mask) / mask.size
    if not 0.05 <= share <= 0.9:
        return None
    # 16-bit labels: enough for any working copy (4-connected holes are at most half its pixels), and faster
    n, labels, stats, _ = cv2.connectedComponentsWithStats(1 - mask, connectivity=4, ltype=cv2.CV_16U)
    rim = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    small = stats[:, cv2.CC_STAT_AREA] < 0.01 * mask.size
    small[rim] = False
    small[0] = False  # label 0 is the cells themselves
    if small.any():
        mask |= np.take(small.astype(np.uint8), labels)
    return mask


@functools.lru_cache(maxsize=8)
def _squared_offsets(radius: int) -> np.ndarray:
    """Squared distances from the centre of a (2 radius + 1)-square grid."""
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return xx * xx + yy * yy


def _opened_share(dist: np.ndarray, mask: np.ndarray, area: float, r: float) -> float:
    """Share of the cell area that survives a morphological opening by a disc of radius ``r``: the pixels within
    ``r`` of a point at least ``r`` from the background (the distance map's cores, dilated by the disc: the same
    pixels as a second distance transform, and several times faster on small discs)."""
    core = (dist >= r).astype(np.uint8)
    disc = (_squared_offsets(int(r)) <= r * r).astype(np.uint8)
    return cv2.countNonZero(cv2.dilate(core, disc) & mask) / area


def _granulometric_diameter(mask: np.ndarray) -> float | None:
    """The disc diameter at which an opening removes half the cell area (a granulometry's median): the size of the
    objects that make up most of the cell area, which in a blood smear are the red cells."""
    dist = cv2.distanceTransform(mask, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    area = float(cv2.countNonZero(mask))
    lo, hi = 0.5, float(dist.max())  # a disc of radius 1/2 is one pixel: the opening keeps the whole area
    if hi <= 1.0:
        return None
    for _ in range(RULER_STEPS):  # the surviving share falls as the disc grows: bisect for one half
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _opened_share(dist, mask, area, mid) >= 0.5 else (lo, mid)
    return 2.0 * (lo + hi) / 2


def red_cell_diameter(rgb: np.ndarray, working: tuple[np.ndarray, float] | None = None) -> float | None:
    """The typical red-cell diameter in pixels of ``rgb``, or None when the field shows too few cells to measure.

    Assumes a thin blood film, where red cells make up most of the stained area (a granulometry's median measures
    them, not the rarer white cells), and a field of at least a few red cells across. ``working``: the picture's
    :func:`working_copy`, where the caller has it.
    """
    small, s = working_copy(rgb, working)
    mask = cell_mask(small)
    d = None if mask is None else _granulometric_diameter(mask)
    if d is not None and d < MIN_RULER_PX and s < 1.0:  # too small to measure at the working copy: look closer
        h, w = rgb.shape[:2]
        y0, x0 = max(0, (h - CLOSER_SIDE) // 2), max(0, (w - CLOSER_SIDE) // 2)
        mask, s = cell_mask(rgb[y0 : y0 + CLOSER_SIDE, x0 : x0 + CLOSER_SIDE]), 1.0
        d = None if mask is None else _granulometric_diameter(mask)
    return None if d is None else d / s


@functools.lru_cache(maxsize=4)
def _smoothed_sobel(sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """The 3x3 Sobel filter after a Gaussian blur of ``sigma``, as one separable pair (derivative, smoothing): the
    same numbers as ``GaussianBlur`` then ``Sobel`` (reflected borders commute with symmetric kernels), in two
    passes over the picture instead of four."""
    gauss = cv2.getGaussianKernel(round(sigma * 8 + 1) | 1, sigma, cv2.CV_32F).ravel()  # GaussianBlur's own size
    return np.convolve(gauss, [-1, 0, 1]).astype(np.float32), np.convolve(gauss, [1, 2, 1]).astype(np.float32)


def focus_measure(rgb: np.ndarray) -> float:
    """Sharpness that contrast, exposure and stain do not change: the 99th percentile of gradient magnitude after a
    light smoothing over that after a heavier one. Defocus removes fine edges first, so the ratio falls towards 1.

    Measure it at the model's input scale (after :func:`to_training_scale`): blur is in pixels of that scale.
    """
    g = grey(rgb)

    def edge(sigma: float) -> float:
        derivative, smoothing = _smoothed_sobel(sigma)
        gx = cv2.sepFilter2D(g, cv2.CV_32F, derivative, smoothing)
        gy = cv2.sepFilter2D(g, cv2.CV_32F, smoothing, derivative)
        return quantile_f(cv2.magnitude(gx, gy), 0.99)

    return edge(FOCUS_FINE_SIGMA) / max(edge(FOCUS_COARSE_SIGMA), 1e-3)


# --- the eyepiece ----------------------------------------------------------------------------------------------------
def find_eyepiece_field(rgb: np.ndarray, working: tuple[np.ndarray, float] | None = None) -> Circle | None:
    """The bright disc of a photo taken through the eyepiece, or None for an ordinary (camera-port) field.

    Assumes what a phone held to an eyepiece records: a round field, perhaps cut by the picture's edges, inside a
    surround much darker than the slide, which covers much of the picture's rim. ``working``: the picture's
    :func:`working_copy`, where the caller has it.
    """
    small, s = working_copy(rgb, working)
    edge = np.concatenate([small[0], small[-1], small[:, 0], small[:, -1]]).max(axis=1)
    if np.count_nonzero(edge < SURROUND_FRACTION * 255) < MIN_SURROUND_AT_EDGE * edge.size:
        return None  # a camera-port field: too little of the rim is dark even for the brightest slide (most pictures)
    g = cv2.max(cv2.max(small[:, :, 0], small[:, :, 1]), small[:, :, 2])  # a surround is dark in every channel
    bright = quantile_u8(g, 0.95)
    if bright < 40:
        return None
    surround = g < SURROUND_FRACTION * bright
    rim = np.concatenate([surround[0], surround[-1], surround[:, 0], surround[:, -1]])
    if rim.mean() < MIN_SURROUND_AT_EDGE or not 0.1 <= surround.mean() <= 0.85:
        return None
    n, labels, stats, _ = cv2.connectedComponentsWithStats((~surround).astype(np.uint8), connectivity=8)
    if n < 2:
        return None
    k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    region = (labels == k).astype(np.uint8)
    contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    (cx, cy), r = cv2.minEnclosingCircle(max(contours, key=cv2.contourArea))
    disc = np.zeros_like(region)
    cv2.circle(disc, (round(cx), round(cy)), round(r), 1, -1)
    filled = cv2.morphologyEx(region, cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
    if disc.sum() == 0 or (filled & disc).sum() / disc.sum() < MIN_ROUNDNESS:
        return None
    return Circle(cx / s, cy / s, r / s)


def fall_off(crop: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """The lens's light in :data:`EYEPIECE_RINGS` rings of the disc, relative to the centre (1.0 there).

    Each ring's level is its background's (a bright quantile of the brightest channel), read on a small copy: the
    fall-off is smooth, and a phone photo's millions of pixels would cost a pass per ring. A lens dims its field
    monotonically from the centre out, so a ring darker than one further out holds cells (a white cell often sits at
    the centre), not less light: each ring takes the brightest level from it outwards.
    """
    s = min(1.0, FALL_OFF_SIDE / max(crop.shape[:2]))
    size = (max(1, round(crop.shape[1] * s)), max(1, round(crop.shape[0] * s)))
    lum = cv2.resize(crop.max(axis=2), size, interpolation=cv2.INTER_AREA)
    rho = cv2.resize(rho, size, interpolation=cv2.INTER_AREA)
    bins = np.minimum((rho * EYEPIECE_RINGS).astype(np.int32), EYEPIECE_RINGS - 1)
    inside = rho <= 1.0 - EYEPIECE_RIM
    level = np.zeros(EYEPIECE_RINGS, np.float32)
    for b in range(EYEPIECE_RINGS):
        ring = lum[(bins == b) & inside]
        if ring.size >= MIN_RING_PIXELS:
            level[b] = np.quantile(ring, BACKGROUND_QUANTILE)
    level = np.maximum.accumulate(level[::-1])[::-1]
    return level / level[0] if level[0] > 0 else np.ones_like(level)


def flattening_gain(rho: np.ndarray, level: np.ndarray) -> np.ndarray:
    """The gain that undoes the lens's fall-off (:func:`fall_off`'s ``level``) at each radius ``rho``, its rings'
    levels placed at their middles (at most x5)."""
    return 1.0 / np.clip(np.interp(rho * EYEPIECE_RINGS - 0.5, np.arange(EYEPIECE_RINGS), level), 0.2, 1.0)


def eyepiece_field(rgb: np.ndarray, circle: Circle) -> np.ndarray:
    """The disc's bounding square, its radial light fall-off flattened and the surround filled with the slide's
    background colour, so that the field reads like a camera-port photograph of the same slide.

    A disc longer than :data:`LARGE_DISC` pixels (a phone's photo) gets the same flattening from every step-th pixel:
    its gain map is enlarged and its background read on those pixels, a few passes over millions of pixels instead
    of dozens (a 2900-px disc: about 1.5 s before).
    """
    h, w = rgb.shape[:2]
    x0, x1 = max(0, int(circle.cx - circle.r)), min(w, int(np.ceil(circle.cx + circle.r)))
    y0, y1 = max(0, int(circle.cy - circle.r)), min(h, int(np.ceil(circle.cy + circle.r)))
    if max(x1 - x0, y1 - y0) > LARGE_DISC:
        return _large_eyepiece_field(rgb[y0:y1, x0:x1], Circle(circle.cx - x0, circle.cy - y0, circle.r))
    crop = rgb[y0:y1, x0:x1].astype(np.float32)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    rho = np.hypot(xx - circle.cx, yy - circle.cy) / circle.r  # 0 at the centre, 1 at the field stop
    inside = rho <= 1.0 - EYEPIECE_RIM
    level = fall_off(crop, rho)
    gain = flattening_gain(rho, level)
    crop = crop * gain[..., None]
    background = np.quantile(crop[inside], BACKGROUND_QUANTILE, axis=0)
    crop[~inside] = background
    return np.clip(crop, 0, 255).astype(np.uint8)


def _large_eyepiece_field(crop: np.ndarray, circle: Circle) -> np.ndarray:
    """:func:`eyepiece_field` of a large disc's bounding square (``circle`` in its coordinates), from its every
    step-th pixel: the fall-off is smooth."""
    ch, cw = crop.shape[:2]
    step = -(-max(ch, cw) // LARGE_DISC)
    yy, xx = np.mgrid[0:ch:step, 0:cw:step].astype(np.float32)
    rho = np.hypot(xx - circle.cx, yy - circle.cy) / circle.r
    sampled = crop[::step, ::step].astype(np.float32)
    level = fall_off(sampled, rho)
    gain = flattening_gain(rho, level)
    inside = rho <= 1.0 - EYEPIECE_RIM
    background = np.quantile((sampled * gain[..., None])[inside], BACKGROUND_QUANTILE, axis=0)
    # the sampled pixels sit at multiples of step: enlarge the map so that they keep their gains
    gain = cv2.warpAffine(
        gain.astype(np.float32),
        np.float32([[1 / step, 0, 0], [0, 1 / step, 0]]),
        (cw, ch),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )
    flat = cv2.multiply(crop.astype(np.float32), cv2.merge([gain, gain, gain]))
    disc = np.zeros((ch, cw), np.uint8)  # the field inside the blurred rim, drawn to 1/16 pixel (4 fractional bits)
    sub = 1 << 4
    centre = (round(circle.cx * sub), round(circle.cy * sub))
    cv2.circle(disc, centre, round(circle.r * (1.0 - EYEPIECE_RIM) * sub), 1, -1, lineType=cv2.LINE_8, shift=4)
    flat[disc == 0] = background
    return np.clip(flat, 0, 255).astype(np.uint8)


def field_of_view(
    rgb: np.ndarray, working: tuple[np.ndarray, float] | None = None
) -> tuple[np.ndarray, tuple[np.ndarray, float], bool]:
    """The picture to read: an eyepiece photo's disc cut out (:func:`eyepiece_field`), any other picture as it is.

    Returns the picture, its :func:`working_copy` and whether it was an eyepiece photo.
    """
    working = working_copy(rgb, working)
    circle = find_eyepiece_field(rgb, working)
    if circle is None:
        return rgb, working, False
    field = eyepiece_field(rgb, circle)
    return field, working_copy(field), True


# --- to the model's scale --------------------------------------------------------------------------------------------
def to_training_scale(rgb: np.ndarray, ratio: float) -> np.ndarray:
    """``rgb`` resized by 1 / ``ratio``, where ``ratio`` is its red-cell diameter over the training one."""
    h, w = rgb.shape[:2]
    size = (max(1, round(w / ratio)), max(1, round(h / ratio)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if ratio > 1 else cv2.INTER_CUBIC)


def training_shape(rgb: np.ndarray, ratio: float) -> tuple[int, int]:
    """(height, width) of :func:`to_training_scale`'s result, without making it."""
    h, w = rgb.shape[:2]
    return max(1, round(h / ratio)), max(1, round(w / ratio))


def training_view(
    rgb: np.ndarray, ratio: float, size: int, working: tuple[np.ndarray, float] | None = None
) -> np.ndarray:
    """``model_view(to_training_scale(rgb, ratio), size)``; for a large picture only the window the model reads is
    resized (placed by the stain in the working copy), so that a phone photo costs no more than a training field."""
    th, tw = training_shape(rgb, ratio)
    h, w = rgb.shape[:2]
    if min(th, tw) < size or h * w <= LARGE_PICTURE * size * size:
        return model_view(to_training_scale(rgb, ratio), size)
    cx, cy = stain_centre(rgb, working)
    fx, fy = w / tw, h / th  # the resize's scale on each axis
    x0 = int(np.clip(round(cx / fx - size / 2), 0, tw - size))
    y0 = int(np.clip(round(cy / fy - size / 2), 0, th - size))
    sx0, sx1 = int(np.floor(x0 * fx)), min(w, int(np.ceil((x0 + size) * fx)))
    sy0, sy1 = int(np.floor(y0 * fy)), min(h, int(np.ceil((y0 + size) * fy)))
    window = rgb[sy0:sy1, sx0:sx1]
    return cv2.resize(window, (size, size), interpolation=cv2.INTER_AREA if ratio > 1 else cv2.INTER_CUBIC)


def stain_centre(rgb: np.ndarray, working: tuple[np.ndarray, float] | None = None) -> tuple[float, float]:
    """(x, y) of the optical-density-weighted centre of the most stained cells (white-cell nuclei stain most)."""
    small, s = working_copy(rgb, working)
    od = optical_density(small)
    weight = np.maximum(od - quantile_f(od, 0.9), 0.0)
    if weight.sum() <= 0:
        return rgb.shape[1] / 2, rgb.shape[0] / 2
    yy, xx = np.indices(od.shape)
    return float((xx * weight).sum() / weight.sum()) / s, float((yy * weight).sum() / weight.sum()) / s


def model_view(rgb: np.ndarray, size: int, working: tuple[np.ndarray, float] | None = None) -> np.ndarray:
    """A square field of ``size`` pixels at the scale it already has: a window of a larger field, centred on its
    most stained cells, or a smaller field extended by reflection (as a smear goes on past the picture).
    ``working``: the picture's :func:`working_copy`, where the caller has it."""
    h, w = rgb.shape[:2]
    if h == size and w == size:
        return rgb
    ph, pw = max(0, size - h), max(0, size - w)
    if ph or pw:
        rgb = cv2.copyMakeBorder(rgb, ph // 2, ph - ph // 2, pw // 2, pw - pw // 2, cv2.BORDER_REFLECT_101)
        h, w = rgb.shape[:2]
        working = None  # a copy of the picture before the reflection: not this one's
    cx, cy = stain_centre(rgb, working)
    x0 = int(np.clip(round(cx - size / 2), 0, w - size))
    y0 = int(np.clip(round(cy - size / 2), 0, h - size))
    return np.ascontiguousarray(rgb[y0 : y0 + size, x0 : x0 + size])
