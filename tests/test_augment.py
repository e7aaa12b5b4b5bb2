"""Batched augmentations against independent per-image references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from deeprecipe.augment import Pipeline, RandomHorizontalFlip, RandomPadCrop
from deeprecipe.errors import ConfigError


def test_flip_is_per_image():
    torch.manual_seed(0)
    x = torch.rand(64, 3, 8, 8)
    out = RandomHorizontalFlip(0.5)(x)
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(out, x, strict=True)]
    kept = [torch.equal(o, i) for o, i in zip(out, x, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 10 < sum(flipped) < 54  # each image draws its own coin
    assert torch.equal(RandomHorizontalFlip(0.0)(x), x)
    assert torch.equal(RandomHorizontalFlip(1.0)(x), x.flip(-1))


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate"])
def test_crop_equals_a_window_of_the_padded_image(mode):
    torch.manual_seed(1)
    pad = 3
    x = torch.rand(32, 2, 10, 12)
    out = RandomPadCrop(pad, mode)(x)
    assert out.shape == x.shape
    padded = F.pad(x, (pad,) * 4, mode="constant" if mode == "zeros" else mode)
    offsets = set()
    for index in range(len(x)):
        # reference: search every window of the padded image, one image at a time
        matches = [
            (top, left)
            for top in range(2 * pad + 1)
            for left in range(2 * pad + 1)
            if torch.equal(out[index], padded[index, :, top : top + 10, left : left + 12])
        ]
        assert matches, f"image {index} is no crop of its padded input"
        offsets.add(matches[0])
    assert len(offsets) > 10  # offsets are drawn per image


def test_pipeline_skips_null_steps_and_validates():
    pipeline = Pipeline(crop=RandomPadCrop(0), flip=None)
    assert list(pipeline.steps) == ["crop"]
    x = torch.rand(2, 1, 4, 4)
    assert torch.equal(pipeline(x), x)
    with pytest.raises(ConfigError):
        RandomPadCrop(2, "wrap")
    with pytest.raises(ConfigError):
        RandomHorizontalFlip(1.5)
