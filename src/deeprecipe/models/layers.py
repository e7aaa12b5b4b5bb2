"""Building blocks shared by the in-house backbones: activations, weight initialization, conv units.

The lectures compare activation functions (sigmoid, tanh, ReLU, leaky ReLU, ELU, GELU) and weight
initializations (small Gaussian, Xavier, Kaiming); these helpers make both a config choice
(``model.activation``, ``model.init``) for every in-house model except the ResNets, so a study can
swap them without touching model code. The regularizing layers (DropConnect, fractional max
pooling) live here too, so each in-house model takes them as a config choice.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from deeprecipe.errors import ConfigError

ACTIVATIONS = ("sigmoid", "tanh", "relu", "leaky_relu", "elu", "gelu")
INIT_SCHEMES = ("default", "gaussian", "xavier", "kaiming")
MAX_POOLS = ("max", "fractional")
LEAKY_RELU_SLOPE = 0.1
_WEIGHTED_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def make_activation(name: str) -> nn.Module:
    """A fresh activation module by name, so that one config key picks the nonlinearity.

    ``leaky_relu`` uses the lecture's slope, max(0.1 x, x); ``gelu`` is the exact (erf) form;
    ``elu`` has alpha 1.

    Raises:
        ConfigError: ``name`` is not one of :data:`ACTIVATIONS`.
    """
    match name:
        case "sigmoid":
            return nn.Sigmoid()
        case "tanh":
            return nn.Tanh()
        case "relu":
            return nn.ReLU()
        case "leaky_relu":
            return nn.LeakyReLU(LEAKY_RELU_SLOPE)
        case "elu":
            return nn.ELU()
        case "gelu":
            return nn.GELU()
    raise ConfigError(f"activation={name!r}; choose one of {', '.join(ACTIVATIONS)}.")


def init_weights(
    module: nn.Module, scheme: str, relu_bias: float = 0.0, std: float = 0.001
) -> nn.Module:
    """Re-initialize every linear and convolution layer in ``module`` (in place; returns it).

    Schemes, as in the lectures (normalization layers keep their ones and zeros):

    - ``default``: keep PyTorch's (Kaiming-uniform with a = sqrt(5), uniform biases), the
      baseline every other scheme is compared with;
    - ``gaussian``: weights ``std * randn`` (the lecture's ``0.001 * randn``): fine for shallow
      nets, but activations shrink layer by layer in deep ones, which is the lesson;
    - ``xavier``: Glorot normal, std = sqrt(2 / (fan_in + fan_out)), which keeps activation
      variance constant through tanh-like layers (the lecture's 1 / sqrt(D_in) for square ones);
    - ``kaiming``: He normal, std = sqrt(2 / fan_in), which does the same through ReLUs.

    Biases become ``relu_bias`` (zero by default) under every scheme but ``default``, which
    keeps PyTorch's unless ``relu_bias`` is non-zero. A small positive ``relu_bias`` (e.g. 0.01)
    is the lecture's tip for ReLU nets: every unit starts active, so none starts dead. It is
    meant for backbones whose every layer feeds an activation, as the ones here do.

    Raises:
        ConfigError: unknown ``scheme``, or ``std`` not positive.
    """
    if scheme not in INIT_SCHEMES:
        raise ConfigError(f"init={scheme!r}; choose one of {', '.join(INIT_SCHEMES)}.")
    if std <= 0:
        raise ConfigError(f"init std={std}; use a positive standard deviation such as 0.001.")
    for layer in module.modules():
        if not isinstance(layer, _WEIGHTED_LAYERS):
            continue
        if scheme == "gaussian":
            nn.init.normal_(layer.weight, mean=0.0, std=std)
        elif scheme == "xavier":
            nn.init.xavier_normal_(layer.weight)
        elif scheme == "kaiming":
            nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
        if layer.bias is not None and (scheme != "default" or relu_bias != 0.0):
            nn.init.constant_(layer.bias, relu_bias)
    return module


def conv_unit(
    in_chans: int,
    out_chans: int,
    kernel_size: int,
    activation: str,
    batch_norm: bool = False,
) -> nn.Sequential:
    """conv (stride 1, 'same' padding, odd ``kernel_size``) - [BatchNorm] - activation.

    With BatchNorm the convolution has no bias (the norm's shift replaces it).
    """
    layers: list[nn.Module] = [
        nn.Conv2d(in_chans, out_chans, kernel_size, padding=kernel_size // 2, bias=not batch_norm)
    ]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_chans))
    layers.append(make_activation(activation))
    return nn.Sequential(*layers)


def overlapping_max_pool() -> nn.MaxPool2d:
    """AlexNet's and GoogLeNet's overlapping 3x3 stride-2 max pool, padded by 1 so that a side
    n becomes ceil(n / 2): 28 -> 14 -> 7 -> 4 and 32 -> 16 -> 8 -> 4."""
    return nn.MaxPool2d(3, stride=2, padding=1)


class DropConnectLinear(nn.Linear):
    """A linear layer that drops each weight with probability ``p`` in training (Wan et al. 2013).

    DropConnect is dropout on the weights rather than on the activations. One mask is drawn per
    forward pass and shared by the batch (the paper's per-sample masks need a (B, out, in)
    weight tensor); kept weights are scaled by 1 / (1 - p), so the layer is the plain linear
    map in expectation and evaluation uses the plain weights (the mean network, as inverted
    dropout does; the paper's Gaussian moment-matching inference is left out). The bias is never
    dropped. The mask is ``F.dropout`` applied to the weight matrix.
    """

    def __init__(self, in_features: int, out_features: int, p: float, bias: bool = True) -> None:
        if not 0.0 <= p < 1.0:
            raise ConfigError(f"dropconnect={p}; it must be in [0, 1).")
        super().__init__(in_features, out_features, bias)
        self.p = p

    def forward(self, x: Tensor) -> Tensor:  # (B, in) -> (B, out)
        weight = F.dropout(self.weight, self.p, self.training)  # (out, in), zeros where dropped
        return F.linear(x, weight, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, p={self.p}"


def linear(in_features: int, out_features: int, dropconnect: float = 0.0) -> nn.Linear:
    """``nn.Linear``, or :class:`DropConnectLinear` when ``dropconnect`` > 0 (same parameters)."""
    if dropconnect == 0.0:
        return nn.Linear(in_features, out_features)
    return DropConnectLinear(in_features, out_features, dropconnect)


class FractionalMaxPool(nn.Module):
    """Fractional max pooling (Graham 2014) that halves each side, rounding up: n -> ceil(n / 2).

    A drop-in for the 2x downsampling max pools of LeNet, AlexNet and VGG (same output sizes),
    built on ``F.fractional_max_pool2d`` (what ``nn.FractionalMaxPool2d`` calls; the module fixes
    the output size at construction, here it follows each input). Windows are 3x3, like
    AlexNet's overlapping pools, at pseudo-randomly spaced positions drawn anew for every image
    and channel in training: halving a side of n with 3-wide windows needs steps of 2 and a few
    steps of 1 (one for an even n), and where those fall is random. (With 2x2 windows exactly
    halving an even side leaves no freedom: it would be plain max pooling. Graham's nets get
    more randomness from a ratio of 1/sqrt(2) and more pooling layers.) Evaluation uses one fixed
    draw (u = 0.5) for every image, so it is deterministic; Graham averages over several draws.
    """

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, C, ceil(H / 2), ceil(W / 2))
        height, width = x.shape[-2:]
        output_size = ((height + 1) // 2, (width + 1) // 2)
        # 3 wide where the side leaves room (out + 2 <= n), narrower for sides 1 to 3
        kernel_size = (min(3, height - output_size[0] + 1), min(3, width - output_size[1] + 1))
        # (B, C, 2) offsets in [0, 1) that place the windows; None draws them at random
        samples = None if self.training else x.new_full((x.shape[0], x.shape[1], 2), 0.5)
        return F.fractional_max_pool2d(
            x, kernel_size, output_size=output_size, _random_samples=samples
        )


def check_pool(owner: str, pool: str, choices: tuple[str, ...] = MAX_POOLS) -> None:
    """Raise a :class:`ConfigError` naming the ``choices`` unless ``pool`` is one of them."""
    if pool not in choices:
        raise ConfigError(f"{owner} pool={pool!r}; choose one of {', '.join(choices)}.")
