"""Video backbones on clips ``(B, C, T, H, W)``: R3D, R(2+1)D and a per-frame 2-D baseline.

- ``r3d_18`` / ``r2plus1d_18``: torchvision's 18-layer video ResNets (Tran et al. 2018, "A Closer
  Look at Spatiotemporal Convolutions for Action Recognition"), built without pretrained
  weights, with the first convolution made for ``in_chans``.
- :class:`R3D` / :class:`R2Plus1D`: the same two designs written small enough to train on a CPU
  (one basic block per stage by default, a width parameter, a stride-2 stem for 32 px frames).
  Written here rather than taken from torchvision because its builders fix the widths (64 to
  512 channels) and the ImageNet stem. R(2+1)D factorizes each ``t x k x k`` convolution into a
  ``1 x k x k`` spatial one, BatchNorm and ReLU, then a ``t x 1 x 1`` temporal one, with the
  paper's intermediate width :func:`midplanes` that keeps the parameter count of the full 3-D
  convolution while doubling the non-linearities.
- :class:`Frame2D`: a small 2-D ResNet applied to every frame on its own, its pooled features
  averaged over time. Temporal average pooling makes it blind to frame order, which is the point
  of comparing it with the spatio-temporal models on moving Fashion-MNIST.
"""

from __future__ import annotations

from collections.abc import Sequence

import torchvision.models.video as tv_video
from torch import Tensor, nn

from deeprecipe.errors import ConfigError
from deeprecipe.models.base import Backbone

TORCHVISION_VIDEO_MODELS = ("r3d_18", "r2plus1d_18")


class VideoBackbone(Backbone):
    """A backbone whose input is a batch of clips ``(B, C, T, H, W)``."""

    def check_clips(self, x: Tensor) -> None:
        if x.ndim != 5:
            raise ConfigError(
                f"{type(self).__name__} takes clips (B, C, T, H, W) but got a tensor of shape "
                f"{tuple(x.shape)}; use a video data config (data=moving_fashion, video_folder "
                "or video_clips) with a video model."
            )


def midplanes(in_chans: int, out_chans: int, temporal: int = 3, spatial: int = 3) -> int:
    """Channels M between the spatial and the temporal convolution of a (2+1)-D convolution.

    ``M = floor(t k^2 N_in N_out / (k^2 N_in + t N_out))`` (Tran et al. 2018, section 3.5): the
    (2+1)-D pair then has (about) the parameters of the full ``t x k x k`` 3-D convolution.
    """
    kernel_area = spatial * spatial
    return (temporal * kernel_area * in_chans * out_chans) // (
        kernel_area * in_chans + temporal * out_chans
    )


