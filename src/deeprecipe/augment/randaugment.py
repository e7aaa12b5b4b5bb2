"""RandAugment (Cubuk et al. 2020) with the operations drawn per image.

``kornia.augmentation.auto.RandAugment`` draws its N operations once per call, so every image of
a batch gets the same ones (only the sign of a symmetric operation varies), and its ``color``
operation raises on 1-channel images (about one batch in seven). Here every image draws its own
operations, and ``color`` is left out for images that are not RGB. Each operation runs once per
batch on the images that drew it, with per-image magnitudes. The photometric ones are kornia's
batched functional ops (torchvision's for auto-contrast, which leaves a flat channel as it is
where kornia's min-max scaling blacks it out), except equalize, posterize and sharpness: one
batched op each written here, equal to torchvision's and kornia's and 2-3x faster on a CPU.
The geometric ones are written here as affine warps, and all the images of a layer that drew
any of the five (rotate, shear x/y, translate x/y) are warped by ONE ``grid_sample`` with a
matrix per image: a warp costs about the same for 4 images as for 40 on a CPU, so one call
instead of five per layer (kornia's ``warp_affine``
costs 1-2 ms per call however few images it gets).
"""

from __future__ import annotations

from collections.abc import Callable

import kornia.enhance as KE
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms.v2 import functional as TF

from deeprecipe.augment.geometric import affine_grid
from deeprecipe.errors import ConfigError

MAX_MAGNITUDE = 30.0  # magnitude scale of torchvision (31 bins) and kornia
# Operation strengths at the maximum magnitude (torchvision's RandAugment ranges).
ROTATE_DEGREES = 30.0
SHEAR = 0.3  # horizontal (vertical) shift per pixel of height (width)
TRANSLATE = 0.45  # fraction of the image side
ENHANCE = 0.9  # brightness, colour, contrast and sharpness factors 1 +- ENHANCE
POSTERIZE_BITS = 4.0  # bits removed of 8

# An operation maps images (b, C, H, W) and signed levels (b,) in [-1, 1] (the magnitude as a
# fraction of its maximum, with a random sign) to images (b, C, H, W). Operations without a
# direction use the level's absolute value; those without a magnitude ignore it.
Operation = Callable[[Tensor, Tensor], Tensor]


def _affine(x: Tensor, linear: Tensor, shift: Tensor) -> Tensor:
    """Warp images (b, C, H, W) about their centre, black outside.

    Output point ``p`` (pixels from the centre, (x, y) order) takes the bilinear sample at
    ``linear @ p + shift``; ``linear`` is (b, 2, 2) and ``shift`` (b, 2) pixels. grid_sample's
    coordinates run from -1 to 1 across the width and the height, so a pixel vector is scaled
    by ``2 / W`` along x and ``2 / H`` along y.
    """
    height, width = x.shape[-2:]
    to_unit = x.new_tensor([2 / width, 2 / height])  # pixels -> [-1, 1] units along (x, y)
    theta = torch.cat(
        [linear * to_unit[:, None] / to_unit[None, :], (shift * to_unit)[:, :, None]], dim=2
    )  # (b, 2, 3)
    return F.grid_sample(
        x,
        affine_grid(theta, height, width),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )


def _rotate(x: Tensor, level: Tensor) -> Tensor:
    angle = torch.deg2rad(ROTATE_DEGREES * level)  # (b,)
    cos, sin = angle.cos(), angle.sin()
    linear = torch.stack([cos, -sin, sin, cos], dim=1).view(-1, 2, 2)
    return _affine(x, linear, x.new_zeros(len(x), 2))


def _shear(x: Tensor, level: Tensor, axis: int) -> Tensor:
    linear = torch.eye(2, dtype=x.dtype, device=x.device).repeat(len(x), 1, 1)  # (b, 2, 2)
    linear[:, axis, 1 - axis] = SHEAR * level  # x moves with y (axis 0), or y with x (1)
    return _affine(x, linear, x.new_zeros(len(x), 2))


def _translate(x: Tensor, level: Tensor, axis: int) -> Tensor:
    shift = x.new_zeros(len(x), 2)
    shift[:, axis] = TRANSLATE * x.shape[-1 - axis] * level  # pixels along x (0) or y (1)
    return _affine(x, torch.eye(2, dtype=x.dtype, device=x.device).expand(len(x), 2, 2), shift)


