"""Residual networks: ResNet-18/34 (He et al. 2016) with a small-image stem, and ResNet-9.

ResNet-9 is the compact residual net of the DAWNBench CIFAR-10 entries (Page 2018): four
conv-BN-ReLU blocks with max pooling and two residual blocks. At width 16 it trains Fashion-MNIST
to ~94% in minutes on a CPU, which makes it the suite's default model.

Both take two regularization switches: ``batch_norm`` (off: the convolutions get biases and no
normalization, for the with/without BatchNorm comparison) and ``drop_path_rate``, stochastic
depth (Huang et al. 2016): in training each residual branch is dropped for a whole sample with a
probability that grows linearly with depth, block l of L getting ``drop_path_rate * l / L``; the
kept branches are scaled by 1 / (1 - p), and evaluation runs every branch unscaled.
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.ops import StochasticDepth

from deeprecipe.errors import ConfigError
from deeprecipe.models.base import Backbone

_BLOCKS_PER_STAGE = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


def conv_bn_relu(
    in_chans: int, out_chans: int, stride: int = 1, batch_norm: bool = True
) -> nn.Sequential:
    """3x3 conv - [BatchNorm] - ReLU; the convolution has a bias only without BatchNorm."""
    return nn.Sequential(
        nn.Conv2d(in_chans, out_chans, 3, stride=stride, padding=1, bias=not batch_norm),
        nn.BatchNorm2d(out_chans) if batch_norm else nn.Identity(),
        nn.ReLU(inplace=True),
    )


def drop_path_rates(drop_path_rate: float, blocks: int) -> list[float]:
    """Stochastic-depth probability of each residual block: ``drop_path_rate * l / blocks``."""
    if not 0.0 <= drop_path_rate < 1.0:
        raise ConfigError(f"model.drop_path_rate={drop_path_rate}; it must be in [0, 1).")
    return [drop_path_rate * (index + 1) / blocks for index in range(blocks)]


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut.

    The residual branch passes through stochastic depth (``drop_path`` is its probability) before
    the sum: ``relu(drop(bn2(conv2(conv1(x)))) + shortcut(x))``.
    """

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        stride: int,
        batch_norm: bool = True,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.conv1 = conv_bn_relu(in_chans, out_chans, stride, batch_norm)
        self.conv2 = nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=not batch_norm)
        self.bn2: nn.Module = nn.BatchNorm2d(out_chans) if batch_norm else nn.Identity()
        self.drop_path = StochasticDepth(drop_path, mode="row")
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_chans != out_chans:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_chans, out_chans, 1, stride=stride, bias=not batch_norm),
                nn.BatchNorm2d(out_chans) if batch_norm else nn.Identity(),
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, out, H / stride, W / stride)
        branch = self.bn2(self.conv2(self.conv1(x)))
        return self.relu(self.drop_path(branch) + self.shortcut(x))


class ResNet(Backbone):
    """ResNet-18 or -34 of configurable width.

    Args:
        depth: 18 or 34.
        in_chans: input channels.
        width: channels of the first stage; stages have width x (1, 2, 4, 8).
        small_input: 3x3 stride-1 stem without max pooling, for 28/32 px images; otherwise the
            ImageNet stem (7x7 stride 2 and max pooling).
        zero_init_residual: start each block's last BatchNorm at zero (without BatchNorm: its
            last convolution, as Fixup does), so every block begins as the identity (Goyal et
            al. 2017).
        batch_norm: BatchNorm after every convolution; off, the convolutions get biases.
        drop_path_rate: stochastic-depth probability of the last block, reached linearly.
    """

    def __init__(
        self,
        depth: int = 18,
        in_chans: int = 3,
        width: int = 64,
        small_input: bool = True,
        zero_init_residual: bool = True,
        batch_norm: bool = True,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if depth not in _BLOCKS_PER_STAGE:
            raise ConfigError(f"ResNet depth={depth}; choose one of {sorted(_BLOCKS_PER_STAGE)}.")
        if small_input:
            self.stem: nn.Module = conv_bn_relu(in_chans, width, batch_norm=batch_norm)
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_chans, width, 7, stride=2, padding=3, bias=not batch_norm),
                nn.BatchNorm2d(width) if batch_norm else nn.Identity(),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        rates = iter(drop_path_rates(drop_path_rate, sum(_BLOCKS_PER_STAGE[depth])))
        layers = []
        in_width = width
        for index, blocks in enumerate(_BLOCKS_PER_STAGE[depth]):
            out_width = width * 2**index
            stage = []
            for block in range(blocks):
                stride = 2 if index > 0 and block == 0 else 1
                stage.append(BasicBlock(in_width, out_width, stride, batch_norm, next(rates)))
                in_width = out_width
            layers.append(nn.Sequential(*stage))
        self.layers = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.num_features = in_width
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, BasicBlock):
                    norm = module.bn2
                    last = norm if isinstance(norm, nn.BatchNorm2d) else module.conv2
                    nn.init.zeros_(last.weight)
                    if last.bias is not None:
                        nn.init.zeros_(last.bias)

    def forward_features(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, 8 * width)
        return self.pool(self.layers(self.stem(x)))

    def stages(self) -> list[nn.Module]:
        return [self.stem, *self.layers]


class Residual(nn.Module):
    """x + drop(f(x)) with f two conv-BN-ReLU blocks of the same width, drop stochastic depth."""

    def __init__(self, chans: int, batch_norm: bool = True, drop_path: float = 0.0) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_bn_relu(chans, chans, batch_norm=batch_norm),
            conv_bn_relu(chans, chans, batch_norm=batch_norm),
        )
        self.drop_path = StochasticDepth(drop_path, mode="row")

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        return x + self.drop_path(self.body(x))


class ResNet9(Backbone):
    """ResNet-9: prep, three pooled stages (the first and last with a residual block), max pool.

    Channels are width x (1, 2, 4, 8); ``num_features`` is 8 x width. ``batch_norm`` and
    ``drop_path_rate`` (the second residual block's probability, the first's is half) are the
    module docstring's regularization switches.
    """

    def __init__(
        self,
        in_chans: int = 3,
        width: int = 64,
        batch_norm: bool = True,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        first_rate, last_rate = drop_path_rates(drop_path_rate, 2)

        def unit(in_width: int, out_width: int) -> nn.Sequential:
            return conv_bn_relu(in_width, out_width, batch_norm=batch_norm)

        self.prep = unit(in_chans, width)
        self.layer1 = nn.Sequential(
            unit(width, 2 * width), nn.MaxPool2d(2), Residual(2 * width, batch_norm, first_rate)
        )
        self.layer2 = nn.Sequential(unit(2 * width, 4 * width), nn.MaxPool2d(2))
        self.layer3 = nn.Sequential(
            unit(4 * width, 8 * width), nn.MaxPool2d(2), Residual(8 * width, batch_norm, last_rate)
        )
        self.pool = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.num_features = 8 * width

    def forward_features(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, 8 * width)
        return self.pool(self.layer3(self.layer2(self.layer1(self.prep(x)))))

    def stages(self) -> list[nn.Module]:
        return [self.prep, self.layer1, self.layer2, self.layer3]
