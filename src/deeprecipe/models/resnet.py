"""Residual networks: ResNet-18/34 (He et al. 2016) with a small-image stem, and ResNet-9.

ResNet-9 is the compact residual net of the DAWNBench CIFAR-10 entries (Page 2018): four
conv-BN-ReLU blocks with max pooling and two residual blocks. At width 16 it trains Fashion-MNIST
to ~94% in minutes on a CPU, which makes it the suite's default model.
"""

from __future__ import annotations

from torch import Tensor, nn

from deeprecipe.errors import ConfigError
from deeprecipe.models.base import Backbone

_BLOCKS_PER_STAGE = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


def conv_bn_relu(in_chans: int, out_chans: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_chans, out_chans, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_chans),
        nn.ReLU(inplace=True),
    )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut."""

    def __init__(self, in_chans: int, out_chans: int, stride: int) -> None:
        super().__init__()
        self.conv1 = conv_bn_relu(in_chans, out_chans, stride)
        self.conv2 = nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chans)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_chans != out_chans:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_chans, out_chans, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_chans),
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn2(self.conv2(self.conv1(x))) + self.shortcut(x))


class ResNet(Backbone):
    """ResNet-18 or -34 of configurable width.

    Args:
        depth: 18 or 34.
        in_chans: input channels.
        width: channels of the first stage; stages have width x (1, 2, 4, 8).
        small_input: 3x3 stride-1 stem without max pooling, for 28/32 px images; otherwise the
            ImageNet stem (7x7 stride 2 and max pooling).
        zero_init_residual: start each block's last BatchNorm at zero, so every block begins as
            the identity (Goyal et al. 2017).
    """

    def __init__(
        self,
        depth: int = 18,
        in_chans: int = 3,
        width: int = 64,
        small_input: bool = True,
        zero_init_residual: bool = True,
    ) -> None:
        super().__init__()
        if depth not in _BLOCKS_PER_STAGE:
            raise ConfigError(f"ResNet depth={depth}; choose one of {sorted(_BLOCKS_PER_STAGE)}.")
        if small_input:
            self.stem: nn.Module = conv_bn_relu(in_chans, width)
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_chans, width, 7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        layers = []
        in_width = width
        for index, blocks in enumerate(_BLOCKS_PER_STAGE[depth]):
            out_width = width * 2**index
            stride = 1 if index == 0 else 2
            stage = [BasicBlock(in_width, out_width, stride)]
            stage += [BasicBlock(out_width, out_width, 1) for _ in range(blocks - 1)]
            layers.append(nn.Sequential(*stage))
            in_width = out_width
        self.layers = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.num_features = in_width
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, BasicBlock):
                    nn.init.zeros_(module.bn2.weight)

    def forward_features(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, 8 * width)
        return self.pool(self.layers(self.stem(x)))

    def stages(self) -> list[nn.Module]:
        return [self.stem, *self.layers]


class Residual(nn.Module):
    """x + f(x) with f two conv-BN-ReLU blocks of the same width."""

    def __init__(self, chans: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn_relu(chans, chans), conv_bn_relu(chans, chans))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ResNet9(Backbone):
    """ResNet-9: prep, three pooled stages (the first and last with a residual block), max pool.

    Channels are width x (1, 2, 4, 8); ``num_features`` is 8 x width.
    """

    def __init__(self, in_chans: int = 3, width: int = 64) -> None:
        super().__init__()
        self.prep = conv_bn_relu(in_chans, width)
        self.layer1 = nn.Sequential(
            conv_bn_relu(width, 2 * width), nn.MaxPool2d(2), Residual(2 * width)
        )
        self.layer2 = nn.Sequential(conv_bn_relu(2 * width, 4 * width), nn.MaxPool2d(2))
        self.layer3 = nn.Sequential(
            conv_bn_relu(4 * width, 8 * width), nn.MaxPool2d(2), Residual(8 * width)
        )
        self.pool = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.num_features = 8 * width

    def forward_features(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, 8 * width)
        return self.pool(self.layer3(self.layer2(self.layer1(self.prep(x)))))

    def stages(self) -> list[nn.Module]:
        return [self.prep, self.layer1, self.layer2, self.layer3]
