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