def equalize(x: Tensor) -> Tensor:
    """Histogram equalization of every channel of images (B, C, H, W) in [0, 1], batched.

    Equal to torchvision's ``equalize`` (PIL's lookup table: ``step`` = pixels not at the
    brightest value present // 255; ``lut[k] = (cumsum[k - 1] + step // 2) // step``; a channel
    with ``step == 0`` is only quantized), on the same 8-bit quantization of the input. One
    histogram scatter for all channels of the batch: 2-3x faster than torchvision's or kornia's
    on a CPU.
    """
    batch, channels, height, width = x.shape
    rows, pixels = batch * channels, height * width
    ids = x.mul(256 - 1e-3).long().clamp_(0, 255).view(rows, pixels)  # torchvision's to-uint8
    histogram = x.new_zeros(rows, 256).scatter_add_(1, ids, x.new_ones(1).expand(rows, pixels))
    cumulative = histogram.cumsum(dim=1)
    brightest = histogram.gather(1, cumulative.argmax(dim=1, keepdim=True))  # (rows, 1)
    step = (pixels - brightest).div_(255).floor_()
    lut = (cumulative[:, :-1] + (step / 2).floor()).div_(step.clamp(min=1)).floor_().clamp_(0, 255)
    lut = torch.cat([lut.new_zeros(rows, 1), lut], dim=1)  # lut[0] = 0
    lut = torch.where(step > 0, lut, torch.arange(256, dtype=x.dtype, device=x.device))
    return lut.gather(1, ids).view_as(x) / 255


def posterize(x: Tensor, bits: Tensor) -> Tensor:
    """Keep the ``bits[i]`` high bits of the 8-bit levels of image ``i`` (B, C, H, W) in [0, 1].

    Kornia's convention: values are quantized through 8-bit integers (``floor(255 x)``) and an
    image keeping all 8 bits is returned unchanged.
    """
    drop = (8 - bits).to(device=x.device, dtype=torch.int64).view(-1, 1, 1, 1)  # low bits dropped
    levels = x.mul(255).long().clamp_(0, 255)
    posterized = ((levels >> drop) << drop).to(x.dtype) / 255
    return torch.where(drop == 0, x, posterized)


_SMOOTH = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13


def sharpness(x: Tensor, factor: Tensor) -> Tensor:
    """PIL's sharpness enhancement with a factor per image (B,), images (B, C, H, W) in [0, 1].

    Blends each image with its 3x3-smoothed version (kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13,
    border pixels kept): ``smooth + factor * (x - smooth)``, clipped to [0, 1]; factor 1 is the
    identity, 0 the smoothed image, > 1 sharpens. Kornia's ``sharpness`` computes the same with
    more overhead per call.
    """
    batch, channels, height, width = x.shape
    kernel = _SMOOTH.to(dtype=x.dtype, device=x.device).view(1, 1, 3, 3)
    smooth = x.clone()
    if height > 2 and width > 2:
        inner = F.conv2d(x.reshape(batch * channels, 1, height, width), kernel)
        smooth[..., 1:-1, 1:-1] = inner.view(batch, channels, height - 2, width - 2)
    return torch.lerp(smooth, x, factor.to(x.dtype).view(-1, 1, 1, 1)).clamp_(0, 1)


OPERATIONS: dict[str, Operation] = {
    "identity": lambda x, level: x,
    "auto_contrast": lambda x, level: TF.autocontrast(x),
    "equalize": lambda x, level: equalize(x),
    "rotate": _rotate,
    "solarize": lambda x, level: KE.solarize(x, 1.0 - level.abs()),
    "color": lambda x, level: KE.adjust_saturation_with_gray_subtraction(x, 1 + ENHANCE * level),
    "posterize": lambda x, level: posterize(x, 8 - (POSTERIZE_BITS * level.abs()).round()),
    "contrast": lambda x, level: KE.adjust_contrast_with_mean_subtraction(x, 1 + ENHANCE * level),
    "brightness": lambda x, level: KE.adjust_brightness_accumulative(x, 1 + ENHANCE * level),
    "sharpness": lambda x, level: sharpness(x, 1 + ENHANCE * level),
    "shear_x": lambda x, level: _shear(x, level, axis=0),
    "shear_y": lambda x, level: _shear(x, level, axis=1),
    "translate_x": lambda x, level: _translate(x, level, axis=0),
    "translate_y": lambda x, level: _translate(x, level, axis=1),
}
COLOR_ONLY = frozenset({"color"})
GEOMETRIC = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")


