"""Photometric augmentation: colour jitter, grayscale, blur and AlexNet's PCA lighting noise.

Colour jitter, grayscale and blur wrap kornia's batched modules (per-image random factors) and
skip what an image without colour cannot take. PCA lighting is written here: kornia has none.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import kornia.augmentation as K
import torch
from torch import Tensor, nn

from deeprecipe.augment.checks import check_interval, check_probability
from deeprecipe.errors import ConfigError

log = logging.getLogger(__name__)


def _warn_once(module: nn.Module, channels: int, settings: str) -> None:
    """Say once per module that colour settings do nothing on images of ``channels`` channels."""
    if getattr(module, "_warned", False):
        return
    module._warned = True  # type: ignore[assignment]
    log.warning(
        "Augmentation %s has no effect on %d-channel images (it needs RGB): those images are "
        "trained without it. Set it to 0 in the aug config to silence this.",
        settings,
        channels,
    )


class ColorJitter(nn.Module):
    """Random brightness, contrast, saturation and hue per image, in a random order.

    torchvision's formulas, through ``kornia.augmentation.ColorJitter``: a factor is drawn from
    ``[1 - v, 1 + v]`` for brightness, contrast and saturation and a shift from ``[-hue, hue]``.
    Saturation and hue need colour, so on images that are not RGB (``C != 3``) only brightness
    and contrast are jittered.

    Args:
        brightness, contrast, saturation: jitter strength ``v >= 0``.
        hue: hue shift in [0, 0.5] turns of the colour circle.
        p: probability that an image is jittered.
    """

    def __init__(
        self,
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.4,
        hue: float = 0.0,
        p: float = 1.0,
    ) -> None:
        super().__init__()
        strengths = {"brightness": brightness, "contrast": contrast, "saturation": saturation}
        for key, value in strengths.items():
            if value < 0:
                raise ConfigError(f"ColorJitter {key}={value}; it must be >= 0.")
        if not 0.0 <= hue <= 0.5:
            raise ConfigError(f"ColorJitter hue={hue}; it must be in [0, 0.5].")
        p = check_probability("ColorJitter", "p", p)
        self.rgb = K.ColorJitter(brightness, contrast, saturation, hue, p=p)
        self.gray = K.ColorJitter(brightness, contrast, 0.0, 0.0, p=p)
        self.colour = {"saturation": saturation, "hue": hue}

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        if x.shape[1] == 3:
            return self.rgb(x)
        used = [f"jitter {k}={v:g}" for k, v in self.colour.items() if v > 0]
        if used:
            _warn_once(self, x.shape[1], " and ".join(used))
        return self.gray(x)


class RandomGrayscale(nn.Module):
    """Turn an RGB image into gray (kept as 3 channels) with probability ``p``, per image.

    Images without colour (``C != 3``) pass unchanged.
    """

    def __init__(self, p: float = 0.2) -> None:
        super().__init__()
        self.p = check_probability("RandomGrayscale", "p", p)
        self.grayscale = K.RandomGrayscale(p=self.p)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        if x.shape[1] == 3:
            return self.grayscale(x)
        if self.p > 0:
            _warn_once(self, x.shape[1], f"grayscale p={self.p:g}")
        return x


class GaussianBlur(nn.Module):
    """Gaussian blur with a random ``sigma`` per image, applied with probability ``p`` (kornia).

    SimCLR blurs ImageNet images with a kernel of 10% of the image side.

    Args:
        kernel_size: odd side of the square kernel in pixels.
        sigma: [min, max] of the standard deviation in pixels.
        p: probability that an image is blurred.
    """

    def __init__(
        self, kernel_size: int = 3, sigma: Sequence[float] = (0.1, 2.0), p: float = 0.5
    ) -> None:
        super().__init__()
        if kernel_size < 3 or kernel_size % 2 == 0:
            raise ConfigError(f"GaussianBlur kernel_size={kernel_size}; it must be odd and >= 3.")
        sigma = check_interval("GaussianBlur", "sigma", sigma, 1e-3, math.inf)
        self.blur = K.RandomGaussianBlur(
            (kernel_size, kernel_size), sigma, p=check_probability("GaussianBlur", "p", p)
        )

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        return self.blur(x)


class PCALighting(nn.Module):
    """AlexNet's lighting noise: shift each image's colour along the principal components.

    With ``p_j`` and ``lambda_j`` the eigenvectors and eigenvalues of the channel covariance of
    the training pixels, each image gets ``sum_j p_j * alpha_j * lambda_j`` added to every pixel,
    with ``alpha_j ~ N(0, sigma)`` drawn per image (Krizhevsky et al. 2012); the result is
    clipped to [0, 1]. For one channel it is a random brightness shift of std ``sigma *
    variance``. The eigenvalues are those of pixels in [0, 1], as in the ImageNet constants
    commonly used; the shift is then about ``sigma * lambda_1`` (1% of the range for
    ``sigma = 0.1``), a mild perturbation.

    Args:
        eigenvalues: (C,) covariance eigenvalues, largest first.
        eigenvectors: (C, C) matching eigenvectors, one per column.
        sigma: standard deviation of ``alpha``.
    """

    eigenvalues: Tensor
    eigenvectors: Tensor

    def __init__(
        self,
        eigenvalues: Sequence[float] | Tensor,
        eigenvectors: Sequence[Sequence[float]] | Tensor,
        sigma: float = 0.1,
    ) -> None:
        super().__init__()
        values = torch.as_tensor(eigenvalues, dtype=torch.float32)
        vectors = torch.as_tensor(eigenvectors, dtype=torch.float32)
        channels = values.shape[0] if values.ndim == 1 else -1
        if channels < 1 or vectors.shape != (channels, channels):
            raise ConfigError(
                f"PCALighting eigenvalues have shape {tuple(values.shape)} and eigenvectors "
                f"{tuple(vectors.shape)}; they must be (C,) and (C, C)."
            )
        if sigma < 0:
            raise ConfigError(f"PCALighting sigma={sigma}; it must be >= 0.")
        self.register_buffer("eigenvalues", values)
        self.register_buffer("eigenvectors", vectors)
        self.sigma = float(sigma)

    @classmethod
    def from_images(cls, images: Tensor, sigma: float = 0.1, chunk_size: int = 4096) -> PCALighting:
        """Fit the components to ``images`` (N, C, H, W), uint8 or floats in [0, 1].

        The covariance is accumulated over chunks of ``chunk_size`` images in float64, so the
        pixels are never all copied at once.
        """
        channels = images.shape[1]
        total = torch.zeros(channels, dtype=torch.float64)
        second_moment = torch.zeros(channels, channels, dtype=torch.float64)
        for chunk in images.split(chunk_size):
            pixels = chunk.transpose(0, 1).reshape(channels, -1).double()  # (C, n * H * W)
            if images.dtype == torch.uint8:
                pixels = pixels / 255
            total += pixels.sum(dim=1)
            second_moment += pixels @ pixels.T
        count = images.numel() // channels
        mean = total / count  # (C,)
        covariance = second_moment / count - torch.outer(mean, mean)  # (C, C)
        values, vectors = torch.linalg.eigh(covariance)  # ascending
        return cls(values.flip(0).float(), vectors.flip(1).float(), sigma)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        if x.shape[1] != self.eigenvalues.shape[0]:
            raise ConfigError(
                f"PCALighting was fitted to {self.eigenvalues.shape[0]} channels but the images "
                f"have {x.shape[1]}; fit it to the training images of this dataset."
            )
        alpha = torch.randn(x.shape[0], x.shape[1], device=x.device, dtype=x.dtype) * self.sigma
        shift = (alpha * self.eigenvalues.to(x.dtype)) @ self.eigenvectors.to(x.dtype).T  # (B, C)
        return (x + shift[:, :, None, None]).clamp(0.0, 1.0)
