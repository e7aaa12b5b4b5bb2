"""Self-supervised methods train (fast_dev_run on Fashion-MNIST); kNN monitor; weight transfer."""

from __future__ import annotations

import importlib

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import Tensor, nn
from torch.utils.data import DataLoader

from deeprecipe.callbacks import KNNMonitor
from deeprecipe.callbacks.knn import knn_predict
from deeprecipe.data.base import ImageArrays, TensorBatchDataset, keep_batch
from deeprecipe.errors import CheckpointError, ConfigError
from deeprecipe.methods import BaseMethod, MoCo, SimCLR
from deeprecipe.methods.momentum import cosine_momentum, ema_update_
from deeprecipe.models.base import Backbone
from deeprecipe.transfer import load_backbone_weights

SMALL = ["model=resnet9", "model.width=8", "aug=simclr"]


def build_method(cfg):
    return instantiate(
        cfg.method,
        backbone=instantiate(cfg.model),
        optimizer=instantiate(cfg.optim),
        scheduler=instantiate(cfg.scheduler),
        augment=instantiate(cfg.aug),
    )


def fast_trainer(**kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        fast_dev_run=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def snapshot(module: nn.Module) -> list[Tensor]:
    return [t.detach().clone() for t in module.state_dict().values()]


def changed(before: list[Tensor], module: nn.Module) -> bool:
    after = module.state_dict().values()
    return any(not torch.equal(b, a) for b, a in zip(before, after, strict=True))


@pytest.mark.parametrize("name", ["simclr", "byol", "barlow_twins", "moco", "rotation"])
def test_pretraining_fast_dev_run(make_cfg, fashion, name):
    method = build_method(make_cfg(f"method={name}", *SMALL))
    backbone, head = snapshot(method.backbone), snapshot(method.head)
    momentum = getattr(method, "momentum_backbone", None)
    momentum_before = snapshot(momentum) if momentum is not None else None
    fast_trainer().fit(method, datamodule=fashion)
    assert changed(backbone, method.backbone) and changed(head, method.head)
    if momentum is not None:  # the target followed the online network, without gradients
        assert changed(momentum_before, momentum)
        assert all(p.grad is None for p in momentum.parameters())
    result = fast_trainer().validate(method, datamodule=fashion, verbose=False)[0]
    assert 0.0 <= result["val/acc"] <= 1.0


@pytest.mark.parametrize("name", ["byol", "moco"])
@pytest.mark.parametrize("accumulate", [1, 2])
def test_momentum_moves_once_per_optimizer_step(make_cfg, fashion, monkeypatch, name, accumulate):
    """With gradient accumulation the target moves after each optimizer step, not each batch
    (else momentum m would act as m**k per step)."""
    module = importlib.import_module(f"deeprecipe.methods.{name}")
    calls = []
    monkeypatch.setattr(module, "ema_update_", lambda *args: calls.append(args[-1]))
    method = build_method(make_cfg(f"method={name}", *SMALL))
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=2,
        limit_val_batches=0,
        accumulate_grad_batches=accumulate,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(method, datamodule=fashion)
    assert trainer.global_step == 2
    assert len(calls) == 2 * 2  # per optimizer step: the backbone and the projector


def test_views_need_augmentation(make_cfg):
    backbone = instantiate(make_cfg(*SMALL).model)
    with pytest.raises(ConfigError, match="aug=simclr"):
        SimCLR(backbone, 10, 1, optimizer=None, scheduler=None, augment=None)  # type: ignore[arg-type]


def test_linear_probe_trains_only_the_head(make_cfg, fashion):
    method = build_method(make_cfg("method=linear_probe", "model=resnet9", "model.width=8"))
    backbone, head = snapshot(method.backbone), snapshot(method.head)  # BN statistics included
    fast_trainer().fit(method, datamodule=fashion)
    assert not changed(backbone, method.backbone)  # no gradients, and BN in eval mode
    assert changed(head, method.head)
    method.train()
    assert method.head.training and not any(m.training for m in method.backbone.modules())


def test_momentum_schedule_and_ema():
    assert cosine_momentum(0, 100, 0.996) == pytest.approx(0.996)
    assert cosine_momentum(50, 100, 0.996) == pytest.approx(0.998)
    assert cosine_momentum(100, 100, 0.996) == pytest.approx(1.0)
    online, target = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    with torch.no_grad():
        online.weight.fill_(2.0)
        online.running_mean.fill_(5.0)
    ema_update_(target, online, 0.9)
    assert torch.allclose(target.weight, torch.full((3,), 0.9 * 1.0 + 0.1 * 2.0))
    assert torch.equal(target.running_mean, online.running_mean)  # buffers are copied


def test_moco_queue_is_fifo_and_wraps(make_cfg):
    cfg = make_cfg("method=moco", "method.queue_size=5", "method.proj_dim=2", *SMALL)
    method = build_method(cfg)
    assert isinstance(method, MoCo)
    first, second = torch.ones(3, 2), torch.full((3, 2), 2.0)
    method.enqueue(first)
    method.enqueue(second)
    # rows 0-2 got `first`, then `second` filled rows 3, 4 and wrapped to row 0
    assert method.queue[:, 0].tolist() == [2.0, 1.0, 1.0, 2.0, 2.0]
    assert int(method.queue_pointer) == 1


# ------------------------------------------------------------------------------------ kNN
NUM_CLASSES, STEP = 10, 20  # images are filled with the value STEP * label


class LabelReader(Backbone):
    """A perfect feature map: the one-hot label, read off the image's pixel value.

    It passes through a batch norm whose fresh running statistics are the identity, so features
    stay perfect only when the monitor runs the backbone with its norm layers in eval mode.
    """

    num_features = NUM_CLASSES

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(1)

    def forward_features(self, x: Tensor) -> Tensor:
        value = self.norm(x.mean(dim=(1, 2, 3))[:, None])[:, 0]  # (B,) normalized pixel value
        label = ((value * 0.5 + 0.5) * 255 / STEP).round().long().clamp(0, NUM_CLASSES - 1)
        return F.one_hot(label, NUM_CLASSES).float()  # (B, NUM_CLASSES)


class CodedImages(L.LightningDataModule):
    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.splits = {}
        for split, size in (("train", 200), ("val", 50)):
            labels = torch.randint(0, NUM_CLASSES, (size,), generator=generator)
            images = (labels * STEP).to(torch.uint8)[:, None, None, None].expand(-1, 1, 4, 4)
            self.splits[split] = ImageArrays(images.contiguous(), labels)

    def _loader(self, split: str) -> DataLoader:
        return DataLoader(
            TensorBatchDataset(self.splits[split]), batch_size=32, collate_fn=keep_batch
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")


def test_knn_of_perfect_features_is_exact():
    method = BaseMethod(LabelReader(), NUM_CLASSES, 1, optimizer=None, scheduler=None)  # type: ignore[arg-type]
    method.backbone.train()
    trainer = fast_trainer(callbacks=[KNNMonitor(k=20, temperature=0.1)])
    result = trainer.validate(method, datamodule=CodedImages(), verbose=False)[0]
    assert result["val/knn_acc"] == 1.0
    assert float(method.backbone.norm.running_mean) == 0.0  # never ran in training mode


def test_knn_runs_in_every_stand_alone_validate():
    """every_n_epochs spaces the monitor out during training only: trainer.validate (a run's
    final evaluation, a linear probe's) always reports val/knn_acc."""
    method = BaseMethod(LabelReader(), NUM_CLASSES, 1, optimizer=None, scheduler=None)  # type: ignore[arg-type]
    trainer = fast_trainer(callbacks=[KNNMonitor(every_n_epochs=2, k=20)])
    assert trainer.current_epoch == 0  # (0 + 1) % 2 != 0: a training epoch would skip it
    result = trainer.validate(method, datamodule=CodedImages(), verbose=False)[0]
    assert result["val/knn_acc"] == 1.0


def test_knn_vote_is_weighted():
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.2, 0.8]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    query = torch.tensor([[1.0, 0.05]])
    # plain majority of all 5 neighbours says 1; similarity weights with a low temperature say 0
    assert knn_predict(query, bank, labels, 2, k=5, temperature=0.05).item() == 0
    assert knn_predict(query, bank, labels, 2, k=5, temperature=100.0).item() == 1


# ------------------------------------------------------------------------------- transfer
@pytest.fixture
def pretrained_checkpoint(make_cfg, fashion, tmp_path):
    method = build_method(make_cfg("method=simclr", *SMALL))
    trainer = fast_trainer()
    trainer.fit(method, datamodule=fashion)
    path = tmp_path / "pretrain.ckpt"
    trainer.save_checkpoint(path)
    return path, method


def test_load_backbone_weights_round_trip_and_mismatch(make_cfg, pretrained_checkpoint, tmp_path):
    path, pretrained = pretrained_checkpoint
    backbone = instantiate(make_cfg(*SMALL).model)
    load_backbone_weights(backbone, path)
    for key, value in pretrained.backbone.state_dict().items():
        assert torch.equal(backbone.state_dict()[key], value), key

    wider = instantiate(make_cfg("model=resnet9", "model.width=16").model)
    with pytest.raises(CheckpointError, match=r"shapes differ.*same model, model.width"):
        load_backbone_weights(wider, path)
    other = instantiate(make_cfg("model=lenet").model)
    with pytest.raises(CheckpointError, match="missing in the checkpoint"):
        load_backbone_weights(other, path)
    with pytest.raises(CheckpointError, match="no such file"):
        load_backbone_weights(backbone, tmp_path / "absent.ckpt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="no 'state_dict'"):
        load_backbone_weights(backbone, tmp_path / "plain.pt")