class Conv2Plus1D(nn.Sequential):
    """``t x k x k`` convolution factorized: ``1 x k x k`` spatial - BN - ReLU - ``t x 1 x 1``.

    The spatial convolution takes the spatial stride and the temporal one the temporal stride.
    """

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        stride: tuple[int, int] = (1, 1),
        temporal: int = 3,
        spatial: int = 3,
    ) -> None:
        temporal_stride, spatial_stride = stride
        middle = midplanes(in_chans, out_chans, temporal, spatial)
        super().__init__(
            nn.Conv3d(
                in_chans,
                middle,
                (1, spatial, spatial),
                stride=(1, spatial_stride, spatial_stride),
                padding=(0, spatial // 2, spatial // 2),
                bias=False,
            ),
            nn.BatchNorm3d(middle),
            nn.ReLU(inplace=True),
            nn.Conv3d(
                middle,
                out_chans,
                (temporal, 1, 1),
                stride=(temporal_stride, 1, 1),
                padding=(temporal // 2, 0, 0),
                bias=False,
            ),
        )
        self.middle = middle


def spatiotemporal_conv(
    in_chans: int, out_chans: int, stride: tuple[int, int], factorized: bool
) -> nn.Module:
    """A 3x3x3 convolution (bias-free, BN follows), full 3-D or (2+1)-D; stride (time, space)."""
    if factorized:
        return Conv2Plus1D(in_chans, out_chans, stride)
    temporal_stride, spatial_stride = stride
    return nn.Conv3d(
        in_chans,
        out_chans,
        3,
        stride=(temporal_stride, spatial_stride, spatial_stride),
        padding=1,
        bias=False,
    )


class VideoBasicBlock(nn.Module):
    """Two 3x3x3 convolutions (full or factorized) with an identity or 1x1x1 shortcut."""

    def __init__(
        self, in_chans: int, out_chans: int, stride: tuple[int, int], factorized: bool
    ) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            spatiotemporal_conv(in_chans, out_chans, stride, factorized),
            nn.BatchNorm3d(out_chans),
            nn.ReLU(inplace=True),
        )
        self.conv2 = spatiotemporal_conv(out_chans, out_chans, (1, 1), factorized)
        self.bn2 = nn.BatchNorm3d(out_chans)
        self.shortcut: nn.Module = nn.Identity()
        if stride != (1, 1) or in_chans != out_chans:
            temporal_stride, spatial_stride = stride
            self.shortcut = nn.Sequential(
                nn.Conv3d(
                    in_chans,
                    out_chans,
                    1,
                    stride=(temporal_stride, spatial_stride, spatial_stride),
                    bias=False,
                ),
                nn.BatchNorm3d(out_chans),
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, T, H, W) -> (B, out, T / st, H / s, W / s)
        return self.relu(self.bn2(self.conv2(self.conv1(x))) + self.shortcut(x))


def _check_widths(width: int, blocks: Sequence[int]) -> None:
    if width < 1:
        raise ConfigError(f"model.width={width}; it must be a positive integer.")
    if not blocks or any(count < 1 for count in blocks):
        raise ConfigError(f"model.blocks={list(blocks)}; give one count >= 1 per stage.")


def _init_weights(model: nn.Module, residual_norms: Sequence[nn.Module]) -> None:
    """He init of the convolutions; each block's last BN at zero, so blocks start as identities."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Conv3d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    for norm in residual_norms:
        assert isinstance(norm, nn.BatchNorm2d | nn.BatchNorm3d)
        nn.init.zeros_(norm.weight)


class SmallVideoResNet(VideoBackbone):
    """A video ResNet sized for CPUs and small frames; :class:`R3D` and :class:`R2Plus1D`.

    Stem: a 3x3x3 convolution with spatial stride ``stem_stride``. Stage ``i`` has width
    ``width * 2**i`` and ``blocks[i]`` basic blocks; stages after the first halve the frame size
    and, with ``temporal_downsample``, the number of time steps (the paper downsamples both).
    Features: global average over time and space of the last stage, ``width * 2**(stages-1)``.

    Args:
        in_chans: clip channels.
        width: channels of the first stage.
        blocks: basic blocks per stage.
        stem_stride: spatial stride of the stem (2 suits 32 px frames).
        temporal_downsample: stride 2 in time too where the stages halve the frame size.
        factorized: (2+1)-D convolutions instead of full 3-D ones.
    """

    def __init__(
        self,
        in_chans: int = 3,
        width: int = 16,
        blocks: Sequence[int] = (1, 1, 1, 1),
        stem_stride: int = 2,
        temporal_downsample: bool = True,
        factorized: bool = False,
    ) -> None:
        super().__init__()
        _check_widths(width, blocks)
        self.stem = nn.Sequential(
            spatiotemporal_conv(in_chans, width, (1, stem_stride), factorized),
            nn.BatchNorm3d(width),
            nn.ReLU(inplace=True),
        )
        layers = []
        in_width = width
        for index, count in enumerate(blocks):
            out_width = width * 2**index
            stage = []
            for block in range(count):
                down = 2 if index > 0 and block == 0 else 1
                stride = (down if temporal_downsample else 1, down)
                stage.append(VideoBasicBlock(in_width, out_width, stride, factorized))
                in_width = out_width
            layers.append(nn.Sequential(*stage))
        self.layers = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten())
        self.num_features = in_width
        norms = [m.bn2 for m in self.modules() if isinstance(m, VideoBasicBlock)]
        _init_weights(self, norms)

    def forward_features(self, x: Tensor) -> Tensor:  # (B, C, T, H, W) -> (B, num_features)
        self.check_clips(x)
        return self.pool(self.layers(self.stem(x)))

    def stages(self) -> list[nn.Module]:
        return [self.stem, *self.layers]


class R3D(SmallVideoResNet):
    """Small R3D: full 3x3x3 convolutions throughout. See :class:`SmallVideoResNet`."""

    def __init__(
        self,
        in_chans: int = 3,
        width: int = 16,
        blocks: Sequence[int] = (1, 1, 1, 1),
        stem_stride: int = 2,
        temporal_downsample: bool = True,
    ) -> None:
        super().__init__(in_chans, width, blocks, stem_stride, temporal_downsample, False)


class R2Plus1D(SmallVideoResNet):
    """Small R(2+1)D: every 3x3x3 convolution factorized. See :class:`SmallVideoResNet`."""

    def __init__(
        self,
        in_chans: int = 3,
        width: int = 16,
        blocks: Sequence[int] = (1, 1, 1, 1),
        stem_stride: int = 2,
        temporal_downsample: bool = True,
    ) -> None:
        super().__init__(in_chans, width, blocks, stem_stride, temporal_downsample, True)


class FrameBasicBlock(nn.Module):
    """Two 3x3 2-D convolutions with an identity or 1x1 shortcut (on frames)."""

    def __init__(self, in_chans: int, out_chans: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_chans, out_chans, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_chans),
            nn.ReLU(inplace=True),
        )
        self.conv2 = nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chans)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_chans != out_chans:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_chans, out_chans, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_chans),
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:  # (N, C, H, W) -> (N, out, H / stride, W / stride)
        return self.relu(self.bn2(self.conv2(self.conv1(x))) + self.shortcut(x))


class Frame2D(VideoBackbone):
    """Per-frame 2-D ResNet + temporal average pooling: a video baseline blind to frame order.

    The same layout as :class:`SmallVideoResNet` with 2-D convolutions: every frame goes through
    the network on its own (frames are folded into the batch), each frame's features are pooled
    over space, then averaged over time. The average is a symmetric function of the frames, so
    shuffling or reversing a clip cannot change its features.

    Args:
        in_chans: clip channels.
        width: channels of the first stage; stage ``i`` has ``width * 2**i``.
        blocks: basic blocks per stage.
        stem_stride: stride of the 3x3 stem.
    """

    def __init__(
        self,
        in_chans: int = 3,
        width: int = 16,
        blocks: Sequence[int] = (1, 1, 1, 1),
        stem_stride: int = 2,
    ) -> None:
        super().__init__()
        _check_widths(width, blocks)
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, width, 3, stride=stem_stride, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        layers = []
        in_width = width
        for index, count in enumerate(blocks):
            out_width = width * 2**index
            stage = []
            for block in range(count):
                stride = 2 if index > 0 and block == 0 else 1
                stage.append(FrameBasicBlock(in_width, out_width, stride))
                in_width = out_width
            layers.append(nn.Sequential(*stage))
        self.layers = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.num_features = in_width
        norms = [m.bn2 for m in self.modules() if isinstance(m, FrameBasicBlock)]
        _init_weights(self, norms)

    def frame_features(self, x: Tensor) -> Tensor:
        """Per-frame pooled features: (B, C, T, H, W) -> (B, T, num_features)."""
        self.check_clips(x)
        batch, channels, frames, height, width = x.shape
        flat = x.transpose(1, 2).reshape(batch * frames, channels, height, width)  # (B T, C, H, W)
        return self.pool(self.layers(self.stem(flat))).view(batch, frames, -1)

    def forward_features(self, x: Tensor) -> Tensor:  # (B, C, T, H, W) -> (B, num_features)
        return self.frame_features(x).mean(dim=1)

    def stages(self) -> list[nn.Module]:
        return [self.stem, *self.layers]


class TorchvisionVideoResNet(VideoBackbone):
    """torchvision's ``r3d_18`` or ``r2plus1d_18`` (no pretrained weights) under the contract.

    The stem's first convolution is rebuilt for ``in_chans`` (same kernel, stride and padding);
    the classifier is dropped and the 512 pooled features are returned.

    Args:
        name: ``r3d_18`` or ``r2plus1d_18``.
        in_chans: clip channels.
    """

    def __init__(self, name: str = "r3d_18", in_chans: int = 3) -> None:
        super().__init__()
        if name not in TORCHVISION_VIDEO_MODELS:
            raise ConfigError(
                f"model.name={name!r}; choose one of {', '.join(TORCHVISION_VIDEO_MODELS)}."
            )
        net = getattr(tv_video, name)(weights=None)
        first = net.stem[0]
        assert isinstance(first, nn.Conv3d)
        if in_chans != first.in_channels:
            conv = nn.Conv3d(
                in_chans,
                first.out_channels,
                first.kernel_size,  # type: ignore[arg-type]
                stride=first.stride,  # type: ignore[arg-type]
                padding=first.padding,  # type: ignore[arg-type]
                bias=False,
            )
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            net.stem[0] = conv
        self.stem = net.stem
        self.layers = nn.Sequential(net.layer1, net.layer2, net.layer3, net.layer4)
        self.pool = nn.Sequential(net.avgpool, nn.Flatten())
        self.num_features = net.fc.in_features
        self.name = name

    def forward_features(self, x: Tensor) -> Tensor:  # (B, C, T, H, W) -> (B, 512)
        self.check_clips(x)
        return self.pool(self.layers(self.stem(x)))

    def stages(self) -> list[nn.Module]:
        return [self.stem, *self.layers]
