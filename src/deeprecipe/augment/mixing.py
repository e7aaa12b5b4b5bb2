"""Label-mixing augmentation: Mixup and CutMix, which blend pairs of images and their labels.

They change the targets as well as the images, so they take ``(x, y)`` with integer labels and
return ``(x_mixed, y_soft)``, soft targets (B, num_classes) whose rows sum to 1, to be used with
:func:`deeprecipe.losses.soft_cross_entropy`. Image ``i`` is mixed with image ``perm[i]`` of a
random permutation, with its own lambda and, for CutMix, its own box.

Written here rather than taken from a library: kornia's ``RandomMixUpV2`` draws lambda uniformly
instead of from Beta(a, a), and it and ``RandomCutMixV2`` return label triples rather than soft
targets; timm's ``Mixup`` mixes in place, needs an even batch, pairs image ``i`` with image
``B - 1 - i`` and draws from NumPy's generator.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from deeprecipe.augment.checks import check_probability
from deeprecipe.augment.erasing import box_mask, random_boxes
from deeprecipe.errors import ConfigError
from deeprecipe.losses import smooth_targets


def _check_classes(owner: str, num_classes: int) -> int:
    if num_classes < 2:
        raise ConfigError(f"{owner} num_classes={num_classes}; it must be >= 2.")
    return num_classes


def _check_alpha(owner: str, key: str, alpha: float, zero_turns_off: bool = False) -> float:
    if alpha < 0 or (alpha == 0 and not zero_turns_off):
        bound = ">= 0 (0 turns it off)" if zero_turns_off else "> 0"
        raise ConfigError(f"{owner} {key}={alpha}; it must be {bound}.")
    return float(alpha)


def _check_smoothing(owner: str, label_smoothing: float) -> float:
    if not 0.0 <= label_smoothing < 1.0:
        raise ConfigError(f"{owner} label_smoothing={label_smoothing}; it must be in [0, 1).")
    return float(label_smoothing)


def sample_lambda(alpha: float, batch: int, device: torch.device) -> Tensor:
    """Mixing weights ``lambda ~ Beta(alpha, alpha)``, one per image, shape (B,)."""
    concentration = torch.tensor(float(alpha))
    weights = torch.distributions.Beta(concentration, concentration).sample((batch,))
    return weights.to(device, non_blocking=True)


def mix_targets(
    y: Tensor, perm: Tensor, lam: Tensor, num_classes: int, label_smoothing: float
) -> Tensor:
    """Soft targets ``lam * t(y) + (1 - lam) * t(y[perm])``, t the (smoothed) one-hot, (B, K)."""
    own = smooth_targets(y, num_classes, label_smoothing)  # (B, K)
    lam = lam.to(own.dtype)[:, None]  # (B, 1)
    return lam * own + (1 - lam) * own[perm]


def mixup(x: Tensor, alpha: float) -> tuple[Tensor, Tensor, Tensor]:
    """Blend image ``i`` with image ``perm[i]``: ``lam * x[i] + (1 - lam) * x[perm[i]]``.

    Returns the mixed images (B, C, H, W), ``perm`` (B,) and ``lam`` (B,).
    """
    perm = torch.randperm(x.shape[0], device=x.device)
    lam = sample_lambda(alpha, x.shape[0], x.device)
    weight = lam.to(x.dtype)[:, None, None, None]  # (B, 1, 1, 1)
    return weight * x + (1 - weight) * x[perm], perm, lam


def cutmix(x: Tensor, alpha: float) -> tuple[Tensor, Tensor, Tensor]:
    """Paste a box of image ``perm[i]`` into image ``i`` (Yun et al. 2019).

    The box spans ``sqrt(1 - lam)`` of each side for ``lam ~ Beta(alpha, alpha)``, centred on a
    random pixel and clipped at the border; the returned ``lam`` (B,) is recomputed from the box
    actually pasted, ``1 - box area / image area``, so it is the share of image ``i`` that is
    left. Returns the mixed images (B, C, H, W), ``perm`` (B,) and ``lam`` (B,).
    """
    batch, _, height, width = x.shape
    perm = torch.randperm(batch, device=x.device)
    side = (1 - sample_lambda(alpha, batch, x.device)).sqrt()  # (B,)
    mask = box_mask(random_boxes(side, height, width), height, width)  # (B, 1, H, W)
    lam = 1 - mask.flatten(1).float().mean(dim=1)  # (B,)
    return torch.where(mask, x[perm], x), perm, lam


class Mixup(nn.Module):
    """Mixup (Zhang et al. 2018): blend random pairs of images and their labels.

    ``forward(x, y)`` takes images (B, C, H, W) and int64 labels (B,) and returns the mixed images
    and soft targets (B, num_classes). A small ``alpha`` keeps most weights near 0 or 1.
    """

    def __init__(self, num_classes: int, alpha: float = 0.2, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.num_classes = _check_classes("Mixup", num_classes)
        self.alpha = _check_alpha("Mixup", "alpha", alpha)
        self.label_smoothing = _check_smoothing("Mixup", label_smoothing)

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        mixed, perm, lam = mixup(x, self.alpha)
        return mixed, mix_targets(y, perm, lam, self.num_classes, self.label_smoothing)


class CutMix(nn.Module):
    """CutMix (Yun et al. 2019): paste a box of another image; targets weighted by box area.

    ``forward(x, y)`` takes images (B, C, H, W) and int64 labels (B,) and returns the mixed images
    and soft targets (B, num_classes).
    """

    def __init__(self, num_classes: int, alpha: float = 1.0, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.num_classes = _check_classes("CutMix", num_classes)
        self.alpha = _check_alpha("CutMix", "alpha", alpha)
        self.label_smoothing = _check_smoothing("CutMix", label_smoothing)

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        mixed, perm, lam = cutmix(x, self.alpha)
        return mixed, mix_targets(y, perm, lam, self.num_classes, self.label_smoothing)


class MixupCutmix(nn.Module):
    """Per batch: with probability ``prob`` mix, by CutMix with probability ``switch_prob``
    (when both are on), else by Mixup; otherwise pass the images and smoothed one-hot targets.

    The DeiT recipe uses ``mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5,
    label_smoothing=0.1``. An alpha of 0 turns that op off.

    Args:
        num_classes: K, the width of the soft targets.
        mixup_alpha: Beta parameter of Mixup's lambda; 0 turns Mixup off.
        cutmix_alpha: Beta parameter of CutMix's lambda; 0 turns CutMix off.
        prob: probability that a batch is mixed at all.
        switch_prob: probability of CutMix rather than Mixup when both are on.
        label_smoothing: epsilon of :func:`deeprecipe.losses.smooth_targets`, applied to both
            labels of a pair (and to unmixed batches).
    """

    def __init__(
        self,
        num_classes: int,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_classes = _check_classes("MixupCutmix", num_classes)
        self.mixup_alpha = _check_alpha("MixupCutmix", "mixup_alpha", mixup_alpha, True)
        self.cutmix_alpha = _check_alpha("MixupCutmix", "cutmix_alpha", cutmix_alpha, True)
        if self.mixup_alpha == 0 and self.cutmix_alpha == 0:
            raise ConfigError(
                "MixupCutmix mixup_alpha=0 and cutmix_alpha=0 mix nothing; set one > 0."
            )
        self.prob = check_probability("MixupCutmix", "prob", prob)
        self.switch_prob = check_probability("MixupCutmix", "switch_prob", switch_prob)
        self.label_smoothing = _check_smoothing("MixupCutmix", label_smoothing)

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        # Per-batch coins on the CPU generator: no wait for the device.
        if float(torch.rand(())) >= self.prob:
            return x, smooth_targets(y, self.num_classes, self.label_smoothing)
        use_cutmix = self.mixup_alpha == 0 or (
            self.cutmix_alpha > 0 and float(torch.rand(())) < self.switch_prob
        )
        if use_cutmix:
            mixed, perm, lam = cutmix(x, self.cutmix_alpha)
        else:
            mixed, perm, lam = mixup(x, self.mixup_alpha)
        return mixed, mix_targets(y, perm, lam, self.num_classes, self.label_smoothing)
