"""Multi-layer perceptron on flattened pixels."""

from __future__ import annotations

from torch import Tensor, nn

from deeprecipe.models.base import Backbone
from deeprecipe.models.layers import init_weights, linear, make_activation


class MLP(Backbone):
    """Fully connected layers with an activation (and optional dropout) on the flattened image.

    Args:
        in_chans, image_size: input shape (C, H, W = image_size).
        hidden_dims: width of each hidden layer; the last is ``num_features``.
        dropout: dropout after each hidden layer.
        dropconnect: DropConnect probability of every hidden layer's weights (see
            :class:`~deeprecipe.models.layers.DropConnectLinear`); 0 keeps plain linear layers.
        activation: one of :data:`deeprecipe.models.layers.ACTIVATIONS`.
        init: one of :data:`deeprecipe.models.layers.INIT_SCHEMES`; ``default`` keeps PyTorch's.
        relu_bias: initial bias of every layer (see :func:`~deeprecipe.models.layers.init_weights`).
    """

    def __init__(
        self,
        in_chans: int,
        image_size: int,
        hidden_dims: tuple[int, ...] = (512, 256),
        dropout: float = 0.0,
        dropconnect: float = 0.0,
        activation: str = "relu",
        init: str = "default",
        relu_bias: float = 0.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_chans * image_size * image_size
        for hidden in hidden_dims:
            layers.append(
                nn.Sequential(
                    linear(width, hidden, dropconnect),
                    make_activation(activation),
                    nn.Dropout(dropout),
                )
            )
            width = hidden
        self.layers = nn.Sequential(*layers)
        self.num_features = width
        init_weights(self, init, relu_bias)

    def forward_features(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, F)
        return self.layers(x.flatten(1))

    def stages(self) -> list[nn.Module]:
        return list(self.layers)
