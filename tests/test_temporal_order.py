"""Temporal order verification (Shuffle and Learn): tuple sampling, the method, its experiments."""

from __future__ import annotations

import itertools
import math

import lightning as L
import pytest
import torch

from conftest import requires_fashion
from deeprecipe.batches import Unlabeled
from deeprecipe.errors import ConfigError
from deeprecipe.methods import TemporalOrder
from deeprecipe.methods.temporal_order import gather_frames, sample_tuples
from deeprecipe.models import R2Plus1D
from deeprecipe.models.video import Frame2D
from deeprecipe.train import build

TINY_CLIPS = [
    "data.videos=[carphone,bikes]",
    "data.num_classes=2",
    "data.image_size=16",
    "data.num_frames=5",
    "data.train_clips=8",
    "data.val_clips=8",
    "data.batch_size=4",
    "data.eval_batch_size=8",
    "model.width=8",
]


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def monotone(indices: list[int]) -> bool:
    pairs = list(itertools.pairwise(indices))
    return all(a < b for a, b in pairs) or all(a > b for a, b in pairs)


def fast_trainer() -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        fast_dev_run=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


# ------------------------------------------------------------------------- tuple sampling
@pytest.mark.parametrize(("num_frames", "tuple_len", "min_gap"), [(8, 3, 1), (16, 3, 3), (9, 4, 1)])
def test_tuples_are_labelled_by_their_order(num_frames, tuple_len, min_gap):
    indices, labels = sample_tuples(num_frames, 2000, tuple_len, min_gap, False, generator(0))
    assert indices.shape == (2000, tuple_len) and labels.shape == (2000,)
    assert indices.dtype == labels.dtype == torch.int64
    assert int(indices.min()) >= 0 and int(indices.max()) < num_frames
    middle = tuple_len // 2
    for row, label in zip(indices.tolist(), labels.tolist(), strict=True):
        if label == 1:  # forwards only (no reverse), every step at least min_gap
            assert all(b - a >= min_gap for a, b in itertools.pairwise(row)), row
        else:  # one frame out of place: the middle, outside its neighbours' span
            assert not monotone(row), row
            others = row[:middle] + row[middle + 1 :]
            assert monotone(others), row
            assert row[middle] < min(others) or row[middle] > max(others), row
            assert len(set(row)) == tuple_len, row
    assert abs(labels.float().mean().item() - 0.5) < 0.04  # 50/50, 2000 draws: sd 0.011


def test_reverse_plays_half_the_tuples_backwards_and_keeps_the_labels():
    indices, labels = sample_tuples(8, 2000, 3, 1, True, generator(1))
    rows = indices.tolist()
    for row, label in zip(rows, labels.tolist(), strict=True):
        assert monotone(row) == (label == 1), row
    positives = [row for row, label in zip(rows, labels.tolist(), strict=True) if label == 1]
    backwards = sum(row[0] > row[-1] for row in positives) / len(positives)
    assert abs(backwards - 0.5) < 0.06
    assert abs(labels.float().mean().item() - 0.5) < 0.04


def test_tuples_are_seeded():
    first = sample_tuples(8, 64, 3, 1, True, generator(5))
    again = sample_tuples(8, 64, 3, 1, True, generator(5))
    other = sample_tuples(8, 64, 3, 1, True, generator(6))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], other[0])


def test_every_gap_respecting_tuple_can_be_drawn():
    """5 frames, tuple 3, gap 1: the 5 drawn frames are all of 0..4, so the positive is
    always (1, 2, 3) and the negatives (1, 0, 3) and (1, 4, 3)."""
    indices, labels = sample_tuples(5, 400, 3, 1, False, generator(2))
    seen = {tuple(row) for row in indices.tolist()}
    assert seen == {(1, 2, 3), (1, 0, 3), (1, 4, 3)}
    assert set(labels[indices[:, 1] == 2].tolist()) == {1}


def test_impossible_tuples_are_config_errors():
    with pytest.raises(ConfigError, match="needs a middle frame"):
        sample_tuples(8, 4, 2, 1, True, generator(0))
    with pytest.raises(ConfigError, match="raise data.num_frames"):
        sample_tuples(8, 4, 3, 2, True, generator(0))  # needs 4 * 2 + 1 = 9 frames
    with pytest.raises(ConfigError, match="min_gap"):
        sample_tuples(8, 4, 3, 0, True, generator(0))


def test_gather_frames_picks_each_clips_own_frames():
    clips = torch.arange(6.0).view(1, 1, 6, 1, 1).expand(2, 3, 6, 4, 4).clone()
    clips[1] += 10  # tell the clips apart
    indices = torch.tensor([[1, 0, 5], [4, 3, 2]])
    tuples = gather_frames(clips, indices)
    assert tuples.shape == (2, 3, 3, 4, 4)
    assert tuples[0, :, :, 0, 0].tolist() == [[1.0, 0.0, 5.0]] * 3
    assert tuples[1, :, :, 2, 3].tolist() == [[14.0, 13.0, 12.0]] * 3


