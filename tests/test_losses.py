"""Classification losses against torch's own functions and the lecture's formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from deeprecipe.errors import ConfigError
from deeprecipe.losses import smooth_targets, soft_cross_entropy


def test_smooth_targets_follow_the_lecture_formula():
    y = torch.tensor([0, 3, 1, 3])
    num_classes, epsilon = 5, 0.2
    targets = smooth_targets(y, num_classes, epsilon)
    for row, label in zip(targets.tolist(), y.tolist(), strict=True):  # reference, entry by entry
        for k, value in enumerate(row):
            want = 1 - (num_classes - 1) / num_classes * epsilon if k == label else epsilon / 5
            assert value == pytest.approx(want)
    # the lecture's example: cat 90%, dog 5%, fish 5%
    torch.testing.assert_close(
        smooth_targets(torch.tensor([0]), 3, 0.15), torch.tensor([[0.9, 0.05, 0.05]])
    )
    assert torch.equal(smooth_targets(y, 5, 0.0), F.one_hot(y, 5).float())


@pytest.mark.parametrize("epsilon", [0.0, 0.1, 0.3])
def test_soft_cross_entropy_with_smoothed_targets_equals_torch_label_smoothing(epsilon):
    torch.manual_seed(0)
    logits = torch.randn(32, 10) * 3
    y = torch.randint(0, 10, (32,))
    loss = soft_cross_entropy(logits, smooth_targets(y, 10, epsilon))
    torch.testing.assert_close(loss, F.cross_entropy(logits, y, label_smoothing=epsilon))


def test_soft_cross_entropy_equals_the_explicit_sum():
    torch.manual_seed(1)
    logits = torch.randn(16, 6, requires_grad=True)
    targets = torch.softmax(torch.randn(16, 6), dim=1)  # any rows summing to 1 (Mixup, CutMix)
    loss = soft_cross_entropy(logits, targets)
    want = -(targets * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
    torch.testing.assert_close(loss, want)
    loss.backward()
    torch.testing.assert_close(logits.grad, (torch.softmax(logits, 1) - targets).detach() / 16)


def test_soft_cross_entropy_of_bf16_logits_is_float32():
    logits = torch.randn(4, 3).bfloat16()
    targets = smooth_targets(torch.tensor([0, 1, 2, 0]), 3, 0.1)
    loss = soft_cross_entropy(logits, targets)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, soft_cross_entropy(logits.float(), targets))


def test_bad_inputs_raise():
    with pytest.raises(ConfigError, match="epsilon"):
        smooth_targets(torch.tensor([0]), 3, 1.0)
    with pytest.raises(ValueError, match="same shape"):
        soft_cross_entropy(torch.randn(4, 3), torch.rand(4, 5))
