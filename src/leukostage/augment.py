"""Table 3 augmentation on whole batches (training only): one affine warp per image, sampled in one call.

rotation +-30 deg, width/height shift 0.2, shear 0.2 (radians, as Keras), zoom 0.8-1.2, horizontal flip,
'nearest' fill (edge pixels repeat, i.e. border padding).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


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
class ColourConfig:
    """Shortcut-breaking augmentation (not in the paper). The Taleqani classes differ in background tint and
    illumination (acquisition sessions), so a model can learn those instead of cells. Each training image has its
    channels rescaled so that its background (the brightest pixels of a bright-field photo) lands on a random
    near-neutral colour: after this, background colour carries no class information."""

    brightness: tuple[float, float] = (0.75, 1.0)  # target background brightness
    tint: float = 0.08  # +- per-channel deviation of the target background from neutral
    apply_p: float = 0.9
    background_quantile: float = 0.6  # pixels brighter (mean over channels) than this quantile count as background


def _uniform(shape: tuple[int, ...], lo: float, hi: float, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(shape, generator=generator) * (hi - lo) + lo


def background_colour(x: torch.Tensor, quantile: float) -> torch.Tensor:
    """(N, 3) mean colour of each image's brightest pixels: the empty slide in a bright-field smear photo.

    Needs no segmentation (the dataset's own masks are nearly empty for one class)."""
    lum = x.mean(1).flatten(1)  # (N, H*W)
    threshold = torch.quantile(lum, quantile, dim=1, keepdim=True)
    bg = (lum >= threshold).float().unsqueeze(1)  # (N, 1, H*W)
    return (x.flatten(2) * bg).sum(2) / bg.sum(2).clamp_min(1.0)


def randomise_background(x: torch.Tensor, cfg: ColourConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """x: (N, 3, H, W) in [0, 1]. Per image, one gain per channel moves the background to a random target colour."""
    n = x.shape[0]
    target = _uniform((n, 1), *cfg.brightness, generator) * _uniform((n, 3), 1 - cfg.tint, 1 + cfg.tint, generator)
    gains = (target / background_colour(x, cfg.background_quantile).clamp_min(0.05)).clamp(0.5, 2.0)
    apply = (torch.rand(n, 1, generator=generator) < cfg.apply_p).float()
    gains = apply * gains + (1 - apply)
    return (x * gains[:, :, None, None]).clamp(0.0, 1.0)
