"""Augmentation on whole batches (training only): an affine warp and stain jitter per image, sampled in one call.

The affine warp's defaults are Table 3's: rotation +-30 deg, width/height shift 0.2, shear 0.2 (radians, as Keras),
zoom 0.8-1.2, horizontal flip, 'nearest' fill (edge pixels repeat, i.e. border padding); recipes may choose others
(``train.CELL_AUGMENT``). Stain jitter (:class:`StainConfig`, not in the paper) scales and shifts each image's stain
amounts in optical-density space, on the stain basis of :data:`leukostage.imaging.STAIN_BASIS`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..imaging import STAIN_BASIS


@dataclass(frozen=True)
class AugmentConfig:
    rotation_deg: float = 30.0
    width_shift: float = 0.2
    height_shift: float = 0.2
    shear: float = 0.2
    zoom: float = 0.2
    horizontal_flip: bool = True
    # isotropic magnification (log-uniform between the two factors; None: none): another objective, camera adapter
    # or eyepiece photo makes every structure larger or smaller by one factor, unlike Table 3's per-axis zoom
    magnification: tuple[float, float] | None = None
    padding: str = "border"  # grid_sample's padding: border (Keras 'nearest') | reflection (a smear goes on)


def random_affine_matrices(n: int, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """(n, 2, 3) matrices mapping output to input coordinates in affine_grid's normalised [-1, 1] space."""

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, generator=generator) * (hi - lo) + lo

    theta = uniform(-cfg.rotation_deg, cfg.rotation_deg) * (math.pi / 180.0)
    shear = uniform(-cfg.shear, cfg.shear)
    zx = uniform(1 - cfg.zoom, 1 + cfg.zoom)
    zy = uniform(1 - cfg.zoom, 1 + cfg.zoom)
    if cfg.magnification is not None:  # sampling a region 1/m as wide shows everything m times larger
        lo, hi = (math.log(m) for m in cfg.magnification)
        m = torch.exp(uniform(lo, hi))
        zx, zy = zx / m, zy / m
    tx = uniform(-cfg.width_shift, cfg.width_shift) * 2.0  # fraction of width -> normalised units
    ty = uniform(-cfg.height_shift, cfg.height_shift) * 2.0
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if cfg.horizontal_flip else torch.ones(n)

    cos, sin = torch.cos(theta), torch.sin(theta)
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    shr = torch.stack(
        [torch.stack([torch.ones(n), -torch.sin(shear)], -1), torch.stack([torch.zeros(n), torch.cos(shear)], -1)], -2
    )
    zoom = torch.diag_embed(torch.stack([zx * flip, zy], -1))
    linear = rot @ shr @ zoom
    return torch.cat([linear, torch.stack([tx, ty], -1).unsqueeze(-1)], -1)


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Warp a (N, C, H, W) float batch; border padding is Keras' fill_mode='nearest'."""
    theta = random_affine_matrices(x.shape[0], cfg, generator).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=cfg.padding, align_corners=False)


@dataclass(frozen=True)
class StainConfig:
    """Stain-space jitter (Tellez et al. 2018), not in the paper: labs stain and photograph differently, and the
    model's colour normalisation removes only per-channel gains. Each image's optical density is split into three
    stain components (``imaging.STAIN_BASIS``: scikit-image's H-E-DAB basis, a generic mixing basis rather than a
    Giemsa model); each
    component is scaled by 1 +- ``scale`` and shifted by +- ``shift`` before recombining."""

    scale: float = 0.15
    shift: float = 0.03
    apply_p: float = 0.9


RGB_FROM_HED = torch.tensor(STAIN_BASIS, dtype=torch.float32)  # rows: the optical-density colours of the stains
MIN_INTENSITY = 1.0 / 255.0  # keeps log() finite on black pixels


