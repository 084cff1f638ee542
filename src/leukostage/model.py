"""Architectures as plain torch modules (training path only).

``forward`` = ``forward_features`` (the convolutional blocks) then ``forward_head`` (the dense classifier):
the split that Grad-CAM and the ONNX export with feature maps need. ``forward_maps`` also returns the last
convolutional layer's activations before its pooling (16x16 at 128 px input), the layer Grad-CAM explains.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .classes import CLASS_KEYS
from .imaging import BACKGROUND_LEVEL, BACKGROUND_QUANTILE, IMAGE_SIZE, MIN_BACKGROUND_LEVEL


@dataclass
class ModelConfig:
    arch: str = "paper"
    image_size: int = IMAGE_SIZE
    num_classes: int = len(CLASS_KEYS)
    filters: tuple[int, ...] = (32, 64, 128, 256)
    dense: tuple[int, ...] = (256, 128)
    conv_dropout: float = 0.25
    dense_dropout: float = 0.5
    colour_norm: bool = False  # ColourNormalise in front of the blocks (no parameters; False = the paper's input)


class ColourNormalise(nn.Module):
    """Per image and channel, scale so the background level (a high percentile) lands on one neutral grey.

    Why: the Taleqani classes were photographed in different sessions, each with its own background tint and
    illumination, which a CNN learns instead of cells. A per-channel gain (white balance, lamp colour, exposure)
    multiplies every percentile of that channel by the same factor, so this division removes it exactly: the
    network never sees the acquisition tint. Part of the model, so ONNX and serving apply it unchanged.
    """

    def __init__(self, image_size: int = IMAGE_SIZE, quantile: float = BACKGROUND_QUANTILE,
                 level: float = BACKGROUND_LEVEL):
        super().__init__()
        self.level = level
        self.k = max(1, round((1.0 - quantile) * image_size * image_size))  # a constant, so the ONNX graph has one

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(2)  # (N, C, H*W)
        background = flat.topk(self.k, dim=-1).values[..., -1:]  # the k-th brightest value: TopK exports to ONNX
        return x * (self.level / background.clamp_min(MIN_BACKGROUND_LEVEL)).unsqueeze(-1)


class ConvBlock(nn.Sequential):
    """Table 4 block: 2x (Conv3x3 'same' + ReLU), BatchNorm, MaxPool 2x2, Dropout."""

    POOL_AT = 5  # layers before this index convolve (conv, ReLU, conv, ReLU, BatchNorm); the rest pool

    def __init__(self, c_in: int, c_out: int, dropout: float):
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.BatchNorm2d(c_out),
            nn.MaxPool2d(2),
            nn.Dropout(dropout),
        )

    def convolve(self, x: torch.Tensor) -> torch.Tensor:
        """The block up to its pooling: the activations Grad-CAM reads (its gradient passes the max pool intact)."""
        for layer in list(self)[: self.POOL_AT]:
            x = layer(x)
        return x

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        for layer in list(self)[self.POOL_AT :]:
            x = layer(x)
        return x


class PaperCNN(nn.Module):
    """The seed paper's CNN (Table 4): 5,401,188 trainable parameters at 128x128 input.

    Takes (N, 3, H, W) floats in [0, 1]; returns logits (softmax is applied by the loss and at export).
    With ``colour_norm`` the input first passes :class:`ColourNormalise` (no parameters: the count is unchanged).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.normalise = ColourNormalise(cfg.image_size) if cfg.colour_norm else nn.Identity()
        chans = (3, *cfg.filters)
        self.blocks = nn.Sequential(*(ConvBlock(a, b, cfg.conv_dropout) for a, b in zip(chans, chans[1:])))
        side = cfg.image_size // 2 ** len(cfg.filters)  # 128 -> 8
        self.feature_shape = (cfg.filters[-1], side, side)  # what forward_features returns per image: (C, h, w)
        layers: list[nn.Module] = [nn.Flatten()]
        width = cfg.filters[-1] * side * side  # 16384
        for units in cfg.dense:
            layers += [nn.Linear(width, units), nn.ReLU(inplace=True), nn.Dropout(cfg.dense_dropout)]
            width = units
        layers.append(nn.Linear(width, cfg.num_classes))
        self.head = nn.Sequential(*layers)

    def forward_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(last conv layer's activations (N, 256, 16, 16), pooled features the head reads (N, 256, 8, 8))."""
        h = self.blocks[:-1](self.normalise(x))
        maps = self.blocks[-1].convolve(h)
        return maps, self.blocks[-1].pool(maps)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_maps(x)[1]  # (N, 256, 8, 8)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        # Keras flattens channels-last (H, W, C); match it so the head's weights mean the same thing.
        return self.head(features.permute(0, 2, 3, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


ARCHITECTURES: dict[str, type[nn.Module]] = {"paper": PaperCNN}


def build_model(cfg: ModelConfig | None = None, **overrides) -> nn.Module:
    """Build an architecture by name; an unknown name lists the valid ones."""
    cfg = cfg or ModelConfig()
    for key, value in overrides.items():
        setattr(cfg, key, value)
    if cfg.arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {cfg.arch!r}; expected one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[cfg.arch](cfg)


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def config_dict(cfg: ModelConfig) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}


def config_from_dict(d: dict) -> ModelConfig:
    """The inverse of :func:`config_dict`, for configs stored in checkpoints and model cards (JSON has no tuples)."""
    return ModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
