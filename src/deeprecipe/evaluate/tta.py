"""Test-time augmentation (TTA): average the softmax over fixed views of every image.

The lectures' rule for noise: "training: add randomness; testing: marginalize over randomness".
Random crops and flips in training are marginalized at test time by averaging the predicted
class probabilities over a fixed set of crops and flips:

- ``flip``: the image and its mirror image (2 views);
- ``flip_crops``: ResNet's ten-crop protocol (He et al. 2016) scaled to small images: the image
  is padded by ``padding`` pixels (as the training crop pads it), and the centre crop (the image
  itself) and the four corner crops are taken, each also mirrored (10 views).

Views are built from normalized network inputs; padding uses the value a black pixel has after
normalization, which is what the training crop pads with (zeros before normalization).
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

from deeprecipe.errors import ConfigError

TTA_MODES = ("flip", "flip_crops")


def check_tta(tta: str | None, padding: int) -> str | None:
    """``tta`` if it is None or one of :data:`TTA_MODES` with a usable ``padding``."""
    if tta is not None and tta not in TTA_MODES:
        raise ConfigError(f"method.tta={tta!r}; choose null, {' or '.join(TTA_MODES)}.")
    if tta == "flip_crops" and padding < 1:
        raise ConfigError(
            f"method.tta_padding={padding}; flip_crops needs >= 1 pixel of padding to crop from "
            "(use the training crop's, aug.crop.padding)."
        )
    return tta


def tta_views(x: Tensor, mode: str, padding: int, fill: Tensor) -> list[Tensor]:
    """The views of normalized images ``x`` (B, C, H, W) other than ``x`` itself.

    ``fill`` (1, C, 1, 1) is a black pixel after normalization, ``-mean / std``. ``flip`` gives
    [mirror]; ``flip_crops`` adds the four corner crops of the padded image and their mirrors.
    """
    if x.ndim != 4:
        raise ConfigError(
            f"method.tta={mode!r} needs image batches (B, C, H, W); got shape {tuple(x.shape)}. "
            "Set method.tta=null for this data."
        )
    views = [x.flip(-1)]
    if mode == "flip_crops":
        height, width = x.shape[-2:]
        # pad x - fill with zeros, then add fill back: the border becomes fill, the image stays x
        padded = F.pad(x - fill, (padding,) * 4) + fill  # (B, C, H + 2p, W + 2p)
        for top in (0, 2 * padding):
            for left in (0, 2 * padding):
                crop = padded[..., top : top + height, left : left + width]  # (B, C, H, W)
                views += [crop, crop.flip(-1)]
    return views


def tta_probabilities(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    logits: Tensor,
    mode: str,
    padding: int,
    fill: Tensor,
) -> Tensor:
    """Class probabilities (B, K) averaged over ``x`` and its :func:`tta_views`.

    ``logits`` (B, K) are ``model(x)``, computed by the caller for the plain accuracy and reused
    here; the softmax is taken in float32.
    """
    probabilities = logits.float().softmax(dim=-1)  # (B, K)
    views = tta_views(x, mode, padding, fill)
    for view in views:
        probabilities = probabilities + model(view).float().softmax(dim=-1)
    return probabilities / (len(views) + 1)
