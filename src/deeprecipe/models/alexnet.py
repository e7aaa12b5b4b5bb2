"""AlexNet (Krizhevsky et al. 2012) scaled down for 28x28 and 32x32 images.

Written here because torchvision's ``alexnet`` is built for 224 px inputs: its 11x11 stride-4
stem and 4096-wide FC layers leave nothing of a 28 px image.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from deeprecipe.errors import ConfigError
from deeprecipe.models.base import Backbone
from deeprecipe.models.layers import (
    FractionalMaxPool,
    check_pool,
    conv_unit,
    init_weights,
    linear,
    make_activation,
    overlapping_max_pool,
)


class AlexNet(Backbone):
    """Five convolutions, three overlapping max pools, two fully connected layers with dropout.

    conv 5x5 (c1) - pool - conv 5x5 (c2) - pool - conv 3x3 (c3) - conv 3x3 (c4) - conv 3x3 (c5)
    - pool - [dropout - fc (hidden) - activation] x 2. The method's head is the third FC layer.

    The original's layout at a quarter of its widths: channels (96, 256, 384, 384, 256) and
    4096 hidden units become (24, 64, 96, 96, 64) and 256. Its 11x11 stride-4 first convolution
    becomes 5x5 stride 1, because 28-32 px images have no resolution to spare; local response
    normalization is left out (BatchNorm has replaced it). 28 and 32 px inputs both end at 4x4
    (28 -> 14 -> 7 -> 4, 32 -> 16 -> 8 -> 4).

    Args:
        in_chans, image_size: input shape (C, H, W = image_size).
        channels: output channels of the five convolutions.
        hidden: width of both FC layers, which is ``num_features``.
        dropout: dropout before each FC layer (the original's 0.5).
        dropconnect: DropConnect probability of both FC layers' weights (see
            :class:`~deeprecipe.models.layers.DropConnectLinear`); 0 keeps plain linear layers.
        pool: ``max`` (the original's overlapping 3x3 stride-2 pools) or ``fractional``
            (:class:`~deeprecipe.models.layers.FractionalMaxPool`, same output sizes).
        activation: one of :data:`deeprecipe.models.layers.ACTIVATIONS` (the original: relu).
        init: one of :data:`deeprecipe.models.layers.INIT_SCHEMES`.
        relu_bias: initial bias of every layer (see :func:`~deeprecipe.models.layers.init_weights`).
    """

    def __init__(
        self,
        in_chans: int,
        image_size: int,
        channels: Sequence[int] = (24, 64, 96, 96, 64),
        hidden: int = 256,
        dropout: float = 0.5,
        dropconnect: float = 0.0,
        pool: str = "max",
        activation: str = "relu",
        init: str = "kaiming",
        relu_bias: float = 0.0,
    ) -> None:
        super().__init__()
        if len(channels) != 5:
            raise ConfigError(f"AlexNet channels={list(channels)}; give five conv widths.")
        check_pool("AlexNet", pool)

        def pooling() -> nn.Module:
            return overlapping_max_pool() if pool == "max" else FractionalMaxPool()

        c1, c2, c3, c4, c5 = channels
        self.block1 = nn.Sequential(conv_unit(in_chans, c1, 5, activation), pooling())
        self.block2 = nn.Sequential(conv_unit(c1, c2, 5, activation), pooling())
        self.block3 = nn.Sequential(
            conv_unit(c2, c3, 3, activation),
            conv_unit(c3, c4, 3, activation),
            conv_unit(c4, c5, 3, activation),
            pooling(),
        )
        side = image_size
        for _ in range(3):
            side = (side - 1) // 2 + 1
        self.fc = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            linear(c5 * side * side, hidden, dropconnect),
            make_activation(activation),
            nn.Dropout(dropout),
            linear(hidden, hidden, dropconnect),
            make_activation(activation),
        )
        self.num_features = hidden
        init_weights(self, init, relu_bias)

    def forward_features(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, hidden)
        x = self.block1(x)  # (B, c1, H/2, W/2)
        x = self.block2(x)  # (B, c2, H/4, W/4)
        x = self.block3(x)  # (B, c5, H/8, W/8), sides rounded up
        return self.fc(x)

    def stages(self) -> list[nn.Module]:
        return [self.block1, self.block2, self.block3, self.fc]