# ------------------------------------------------------------------------------- method
def method_for(backbone, **kwargs) -> TemporalOrder:
    return TemporalOrder(
        backbone,
        num_classes=2,
        in_chans=1,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
        scheduler=lambda optimizer, **_: None,
        **kwargs,
    )


@pytest.mark.filterwarnings("ignore:You are trying to")
@pytest.mark.parametrize(
    ("backbone", "encoding"),
    [(R2Plus1D(1, width=8), "clip"), (R2Plus1D(1, width=8), "frames"), (Frame2D(1, 8), "frames")],
)
def test_untrained_head_is_at_chance_and_gradients_reach_the_backbone(backbone, encoding):
    method = method_for(backbone, encoding=encoding)
    clips = torch.randn(6, 1, 8, 16, 16)
    loss = method.training_step(Unlabeled(clips, torch.zeros(6, dtype=torch.long)), 0)
    assert math.isclose(loss.item(), math.log(2), rel_tol=1e-5)  # zero head: log 2
    loss.backward()
    assert method.head.weight.grad is not None and method.head.weight.grad.abs().sum() > 0
    assert any(p.grad is not None for p in method.backbone.parameters())


def test_method_rejects_a_non_binary_head_and_image_batches():
    with pytest.raises(ConfigError, match="num_classes=2"):
        TemporalOrder(
            R2Plus1D(1, width=8), 3, 1, lambda p: torch.optim.SGD(p, lr=0.1), lambda o, **_: None
        )
    method = method_for(R2Plus1D(1, width=8))
    with pytest.raises(ConfigError, match="video clips"):
        method.make_tuples(torch.randn(2, 1, 16, 16), generator(0))


def test_process_shares_of_the_tuples_make_up_the_global_batch():
    """Under DDP each rank draws the global batch's tuples and keeps its share (every world-th),
    so the ranks do not repeat one pattern and the global batch matches one process."""
    method = method_for(R2Plus1D(1, width=8))
    clips = torch.arange(8 * 16, dtype=torch.float).view(8, 1, 16, 1, 1).expand(8, 1, 16, 2, 2)
    whole = method.make_tuples(clips, generator(3))
    shares = [method.make_tuples(clips[rank::2], generator(3), (rank, 2)) for rank in (0, 1)]
    for rank, share in enumerate(shares):
        torch.testing.assert_close(share.x, whole.x[rank::2])
        assert torch.equal(share.y, whole.y[rank::2])


# -------------------------------------------------------------------------- experiments
def pretrain_checkpoint(make_cfg, path) -> TemporalOrder:
    """A fast_dev_run of temporal_order_pretrain on real clips (tiny), saved to ``path``."""
    cfg = make_cfg("+experiment=temporal_order_pretrain", *TINY_CLIPS)
    assert cfg.data.in_chans == 1  # grey, as moving Fashion-MNIST: the stem transfers
    datamodule, method, _ = build(cfg)
    assert isinstance(method, TemporalOrder)
    trainer = fast_trainer()
    trainer.fit(method, datamodule=datamodule)
    assert 0.0 <= float(trainer.callback_metrics["val/acc"]) <= 1.0
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))
    trainer.save_checkpoint(path)
    return method


def test_pretrain_runs_on_real_clips(make_cfg, tmp_path):
    pretrain_checkpoint(make_cfg, tmp_path / "pretrain.ckpt")


@requires_fashion
def test_pretrain_checkpoint_loads_into_the_finetune(make_cfg, tmp_path):
    path = tmp_path / "pretrain.ckpt"
    pretrained = pretrain_checkpoint(make_cfg, path)
    cfg = make_cfg("+experiment=temporal_order_finetune", "model.width=8", f"pretrained={path}")
    assert cfg.data.train_clips == 256 and not cfg.data.redraw_train
    _, tuned, _ = build(cfg)
    for key, value in pretrained.backbone.state_dict().items():
        assert torch.equal(tuned.backbone.state_dict()[key], value), key


def test_finetune_needs_the_checkpoint_and_scratch_shares_its_data(make_cfg):
    with pytest.raises(ConfigError, match="pass pretrained=PATH"):
        build(make_cfg("+experiment=temporal_order_finetune"))
    finetune = make_cfg("+experiment=temporal_order_finetune", "pretrained=x.ckpt")
    scratch = make_cfg("+experiment=temporal_order_scratch")
    assert scratch.get("pretrained") is None
    for key in ("data", "model", "optim", "scheduler", "trainer"):
        assert finetune[key] == scratch[key], key
