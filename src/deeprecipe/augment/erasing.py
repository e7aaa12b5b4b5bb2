"""Occlusion: Cutout and Random Erasing blank a random box of each image.

Both teach the model to use the whole object rather than its single most telling part.
:class:`RandomErasing` wraps kornia's. :class:`Cutout` is written here: DeVries & Taylor centre
the square anywhere in the image and clip it at the border, so boxes at the edges are partly
outside, while kornia's erasing box always lies wholly inside; the same clipped box is what
CutMix (:mod:`deeprecipe.augment.mixing`) pastes, so both share :func:`random_boxes`.
"""

from __future__ import annotations

from collections.abc import Sequence

import kornia.augmentation as K
import torch
from torch import Tensor, nn

from deeprecipe.augment.checks import check_interval, check_probability
from deeprecipe.errors import ConfigError


def random_boxes(side: Tensor, height: int, width: int) -> Tensor:
    """Boxes ``(top, left, bottom, right)`` (int64 pixels, bottom/right exclusive), shape (B, 4).

    Box ``i`` spans ``side[i]`` of the image height and width; its centre is a uniform pixel and
    the box is clipped at the image border (Cutout, CutMix), so its area may be smaller.
    """
    batch = side.shape[0]
    box_height = (side * height).round().long()  # (B,)
    box_width = (side * width).round().long()
    centre_row = torch.randint(0, height, (batch,), device=side.device)
    centre_col = torch.randint(0, width, (batch,), device=side.device)
    top = (centre_row - box_height // 2).clamp(0, height)
    left = (centre_col - box_width // 2).clamp(0, width)
    bottom = (centre_row - box_height // 2 + box_height).clamp(0, height)
    right = (centre_col - box_width // 2 + box_width).clamp(0, width)
    return torch.stack([top, left, bottom, right], dim=1)


def box_mask(boxes: Tensor, height: int, width: int) -> Tensor:
    """Boolean mask (B, 1, H, W) that is True inside box ``i`` of image ``i``."""
    top, left, bottom, right = boxes[:, :, None].unbind(dim=1)  # each (B, 1)
    rows = torch.arange(height, device=boxes.device)  # (H,)
    cols = torch.arange(width, device=boxes.device)  # (W,)
    in_rows = (rows >= top) & (rows < bottom)  # (B, H)
    in_cols = (cols >= left) & (cols < right)  # (B, W)
    return (in_rows[:, :, None] & in_cols[:, None, :])[:, None]  # (B, 1, H, W)


class Cutout(nn.Module):
    """Fill a square of each image with ``value`` (DeVries & Taylor 2017).

    Args:
        size: side of the box as a fraction of the image side (0.5: 16 pixels of 32).
        p: probability that an image is cut, independently per image.
        value: fill value in [0, 1] (0 is black; the dataset mean is the other common choice).
    """

    def __init__(self, size: float = 0.5, p: float = 1.0, value: float = 0.0) -> None:
        super().__init__()
        if not 0.0 < size <= 1.0:
            raise ConfigError(f"Cutout size={size}; it must be in (0, 1] (a fraction of the side).")
        self.size = float(size)
        self.p = check_probability("Cutout", "p", p)
        self.value = check_probability("Cutout", "value", value)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        batch, _, height, width = x.shape
        side = torch.full((batch,), self.size, device=x.device)
        mask = box_mask(random_boxes(side, height, width), height, width)  # (B, 1, H, W)
        cut = torch.rand(batch, device=x.device) < self.p  # (B,)
        return x.masked_fill(mask & cut[:, None, None, None], self.value)


class RandomErasing(nn.Module):
    """Fill a box of random area and aspect ratio with ``value`` (Zhong et al. 2020), via kornia.

    The box lies inside the image; each image draws its own box and its own coin. Zhong et al.
    also fill with random noise; kornia fills with a constant.

    Args:
        p: probability that an image is erased.
        scale: [min, max] of the box area as a fraction of the image area.
        ratio: [min, max] of the box aspect ratio.
        value: fill value in [0, 1].
    """

    def __init__(
        self,
        p: float = 0.5,
        scale: Sequence[float] = (0.02, 0.33),
        ratio: Sequence[float] = (0.3, 3.3),
        value: float = 0.0,
    ) -> None:
        super().__init__()
        self.erase = K.RandomErasing(
            scale=check_interval("RandomErasing", "scale", scale, 0.0, 1.0),
            ratio=check_interval("RandomErasing", "ratio", ratio, 1e-3, 1e3),
            value=check_probability("RandomErasing", "value", value),
            p=check_probability("RandomErasing", "p", p),
        )

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        return self.erase(x)
