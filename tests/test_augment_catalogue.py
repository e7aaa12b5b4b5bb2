"""The augmentation catalogue against independent, straightforward references (minGPT style)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from deeprecipe.augment import (
    ColorJitter,
    CutMix,
    Cutout,
    GaussianBlur,
    Mixup,
    MixupCutmix,
    PCALighting,
    Pipeline,
    RandAugment,
    RandomErasing,
    RandomGrayscale,
    RandomResizedCrop,
)
from deeprecipe.augment.geometric import affine_grid, resized_crop, sample_crop_boxes
from deeprecipe.augment.mixing import cutmix, mix_targets, mixup
from deeprecipe.augment.randaugment import (
    ENHANCE,
    OPERATIONS,
    SHEAR,
    TRANSLATE,
    equalize,
    posterize,
    sharpness,
)
from deeprecipe.errors import ConfigError
from deeprecipe.losses import smooth_targets

NEW_PRESETS = ["randaugment", "simclr", "strong", "strong_view", "weak"]


def image_ops() -> dict[str, torch.nn.Module]:
    """Every image op with settings that change every image."""
    return {
        "resized_crop": RandomResizedCrop(scale=(0.2, 1.0)),
        "color_jitter": ColorJitter(0.4, 0.4, 0.4, 0.1, p=1.0),
        "blur": GaussianBlur(5, (0.1, 2.0), p=1.0),
        "lighting": PCALighting([0.2, 0.05, 0.01], torch.eye(3).tolist(), sigma=0.5),
        "randaugment": RandAugment(2, 15),
        "cutout": Cutout(0.5, p=1.0),
        "erasing": RandomErasing(p=1.0),
    }


def lighting_for(channels: int) -> PCALighting:
    return PCALighting([0.2, 0.05, 0.01][:channels], torch.eye(channels).tolist(), sigma=0.5)


def op_for(name: str, channels: int) -> torch.nn.Module:
    return lighting_for(channels) if name == "lighting" else image_ops()[name]


# ----------------------------------------------------------------------------- shared contract
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", [*image_ops(), "grayscale"])
def test_shape_and_value_range(name, channels):
    torch.manual_seed(0)
    op = RandomGrayscale(1.0) if name == "grayscale" else op_for(name, channels)
    x = torch.rand(16, channels, 20, 24)
    out = op(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.isfinite(out).all()
    assert out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", list(image_ops()))
def test_random_parameters_are_drawn_per_image(name, channels):
    torch.manual_seed(1)
    op = op_for(name, channels)
    # one image repeated: any difference between outputs comes from per-image parameters
    x = torch.rand(1, channels, 16, 16).mul(0.8).add(0.1).expand(32, -1, -1, -1).contiguous()
    out = op(x).flatten(1)
    distinct = {tuple(row.tolist()) for row in out.round(decimals=5)}
    assert len(distinct) >= 24, f"{name}: only {len(distinct)} distinct outputs of 32"


@pytest.mark.parametrize("option", NEW_PRESETS)
@pytest.mark.parametrize("channels", [1, 3])
def test_presets_run_on_gray_and_colour_images(make_cfg, option, channels):
    aug = instantiate(make_cfg(f"aug={option}").aug)
    assert isinstance(aug, Pipeline)
    x = torch.rand(8, channels, 32, 32)
    out = aug(x)
    assert out.shape == x.shape and out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize(
    "build",
    [
        lambda: RandomResizedCrop(scale=(0.0, 1.0)),
        lambda: RandomResizedCrop(scale=(0.8, 0.2)),
        lambda: RandomResizedCrop(ratio=(1.0,)),
        lambda: ColorJitter(brightness=-0.1),
        lambda: ColorJitter(hue=0.7),
        lambda: ColorJitter(p=2.0),
        lambda: RandomGrayscale(-0.5),
        lambda: GaussianBlur(kernel_size=4),
        lambda: GaussianBlur(sigma=(2.0, 1.0)),
        lambda: PCALighting([1.0, 2.0], [[1.0, 0.0]]),
        lambda: PCALighting([1.0], [[1.0]], sigma=-1.0),
        lambda: RandAugment(num_ops=0),
        lambda: RandAugment(magnitude=31),
        lambda: Cutout(size=0.0),
        lambda: Cutout(p=1.5),
        lambda: RandomErasing(scale=(0.5, 1.5)),
        lambda: Mixup(10, alpha=0.0),
        lambda: CutMix(1),
        lambda: MixupCutmix(10, mixup_alpha=0.0, cutmix_alpha=0.0),
        lambda: MixupCutmix(10, switch_prob=-0.1),
        lambda: MixupCutmix(10, label_smoothing=1.0),
    ],
)
def test_bad_values_raise_config_error(build):
    with pytest.raises(ConfigError):
        build()


# ------------------------------------------------------------------------ random resized crop
@pytest.mark.parametrize("size", [(20, 24), (1, 7), (32, 32)])
def test_affine_grid_equals_torch(size):
    torch.manual_seed(3)
    theta = torch.randn(6, 2, 3)
    want = F.affine_grid(theta, [6, 1, *size], align_corners=False)
    torch.testing.assert_close(affine_grid(theta, *size), want)
    assert affine_grid(theta, *size).is_contiguous()


def test_resized_crop_equals_interpolating_each_crop():
    torch.manual_seed(2)
    x = torch.rand(5, 2, 20, 24)
    # integer boxes (top, left, height, width) of at least half of each side
    boxes = torch.tensor(
        [[0, 0, 20, 24], [3, 5, 10, 12], [10, 0, 10, 24], [0, 12, 20, 12], [2, 7, 15, 17]],
        dtype=torch.float32,
    )
    out = resized_crop(x, boxes)
    for image, (top, left, height, width), got in zip(x, boxes.long().tolist(), out, strict=True):
        crop = image[None, :, top : top + height, left : left + width]
        want = F.interpolate(crop, size=(20, 24), mode="bilinear", align_corners=False)[0]
        # interpolate repeats the crop's edge where grid_sample reads the pixel beyond it
        torch.testing.assert_close(got[:, 1:-1, 1:-1], want[:, 1:-1, 1:-1])
    torch.testing.assert_close(out[0], x[0])  # the whole image is the identity


def test_crop_boxes_lie_inside_with_area_and_ratio_in_range():
    torch.manual_seed(3)
    scale, ratio = (0.2, 0.6), (0.5, 2.0)
    boxes = sample_crop_boxes(4000, 30, 40, scale, ratio)
    top, left, height, width = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + height <= 30 + 1e-4).all() and (left + width <= 40 + 1e-4).all()
    area = height * width / (30 * 40)
    aspect = width / height
    assert area.min() >= scale[0] - 1e-5 and area.max() <= scale[1] + 1e-5
    assert aspect.min() >= ratio[0] - 1e-5 and aspect.max() <= ratio[1] + 1e-5
    # log-uniform aspect: as many wide boxes as tall ones
    assert abs((aspect > 1).float().mean() - 0.5) < 0.05


# ------------------------------------------------------------------------------- photometric
def test_color_jitter_brightness_is_a_per_image_factor():
    torch.manual_seed(4)
    x = torch.rand(64, 3, 8, 8) * 0.5 + 0.25
    out = ColorJitter(brightness=0.3, contrast=0.0, saturation=0.0, hue=0.0)(x)
    factor = out / x  # torchvision's brightness multiplies by one factor per image
    per_image = factor.flatten(1)
    torch.testing.assert_close(per_image, per_image[:, :1].expand_as(per_image))
    assert per_image.min() >= 0.7 - 1e-5 and per_image.max() <= 1.3 + 1e-5
    assert per_image[:, 0].std() > 0.1


def test_color_jitter_changes_only_brightness_and_contrast_without_colour(caplog):
    torch.manual_seed(5)
    colour_only = ColorJitter(brightness=0.0, contrast=0.0, saturation=0.8, hue=0.3)
    gray = torch.rand(16, 1, 8, 8)
    with caplog.at_level("WARNING", logger="deeprecipe.augment.photometric"):
        assert torch.equal(colour_only(gray), gray)
        colour_only(gray)
        RandomGrayscale(0.2)(gray)
        RandomGrayscale(0.0)(gray)  # nothing asked: nothing said
    # the settings that did nothing are named, once per module
    assert [r.getMessage().split(" has")[0] for r in caplog.records] == [
        "Augmentation jitter saturation=0.8 and jitter hue=0.3",
        "Augmentation grayscale p=0.2",
    ]
    rgb = torch.rand(16, 3, 8, 8)
    assert not torch.allclose(colour_only(rgb), rgb)


def test_grayscale_uses_luma_weights_and_skips_gray_images():
    torch.manual_seed(6)
    x = torch.rand(8, 3, 6, 6)
    out = RandomGrayscale(1.0)(x)
    luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    for channel in range(3):
        torch.testing.assert_close(out[:, channel], luma, atol=1e-3, rtol=0)
    gray = torch.rand(8, 1, 6, 6)
    assert torch.equal(RandomGrayscale(1.0)(gray), gray)


def test_pca_fit_matches_covariance_of_all_pixels():
    torch.manual_seed(7)
    images = torch.randint(0, 256, (50, 3, 6, 5), dtype=torch.uint8)
    images[:, 1] = images[:, 0] // 2 + images[:, 1] // 2  # correlated channels
    lighting = PCALighting.from_images(images, chunk_size=7)
    pixels = images.permute(1, 0, 2, 3).reshape(3, -1).double() / 255
    reference = torch.cov(pixels, correction=0)
    values, vectors = lighting.eigenvalues.double(), lighting.eigenvectors.double()
    torch.testing.assert_close(vectors @ torch.diag(values) @ vectors.T, reference)
    assert (values[:-1] >= values[1:]).all()  # largest first
    floats = PCALighting.from_images(images.float() / 255)
    torch.testing.assert_close(floats.eigenvalues, lighting.eigenvalues)


def test_pca_noise_lies_along_the_components():
    torch.manual_seed(8)
    # colours vary along one direction only, so only one component has variance
    direction = torch.tensor([0.2, 0.5, 0.8])
    direction = direction / direction.norm()
    level = torch.rand(200, 1, 6, 6)  # (N, 1, H, W)
    images = 0.3 + 0.2 * level * direction[None, :, None, None]  # (N, 3, H, W)
    lighting = PCALighting.from_images(images, sigma=1.0)
    x = images[:64]
    shift = (lighting(x) - x).flatten(2)  # (B, 3, H * W)
    torch.testing.assert_close(shift, shift[:, :, :1].expand_as(shift))  # same for every pixel
    shift = shift[:, :, 0]  # (B, 3)
    along = shift @ direction  # (B,)
    torch.testing.assert_close(along[:, None] * direction, shift, atol=1e-6, rtol=0)
    assert along.std() > 0  # per image


def test_pca_noise_coefficients_are_alpha_times_eigenvalues():
    torch.manual_seed(9)
    vectors, _ = torch.linalg.qr(torch.randn(3, 3))
    values = torch.tensor([0.04, 0.02, 0.01])
    sigma = 0.5
    lighting = PCALighting(values, vectors, sigma=sigma)
    x = torch.full((4000, 3, 2, 2), 0.5)
    shift = (lighting(x) - x)[:, :, 0, 0]  # (B, 3)
    alpha = (shift @ vectors) / values  # project on the components, divide by eigenvalues
    assert torch.allclose(alpha.std(dim=0), torch.full((3,), sigma), rtol=0.06)
    assert alpha.mean(dim=0).abs().max() < 0.05


def test_pca_on_one_channel_is_a_brightness_shift():
    torch.manual_seed(10)
    images = torch.rand(100, 1, 5, 5)
    lighting = PCALighting.from_images(images, sigma=0.2)
    torch.testing.assert_close(lighting.eigenvalues, images.var(unbiased=False).view(1))
    x = torch.full((2000, 1, 3, 3), 0.5)
    shift = (lighting(x) - x).flatten(1)
    torch.testing.assert_close(shift, shift[:, :1].expand_as(shift))
    expected_std = 0.2 * images.var(unbiased=False)
    assert abs(shift[:, 0].std() / expected_std - 1) < 0.08
    with pytest.raises(ConfigError):
        lighting(torch.rand(2, 3, 4, 4))


# ------------------------------------------------------------------------------- RandAugment
def test_randaugment_applies_one_whole_operation_to_each_image():
    torch.manual_seed(11)
    x = torch.rand(48, 3, 12, 12)
    strength = 12 / 30
    out = RandAugment(num_ops=1, magnitude=12)(x)
    used = set()
    for image, got in zip(x, out, strict=True):
        # reference: every operation at both signs, on this image alone
        matches = [
            name
            for name, op in OPERATIONS.items()
            for sign in (1.0, -1.0)
            if torch.allclose(op(image[None], torch.tensor([sign * strength]))[0], got, atol=1e-5)
        ]
        assert matches, "an output is no single operation of its own input"
        used.update(matches)
    assert len(used) >= 10  # operations are drawn per image


def test_one_warp_for_all_geometric_operations_equals_each_operation_alone():
    from deeprecipe.augment.randaugment import GEOMETRIC, _geometric

    torch.manual_seed(13)
    x = torch.rand(30, 3, 11, 9)  # not square: x and y scales must not mix
    level = torch.rand(30) * 2 - 1
    kind = torch.arange(30) % len(GEOMETRIC)
    together = _geometric(x, level, kind)
    for i in range(30):
        alone = OPERATIONS[GEOMETRIC[int(kind[i])]](x[i : i + 1], level[i : i + 1])
        assert torch.allclose(together[i], alone[0], atol=1e-5), GEOMETRIC[int(kind[i])]


def test_randaugment_differs_per_image_and_never_uses_colour_on_gray():
    torch.manual_seed(12)
    x = torch.rand(1, 1, 10, 10).expand(40, -1, -1, -1).contiguous()
    out = RandAugment(num_ops=2, magnitude=9)(x)
    distinct = {tuple(row.tolist()) for row in out.flatten(1).round(decimals=5)}
    assert len(distinct) >= 30
    augment = RandAugment()
    assert len(augment.gray_operations) == len(augment.rgb_operations) - 1 == 13


def test_randaugment_translation_shifts_whole_pixels():
    x = torch.rand(2, 1, 10, 20)
    level = torch.tensor([5 / (TRANSLATE * 20), -3 / (TRANSLATE * 10)])  # +5 px, -3 px
    right = OPERATIONS["translate_x"](x[:1], level[:1])
    want = torch.zeros_like(x[:1])
    want[..., :15] = x[:1, ..., 5:]  # output pixel x shows input pixel x + 5
    torch.testing.assert_close(right, want)
    down = OPERATIONS["translate_y"](x[1:], level[1:])
    want = torch.zeros_like(x[1:])
    want[..., 3:, :] = x[1:, :, :7, :]  # output row y shows input row y - 3
    torch.testing.assert_close(down, want)


def test_randaugment_rotation_by_90_degrees_is_rot90():
    x = torch.rand(1, 2, 8, 8)
    out = OPERATIONS["rotate"](x, torch.tensor([3.0]))  # level 3: 90 degrees
    torch.testing.assert_close(out, torch.rot90(x, k=1, dims=(-2, -1)), atol=1e-5, rtol=0)


def test_randaugment_shear_shifts_each_row_in_proportion_to_its_height():
    x = torch.rand(1, 1, 6, 16)
    out = OPERATIONS["shear_x"](x, torch.tensor([2.0 / SHEAR]))  # shear factor 2
    want = torch.zeros_like(x)
    for row in range(6):
        offset = int(2 * (row - 2.5))  # 2 * (distance from the centre), an odd integer
        for col in range(16):
            if 0 <= col + offset < 16:
                want[0, 0, row, col] = x[0, 0, row, col + offset]
    torch.testing.assert_close(out, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("channels", [1, 3])
def test_batched_equalize_equals_torchvision(channels):
    from torchvision.transforms.v2 import functional as TF

    torch.manual_seed(21)
    x = torch.rand(6, channels, 12, 10) ** 3  # skewed histograms
    x[1] = 0.5  # flat: only quantized
    x[2] = torch.randint(0, 256, x[2].shape) / 255  # exact 8-bit levels
    x[3, :, :4] = 1.0  # many pixels at the brightest value
    torch.testing.assert_close(equalize(x), TF.equalize(x), atol=1e-6, rtol=0)


def test_posterize_per_image_bits_equals_kornia():
    import kornia.enhance as KE

    torch.manual_seed(23)
    x = torch.rand(4, 3, 7, 7)
    bits = torch.tensor([8, 6, 4, 1])
    out = posterize(x, bits.float())
    for image, b, got in zip(x, bits.tolist(), out, strict=True):
        torch.testing.assert_close(got, KE.posterize(image[None], b)[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(out[0], x[0])  # all 8 bits: unchanged


def test_batched_sharpness_equals_torchvision_image_by_image():
    from torchvision.transforms.v2 import functional as TF

    torch.manual_seed(22)
    x = torch.rand(5, 3, 9, 11)
    factor = torch.tensor([0.1, 1.0, 1.9, 0.5, 1.5])
    out = sharpness(x, factor)
    for image, f, got in zip(x, factor.tolist(), out, strict=True):
        torch.testing.assert_close(got, TF.adjust_sharpness(image, f), atol=1e-6, rtol=0)


def test_randaugment_photometric_levels_follow_the_magnitude_scale():
    torch.manual_seed(13)
    x = torch.rand(1, 1, 8, 8)
    level = torch.tensor([-0.5])
    brightness = OPERATIONS["brightness"](x, level)
    torch.testing.assert_close(brightness, (x * (1 - 0.5 * ENHANCE)).clamp(0, 1))
    solarized = OPERATIONS["solarize"](x, level)  # threshold 1 - |level|
    torch.testing.assert_close(solarized, torch.where(x < 0.5, x, 1 - x))
    posterized = OPERATIONS["posterize"](x, level)  # 8 - round(4 * 0.5) = 6 bits kept
    torch.testing.assert_close(posterized, ((x * 255).floor() // 4 * 4) / 255)
    contrast = OPERATIONS["contrast"](x, level)  # PIL: blend with the mean gray level
    mean = x.mean()
    torch.testing.assert_close(contrast, (mean + (1 - 0.5 * ENHANCE) * (x - mean)).clamp(0, 1))


# ---------------------------------------------------------------------------- Cutout, erasing
def test_cutout_fills_one_clipped_square_per_image():
    torch.manual_seed(14)
    x = torch.rand(64, 2, 16, 16) * 0.9 + 0.1  # no zeros of its own
    out = Cutout(size=0.5, p=1.0, value=0.0)(x)
    clipped = 0
    for image, got in zip(x, out, strict=True):
        filled = got == 0  # (C, H, W)
        assert torch.equal(filled[0], filled[1])  # all channels
        rows = filled[0].any(dim=1).nonzero().flatten()
        cols = filled[0].any(dim=0).nonzero().flatten()
        box = torch.zeros(16, 16, dtype=torch.bool)
        box[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] = True
        assert torch.equal(filled[0], box)  # one rectangle
        assert len(rows) <= 8 and len(cols) <= 8
        clipped += len(rows) < 8 or len(cols) < 8
        assert torch.equal(got[:, ~box], image[:, ~box])
    assert clipped > 10  # squares centred near the border are cut by it
    assert torch.equal(Cutout(0.5, p=0.0)(x), x)


def test_random_erasing_fills_a_box_per_image():
    torch.manual_seed(15)
    x = torch.rand(32, 1, 16, 16) * 0.9 + 0.1
    out = RandomErasing(p=1.0, scale=(0.1, 0.2), value=0.0)(x)
    area = (out == 0).flatten(1).float().mean(dim=1)
    assert area.min() > 0.05 and area.max() < 0.25
    assert torch.equal(RandomErasing(p=0.0)(x), x)


# ------------------------------------------------------------------------------------ mixing
def one_hot(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    return F.one_hot(y, num_classes).float()


def test_mixup_blends_images_and_targets_with_the_same_lambda():
    torch.manual_seed(16)
    x = torch.rand(32, 3, 5, 5)
    y = torch.randint(0, 7, (32,))
    mixed, perm, lam = mixup(x, alpha=0.4)
    for i in range(32):  # reference, one image at a time
        j = int(perm[i])
        torch.testing.assert_close(mixed[i], lam[i] * x[i] + (1 - lam[i]) * x[j])
    targets = mix_targets(y, perm, lam, 7, 0.0)
    want = lam[:, None] * one_hot(y, 7) + (1 - lam[:, None]) * one_hot(y[perm], 7)
    torch.testing.assert_close(targets, want)
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(32))
    assert len(set(lam.tolist())) == 32  # a lambda per image


def test_mixup_module_targets_tell_the_blend():
    torch.manual_seed(17)
    batch = 24
    x = torch.rand(batch, 1, 4, 4)
    y = torch.arange(batch)  # one class per image: the targets name the partner
    mixed, targets = Mixup(num_classes=batch, alpha=1.0)(x, y)
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(batch))
    for i in range(batch):
        torch.testing.assert_close(mixed[i], (targets[i][:, None, None, None] * x).sum(0))


def test_cutmix_lambda_is_one_minus_the_pasted_box_fraction():
    torch.manual_seed(18)
    batch, height, width = 40, 12, 16
    x = torch.arange(1, batch + 1, dtype=torch.float32).view(batch, 1, 1, 1) / (batch + 1)
    x = x.expand(-1, 2, height, width).contiguous()  # image i is the constant (i + 1) / (B + 1)
    mixed, perm, lam = cutmix(x, alpha=1.0)
    targets = mix_targets(torch.arange(batch), perm, lam, batch, 0.0)
    for i in range(batch):
        j = int(perm[i])
        pasted = mixed[i, 0] != x[i, 0, 0, 0]  # (H, W)
        if j == i:
            continue
        assert torch.all(mixed[i, 0][pasted] == x[j, 0, 0, 0])
        rows = pasted.any(dim=1).nonzero().flatten()
        cols = pasted.any(dim=0).nonzero().flatten()
        assert int(pasted.sum()) == len(rows) * len(cols)  # one rectangle
        own = 1 - pasted.float().mean()
        torch.testing.assert_close(lam[i], own)
        want = own * one_hot(torch.tensor(i), batch) + (1 - own) * one_hot(torch.tensor(j), batch)
        torch.testing.assert_close(targets[i], want)
    assert len(set(lam.tolist())) > batch // 2  # a box per image


def test_mixing_with_label_smoothing_mixes_smoothed_targets():
    torch.manual_seed(19)
    x, y = torch.rand(16, 3, 8, 8), torch.randint(0, 5, (16,))
    _, perm, lam = cutmix(x, alpha=1.0)
    targets = mix_targets(y, perm, lam, 5, 0.1)
    smoothed = one_hot(y, 5) * 0.9 + 0.1 / 5
    want = lam[:, None] * smoothed + (1 - lam[:, None]) * smoothed[perm]
    torch.testing.assert_close(targets, want)
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(16))
    assert targets.min() >= 0.1 / 5 - 1e-6


def is_box_mix(mixed: torch.Tensor, x: torch.Tensor) -> bool:
    """Every pixel of every image is a pixel of some input image at the same place."""
    same_place = (mixed[:, None] == x[None]).all(dim=2)  # (B, B, H, W)
    return bool(same_place.any(dim=1).all())


def test_mixup_cutmix_picks_per_batch():
    torch.manual_seed(20)
    x = torch.rand(16, 3, 8, 8)
    y = torch.randint(0, 10, (16,))
    unmixed, targets = MixupCutmix(10, prob=0.0, label_smoothing=0.1)(x, y)
    assert torch.equal(unmixed, x)
    torch.testing.assert_close(targets, smooth_targets(y, 10, 0.1))
    always_cutmix = MixupCutmix(10, switch_prob=1.0)
    assert all(is_box_mix(always_cutmix(x, y)[0], x) for _ in range(5))
    only_cutmix = MixupCutmix(10, mixup_alpha=0.0, switch_prob=0.0)
    assert all(is_box_mix(only_cutmix(x, y)[0], x) for _ in range(5))
    never_cutmix = MixupCutmix(10, switch_prob=0.0)
    assert not any(is_box_mix(never_cutmix(x, y)[0], x) for _ in range(5))
    either = MixupCutmix(10, switch_prob=0.5, label_smoothing=0.1)
    kinds = set()
    for _ in range(20):
        mixed, targets = either(x, y)
        torch.testing.assert_close(targets.sum(dim=1), torch.ones(16))
        kinds.add(is_box_mix(mixed, x))
    assert kinds == {True, False}


def test_beta_of_small_alpha_keeps_lambda_near_the_ends():
    torch.manual_seed(21)
    _, _, lam = mixup(torch.rand(4000, 1, 1, 1), alpha=0.2)
    near_ends = ((lam < 0.1) | (lam > 0.9)).float().mean()
    # Beta(0.2, 0.2) puts 67.3% of its mass within 0.1 of 0 or 1
    assert math.isclose(float(near_ends), 0.673, abs_tol=0.03)
