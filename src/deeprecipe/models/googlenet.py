"""GoogLeNet (Szegedy et al. 2014): inception modules, scaled down for 28x28 and 32x32 images.

Written here because torchvision's ``googlenet`` has the 224 px ImageNet stem, no width or
BatchNorm option, and a 3x3 convolution where the paper's 5x5 branch is (kept there for its
pretrained weights).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from deeprecipe.errors import ConfigError
from deeprecipe.models.base import Backbone
from deeprecipe.models.layers import conv_unit, init_weights, overlapping_max_pool

# Branch widths (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj) of the original's modules
# 3a-3b, 4a-4e and 5a-5b (Table 1 of the paper), one tuple of modules per resolution.
_INCEPTION_STAGES = (
    ((64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64)),
    (
        (192, 96, 208, 16, 48, 64),
        (160, 112, 224, 24, 64, 64),
        (128, 128, 256, 24, 64, 64),
        (112, 144, 288, 32, 64, 64),
        (256, 160, 320, 32, 128, 128),
    ),
    ((256, 160, 320, 32, 128, 128), (384, 192, 384, 48, 128, 128)),
)
_STEM_CHANS = 192
_ORIGINAL_WIDTH = 64


class Inception(nn.Module):
    """Four parallel branches concatenated along channels, all at the input's resolution.

    1x1 conv | 1x1 reduce - 3x3 conv | 1x1 reduce - 5x5 conv | 3x3 max pool - 1x1 projection.
    The 1x1 reductions keep the 3x3 and 5x5 convolutions cheap.
    """

    def __init__(
        self, in_chans: int, widths: tuple[int, ...], activation: str, batch_norm: bool
    ) -> None:
        super().__init__()
        c1, c3_reduce, c3, c5_reduce, c5, pool_proj = widths
        self.branch1 = conv_unit(in_chans, c1, 1, activation, batch_norm)
        self.branch3 = nn.Sequential(
            conv_unit(in_chans, c3_reduce, 1, activation, batch_norm),
            conv_unit(c3_reduce, c3, 3, activation, batch_norm),
        )
        self.branch5 = nn.Sequential(
            conv_unit(in_chans, c5_reduce, 1, activation, batch_norm),
            conv_unit(c5_reduce, c5, 5, activation, batch_norm),
        )
        self.branch_pool = nn.Sequential(
            nn.MaxPool2d(3, stride=1, padding=1),
            conv_unit(in_chans, pool_proj, 1, activation, batch_norm),
        )
        self.out_chans = c1 + c3 + c5 + pool_proj

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, c1 + c3 + c5 + pool_proj, H, W)
        branches = (self.branch1, self.branch3, self.branch5, self.branch_pool)
        return torch.cat([branch(x) for branch in branches], dim=1)


class GoogLeNet(Backbone):
    """A small-image GoogLeNet: stem, then inception modules 3a-3b, 4a-4e and 5a-5b.

    stem (3x3 conv - pool) - 3a, 3b - pool - 4a..4e - pool - 5a, 5b - global average pool.
    The original's ImageNet stem (7x7 stride 2 and three more convolutions, two pools) becomes one
    3x3 convolution and one pool, and its auxiliary classifiers are left out (BatchNorm does
    their job of getting gradient to the early layers). Pools are 3x3 stride 2 with padding 1,
    so 28 px runs 3a-3b at 14x14, 4a-4e at 7x7 and 5a-5b at 4x4 (32 px: 16, 8, 4).

    Args:
        in_chans: input channels.
        width: scales every width of the original by width / 64 (64 is the original; the
            default 16 keeps a quarter); ``num_features`` is 16 x width.
        batch_norm: BatchNorm after every convolution (Inception-v2 style); without it the
            module is the 2014 original.
        activation: one of :data:`deeprecipe.models.layers.ACTIVATIONS`.
        init: one of :data:`deeprecipe.models.layers.INIT_SCHEMES`.
        relu_bias: initial bias of the convolutions (they have none with ``batch_norm``).
    """

    def __init__(
        self,
        in_chans: int = 3,
        width: int = 16,
        batch_norm: bool = True,
        activation: str = "relu",
        init: str = "kaiming",
        relu_bias: float = 0.0,
    ) -> None:
        super().__init__()
        if width < 1:
            raise ConfigError(f"GoogLeNet width={width}; use a positive width (64: original).")

        def scaled(chans: int) -> int:
            return max(1, round(chans * width / _ORIGINAL_WIDTH))

        chans = scaled(_STEM_CHANS)  # 3 x width
        self.stem = nn.Sequential(
            conv_unit(in_chans, chans, 3, activation, batch_norm), overlapping_max_pool()
        )
        stages: list[nn.Module] = []
        for index, modules in enumerate(_INCEPTION_STAGES):
            layers: list[nn.Module] = [] if index == 0 else [overlapping_max_pool()]
            for widths in modules:
                inception = Inception(
                    chans, tuple(scaled(c) for c in widths), activation, batch_norm
                )
                layers.append(inception)
                chans = inception.out_chans
            stages.append(nn.Sequential(*layers))
        self.layers = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.num_features = chans
        init_weights(self, init, relu_bias)

    def forward_features(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, 16 * width)
        x = self.stem(x)  # (B, 3 * width, H/2, W/2), sides rounded up
        x = self.layers(x)  # (B, 16 * width, H/8, W/8)
        return self.pool(x)

    def stages(self) -> list[nn.Module]:
        return [self.stem, *self.layers]
