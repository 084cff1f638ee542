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


def random_affine_matrices(n: int, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """(n, 2, 3) matrices mapping output to input coordinates in affine_grid's normalised [-1, 1] space."""

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, generator=generator) * (hi - lo) + lo

    theta = uniform(-cfg.rotation_deg, cfg.rotation_deg) * (math.pi / 180.0)
    shear = uniform(-cfg.shear, cfg.shear)
    zx = uniform(1 - cfg.zoom, 1 + cfg.zoom)
    zy = uniform(1 - cfg.zoom, 1 + cfg.zoom)
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
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


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