def _geometric(x: Tensor, level: Tensor, kind: Tensor) -> Tensor:
    """The five geometric operations at once: image i gets ``GEOMETRIC[kind[i]]`` at ``level[i]``.

    Builds each image's matrix and shift exactly as the single operations do, then warps all
    images in one call (the same bilinear samples as :func:`_rotate`, :func:`_shear` and
    :func:`_translate` image by image).
    """
    batch = len(x)
    angle = torch.deg2rad(ROTATE_DEGREES * level) * (kind == 0)  # 0 rad where not a rotation
    cos, sin = angle.cos(), angle.sin()
    shear = SHEAR * level
    linear = torch.stack(
        [cos, -sin + shear * (kind == 1), sin + shear * (kind == 2), cos], dim=1
    ).view(batch, 2, 2)
    height, width = x.shape[-2:]
    shift = torch.stack(
        [TRANSLATE * width * level * (kind == 3), TRANSLATE * height * level * (kind == 4)], dim=1
    )
    return _affine(x, linear.to(x.dtype), shift.to(x.dtype))


class RandAugment(nn.Module):
    """Apply ``num_ops`` operations drawn per image from RandAugment's 14, at one magnitude.

    The operations (the lecture's list): identity, auto-contrast, equalize, rotate, solarize,
    color, posterize, contrast, brightness, sharpness, shear x/y, translate x/y; ``color`` only
    on RGB images. They are drawn with replacement, as in the paper. A symmetric operation
    (rotate, shear, translate, and the enhancement factors) takes a random sign per image;
    geometric ones fill with black.

    Args:
        num_ops: operations applied in sequence to each image (N of the paper).
        magnitude: strength of every operation on the scale [0, 30] (M of the paper; its
            ResNet-50 on ImageNet used N=2, M=9).
        random_magnitude: draw each image's strength of each operation uniformly from
            [0, magnitude] instead (FixMatch's RandAugment variant).
    """

    def __init__(
        self, num_ops: int = 2, magnitude: float = 9.0, random_magnitude: bool = False
    ) -> None:
        super().__init__()
        if num_ops < 1:
            raise ConfigError(f"RandAugment num_ops={num_ops}; it must be >= 1.")
        if not 0.0 <= magnitude <= MAX_MAGNITUDE:
            raise ConfigError(f"RandAugment magnitude={magnitude}; it must be in [0, 30].")
        self.num_ops = num_ops
        self.magnitude = float(magnitude)
        self.random_magnitude = random_magnitude
        # names, not functions, so that the module pickles
        self.rgb_operations = list(OPERATIONS)
        self.gray_operations = [name for name in OPERATIONS if name not in COLOR_ONLY]

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        operations = self.rgb_operations if x.shape[1] == 3 else self.gray_operations
        for _ in range(self.num_ops):
            x = self._apply_one_per_image(x, operations)
        return x

    def _apply_one_per_image(self, x: Tensor, operations: list[str]) -> Tensor:
        batch = x.shape[0]
        # Drawn on the CPU, so the group sizes are known without waiting for the device.
        choice = torch.randint(len(operations), (batch,))  # (B,)
        # the geometric operations form one group (one warp), after the others
        geometric = torch.tensor([op in GEOMETRIC for op in operations])
        kind_of = torch.tensor(
            [GEOMETRIC.index(op) if op in GEOMETRIC else -1 for op in operations]
        )
        group_of = torch.where(geometric, len(operations), torch.arange(len(operations)))
        key = group_of[choice]
        order_cpu = torch.argsort(key, stable=True)
        order = order_cpu.to(x.device, non_blocking=True)  # images grouped by operation
        sizes = torch.bincount(key, minlength=len(operations) + 1).tolist()
        strength = torch.full((batch,), self.magnitude / MAX_MAGNITUDE, device=x.device)
        if self.random_magnitude:
            strength = strength * torch.rand(batch, device=x.device)
        sign = torch.randint(0, 2, (batch,), device=x.device) * 2 - 1
        level = (strength * sign).to(x.dtype)  # (B,), i.i.d., so drawn in the grouped order
        images_by_group = x[order].split(sizes)
        levels_by_group = level.split(sizes)
        done = [
            OPERATIONS[op](images, lv)
            for op, images, lv in zip(operations, images_by_group, levels_by_group, strict=False)
            if len(images)
        ]
        if sizes[-1]:  # the geometric group
            kind = kind_of[choice[order_cpu[batch - sizes[-1] :]]].to(x.device, non_blocking=True)
            done.append(_geometric(images_by_group[-1], levels_by_group[-1], kind))
        return torch.empty_like(x).index_copy_(0, order, torch.cat(done))  # back to input order
