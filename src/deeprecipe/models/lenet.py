"""LeNet-5 (LeCun et al. 1998) for 28x28 and 32x32 inputs."""

from __future__ import annotations

from torch import Tensor, nn

from deeprecipe.models.base import Backbone
from deeprecipe.models.layers import FractionalMaxPool, check_pool, init_weights, make_activation


class LeNet5(Backbone):
    """conv 5x5 (6) - pool - conv 5x5 (16) - pool - fc 120 - fc 84.

    28x28 inputs get 2 pixels of padding in the first convolution so that both sizes reach the
    original 5x5x16 map. ``activation`` is one of :data:`deeprecipe.models.layers.ACTIVATIONS`
    (the original: ``tanh``); ``pool`` is ``avg`` (the original's subsampling), ``max`` or
    ``fractional`` (:class:`~deeprecipe.models.layers.FractionalMaxPool`, same output sizes);
    ``init`` is one of :data:`deeprecipe.models.layers.INIT_SCHEMES` (``default`` keeps
    PyTorch's) and ``relu_bias`` the initial bias of every layer (see
    :func:`~deeprecipe.models.layers.init_weights`).
    """

    def __init__(
        self,
        in_chans: int,
        image_size: int,
        activation: str = "relu",
        pool: str = "max",
        init: str = "default",
        relu_bias: float = 0.0,
    ) -> None:
        super().__init__()
        check_pool("LeNet5", pool, ("max", "avg", "fractional"))

        def pooling() -> nn.Module:
            if pool == "fractional":
                return FractionalMaxPool()
            return nn.MaxPool2d(2) if pool == "max" else nn.AvgPool2d(2)

        pad = (32 - image_size) // 2 if image_size < 32 else 0
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_chans, 6, 5, padding=pad), make_activation(activation), pooling()
        )
        self.conv2 = nn.Sequential(nn.Conv2d(6, 16, 5), make_activation(activation), pooling())
        side = (max(image_size, 32) - 4) // 2
        side = (side - 4) // 2
        self.fc = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * side * side, 120),
            make_activation(activation),
            nn.Linear(120, 84),
            make_activation(activation),
        )
        self.num_features = 84
        init_weights(self, init, relu_bias)

    def forward_features(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, 84)
        return self.fc(self.conv2(self.conv1(x)))

    def stages(self) -> list[nn.Module]:
        return [self.conv1, self.conv2, self.fc]
