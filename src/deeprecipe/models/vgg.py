"""VGG-11/13/16 (Simonyan and Zisserman 2014) for small images.

Written here because torchvision's ``vgg*`` end in a 7x7 adaptive pool and two 4096-wide FC
layers (over 100 M parameters) sized for 224 px inputs; the conv stack is the same (see the
test against torchvision's parameter counts).
"""

from __future__ import annotations

from torch import Tensor, nn

from deeprecipe.errors import ConfigError
from deeprecipe.models.base import Backbone
from deeprecipe.models.layers import FractionalMaxPool, check_pool, conv_unit, init_weights

# 3x3 convolutions in each of the five stages of configurations A (11), B (13) and D (16)
_CONVS_PER_STAGE = {11: (1, 1, 2, 2, 2), 13: (2, 2, 2, 2, 2), 16: (2, 2, 3, 3, 3)}
_STAGE_MULTIPLIERS = (1, 2, 4, 8, 8)


class VGG(Backbone):
    """Five stages of 3x3 convolutions, each closed by a 2x2 max pool, then global average pool.

    ``depth`` names the original configuration by its weight layers; the three fully connected
    layers among them are left out, as in the common CIFAR variants: the method's linear head
    replaces the last, global pooling the other two. Pools round up (``ceil_mode``), so five
    of them take both 28 px (28 -> 14 -> 7 -> 4 -> 2 -> 1) and 32 px inputs to 1x1 instead
    of collapsing 28 px to nothing; larger inputs are averaged over what remains.

    Args:
        depth: 11, 13 or 16.
        in_chans: input channels.
        width: channels of the first stage; stages have width x (1, 2, 4, 8, 8), so 64 is the
            original and ``num_features`` is 8 x width.
        batch_norm: BatchNorm after every convolution (torchvision's ``vgg*_bn``); without it
            the net is the 2014 original, which needs care with init and learning rate.
        pool: ``max`` (2x2 stride-2 pools) or ``fractional``
            (:class:`~deeprecipe.models.layers.FractionalMaxPool`, same output sizes).
        activation: one of :data:`deeprecipe.models.layers.ACTIVATIONS`.
        init: one of :data:`deeprecipe.models.layers.INIT_SCHEMES`.
        relu_bias: initial bias of the convolutions (they have none with ``batch_norm``).
    """

    def __init__(
        self,
        depth: int = 11,
        in_chans: int = 3,
        width: int = 16,
        batch_norm: bool = True,
        pool: str = "max",
        activation: str = "relu",
        init: str = "kaiming",
        relu_bias: float = 0.0,
    ) -> None:
        super().__init__()
        if depth not in _CONVS_PER_STAGE:
            raise ConfigError(f"VGG depth={depth}; choose one of {sorted(_CONVS_PER_STAGE)}.")
        if width < 1:
            raise ConfigError(f"VGG width={width}; use a positive channel count (64: original).")
        check_pool("VGG", pool)
        stages: list[nn.Module] = []
        chans = in_chans
        for convs, multiplier in zip(_CONVS_PER_STAGE[depth], _STAGE_MULTIPLIERS, strict=True):
            layers: list[nn.Module] = []
            for _ in range(convs):
                layers.append(conv_unit(chans, width * multiplier, 3, activation, batch_norm))
                chans = width * multiplier
            layers.append(nn.MaxPool2d(2, ceil_mode=True) if pool == "max" else FractionalMaxPool())
            stages.append(nn.Sequential(*layers))
        self.layers = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.num_features = chans
        init_weights(self, init, relu_bias)

    def forward_features(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, 8 * width)
        return self.pool(self.layers(x))  # layers: (B, 8 * width, ceil(H / 32), ceil(W / 32))

    def stages(self) -> list[nn.Module]:
        return list(self.layers)