def _uniform(shape: tuple[int, ...], lo: float, hi: float, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(shape, generator=generator) * (hi - lo) + lo


def stain_jitter(x: torch.Tensor, cfg: StainConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """x: (N, 3, H, W) in [0, 1] -> the same images with randomly changed stain amounts, in [0, 1]."""
    n = x.shape[0]
    basis = RGB_FROM_HED / RGB_FROM_HED.norm(dim=1, keepdim=True)
    od = -torch.log(x.clamp_min(MIN_INTENSITY)).permute(0, 2, 3, 1)  # (N, H, W, 3)
    stains = od @ torch.linalg.inv(basis)
    scale = _uniform((n, 1, 1, 3), 1 - cfg.scale, 1 + cfg.scale, generator)
    shift = _uniform((n, 1, 1, 3), -cfg.shift, cfg.shift, generator)
    keep = (torch.rand(n, 1, 1, 1, generator=generator) >= cfg.apply_p).float()
    scale, shift = keep + (1 - keep) * scale, (1 - keep) * shift
    jittered = torch.exp(-((stains * scale + shift) @ basis)).permute(0, 3, 1, 2)
    return jittered.clamp(0.0, 1.0)


# --- the capture chain: what another laboratory's stain, microscope and camera do to a field (issue 18) ----------
@dataclass(frozen=True)
class CaptureConfig:
    """Ranges of the capture-chain nuisances, each applied to an image with its own probability (``*_p``).

    In the order light meets them: stain (optical density scaled and its channels mixed: Beer-Lambert, so a thicker
    or differently buffered stain changes OD, not intensity), focus (Gaussian blur), illumination (exposure gain,
    vignetting), the sensor (Gaussian noise, then clipping at full scale), the camera's tone curve (gamma) and its
    compression (JPEG). Ranges reach past the mild levels a laboratory produces every day, so those are interior.
    """

    stain_strength: tuple[float, float] = (0.6, 1.6)  # OD multiplier, log-uniform
    stain_mix: float = 0.12  # off-diagonal OD mixing (hue), uniform +-
    stain_gain: float = 0.2  # per-channel OD gain, uniform 1 +-
    stain_p: float = 0.8
    blur_sigma: tuple[float, float] = (0.3, 2.2)  # pixels at the model's input scale
    blur_p: float = 0.4
    exposure: tuple[float, float] = (0.4, 1.35)  # intensity gain, log-uniform; above 1 the background clips
    exposure_p: float = 0.6
    vignetting: tuple[float, float] = (0.0, 0.35)  # darkening at the corners: 1 - v * r^2
    vignetting_p: float = 0.3
    noise_sd: tuple[float, float] = (0.0, 10.0 / 255.0)
    noise_p: float = 0.4
    gamma: tuple[float, float] = (0.75, 1.35)  # log-uniform
    gamma_p: float = 0.3
    jpeg_quality: tuple[int, int] = (10, 95)
    jpeg_p: float = 0.5


def _chance(n: int, p: float, generator: torch.Generator | None) -> torch.Tensor:
    """(n,) 1.0 where a nuisance applies, else 0.0."""
    return (torch.rand(n, generator=generator) < p).float()


def _log_uniform(n: int, lo: float, hi: float, generator: torch.Generator | None) -> torch.Tensor:
    return torch.exp(_uniform((n,), math.log(lo), math.log(hi), generator))


def mix_od(x: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
    """Each image's optical density (N, 3, H, W) in [0, 1] mapped by its 3x3 matrix (N, 3, 3): a stain of another
    strength (a multiple of the identity) or hue (channels mixed). Beer-Lambert: a stain changes OD, not intensity."""
    od = -torch.log(x.clamp_min(MIN_INTENSITY))
    return torch.exp(-torch.einsum("nij,njhw->nihw", mix.to(x.dtype), od)).clamp(0.0, 1.0)


def stain_od(x: torch.Tensor, cfg: CaptureConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Another stain's strength and hue, sampled per image from ``cfg``."""
    n = x.shape[0]
    on = _chance(n, cfg.stain_p, generator)[:, None, None]
    strength = 1 + on[:, 0] * (_log_uniform(n, *cfg.stain_strength, generator)[:, None] - 1)
    mix = torch.eye(3) + on * _uniform((n, 3, 3), -cfg.stain_mix, cfg.stain_mix, generator) * (1 - torch.eye(3))
    gain = 1 + on[:, :, 0] * _uniform((n, 3), -cfg.stain_gain, cfg.stain_gain, generator)
    return mix_od(x, mix * gain[:, :, None] * strength[:, :, None])


def magnify(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Every image (N, C, H, W) seen ``factor`` times larger about its centre (below 1: smaller, reflected)."""
    theta = torch.tensor([[1.0 / factor, 0.0, 0.0], [0.0, 1.0 / factor, 0.0]], dtype=x.dtype).expand(len(x), 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each image (N, C, H, W) with its own sigma (N,) in pixels (0: unchanged); reflected borders."""
    n, c, h, w = x.shape
    radius = max(1, math.ceil(3 * float(sigma.max())))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t[None] / sigma.clamp_min(1e-3)[:, None].to(x.dtype)) ** 2)
    k = torch.where(sigma[:, None] > 0, k, (t[None] == 0).to(x.dtype))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (N*C, taps)
    y = F.pad(x.reshape(1, n * c, h, w), (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k[:, None, None, :], groups=n * c)
    y = F.conv2d(y, k[:, None, :, None], groups=n * c)
    return y.reshape(n, c, h, w)


def jpeg_roundtrip(x: torch.Tensor, quality: list[int | None]) -> torch.Tensor:
    """Encode and decode each image (N, 3, H, W) RGB in [0, 1] as JPEG at its quality (None: unchanged)."""
    import cv2
    import numpy as np

    out = x.clone()
    u8 = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i, q in enumerate(quality):
        if q is None:
            continue
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(u8[i, :, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(q)])
        rgb = cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1]
        out[i] = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).to(x.dtype) / 255.0
    return out


def capture_chain(x: torch.Tensor, cfg: CaptureConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """x: (N, 3, H, W) RGB in [0, 1] -> the same fields as another stain, microscope and camera would give them."""
    n, _, h, w = x.shape
    x = stain_od(x, cfg, generator)
    sigma = _chance(n, cfg.blur_p, generator) * _uniform((n,), *cfg.blur_sigma, generator)
    if bool((sigma > 0).any()):
        x = gaussian_blur(x, sigma)
    gain = 1 + _chance(n, cfg.exposure_p, generator) * (_log_uniform(n, *cfg.exposure, generator) - 1)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    v = _chance(n, cfg.vignetting_p, generator) * _uniform((n,), *cfg.vignetting, generator)
    light = gain[:, None, None] * (1 - v[:, None, None] * (xx**2 + yy**2)[None] / 2)
    x = x * light[:, None].to(x.dtype)
    sd = _chance(n, cfg.noise_p, generator) * _uniform((n,), *cfg.noise_sd, generator)
    x = (x + sd[:, None, None, None] * torch.randn(x.shape, generator=generator)).clamp(0.0, 1.0)
    gamma = 1 + _chance(n, cfg.gamma_p, generator) * (_log_uniform(n, *cfg.gamma, generator) - 1)
    x = x.clamp_min(1e-6) ** gamma[:, None, None, None]
    q = _uniform((n,), cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1, generator).floor().int().tolist()
    use = _chance(n, cfg.jpeg_p, generator).tolist()
    return jpeg_roundtrip(x, [int(qi) if u else None for qi, u in zip(q, use)])


def eyepiece_photo(
    rgb, magnification: float = 2.2, radius: float = 0.47, fall_off: float = 0.3, blur: float = 1.0, quality=95
):
    """A phone photo through the eyepiece of a field (uint8 RGB), every parameter fixed: magnified, a round field
    stop of ``radius`` (of the photo's side) whose light falls off as 1 - ``fall_off`` r^2, a black surround, a
    Gaussian blur of ``blur`` px, then a JPEG at ``quality`` (None: none). The tests and the benchmark take it
    as it is; :func:`simulate_eyepiece` draws the parameters."""
    import cv2
    import numpy as np

    side = int(max(rgb.shape[:2]) * magnification)
    big = cv2.resize(rgb, (side, side), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    yy, xx = np.mgrid[:side, :side]
    r = np.hypot(xx - side / 2, yy - side / 2) / (radius * side)
    big *= np.clip(1 - fall_off * r**2, 0, 1)[..., None]
    big[r > 1] = 0
    if blur > 0:
        big = cv2.GaussianBlur(big, (0, 0), blur)
    photo = np.clip(big, 0, 255).astype(np.uint8)
    if quality is None:
        return photo
    ok, buf = cv2.imencode(".jpg", photo[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1])


def simulate_eyepiece(rgb, rng, magnification: float = 2.2):
    """:func:`eyepiece_photo` with a random field stop, fall-off and blur, at JPEG quality 70: for the validator's
    calibration smears and the validation shifts."""
    radius, fall_off, blur = rng.uniform(0.4, 0.5), rng.uniform(0.1, 0.35), rng.uniform(0.5, 1.5)
    return eyepiece_photo(rgb, magnification, radius, fall_off, blur, quality=70)


def capture_image(rgb, cfg: CaptureConfig, seed: int):
    """:func:`capture_chain` on one uint8 RGB image (the validator's calibration smears take the model's chain)."""
    import numpy as np

    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 255.0
    y = capture_chain(x, cfg, torch.Generator().manual_seed(seed))
    return (y[0].permute(1, 2, 0).numpy() * 255.0).round().clip(0, 255).astype(np.uint8)
