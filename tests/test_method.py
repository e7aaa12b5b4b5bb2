"""The supervised method trains every model (fast_dev_run) and keeps its contracts."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from conftest import image_model_options
from deeprecipe.batches import Labeled
from deeprecipe.callbacks import NonFiniteLossGuard
from deeprecipe.errors import NonFiniteLossError
from deeprecipe.methods.optimization import parameter_groups
from nan_helpers import PoisonWeightsAt


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
        fast_dev_run=kwargs.pop("fast_dev_run", 2),
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


# narrower than their defaults, to keep the test fast; the wiring is the same
NARROW = {"resnet18": ["model.width=16"], "resnet34": ["model.width=16"]}


@pytest.mark.parametrize("model", image_model_options())
def test_supervised_fast_dev_run_each_model(make_cfg, fashion, model):
    method = build_method(make_cfg(f"model={model}", *NARROW.get(model, [])))
    before = [p.detach().clone() for p in method.parameters()]
    fast_trainer().fit(method, datamodule=fashion)
    after = list(method.parameters())
    assert any(not torch.equal(b, a) for b, a in zip(before, after, strict=True))
    # normalization statistics came from the training split
    assert method.normalize.mean.flatten()[0].item() == pytest.approx(fashion.mean[0])
    result = fast_trainer().test(method, datamodule=fashion, verbose=False)[0]
    assert 0.0 <= result["test/acc"] <= 1.0 and "test/acc_top5" in result


def test_augmentation_only_in_training(make_cfg, fashion):
    method = build_method(make_cfg("model=mlp"))
    batch = next(iter(fashion.train_dataloader()))
    plain = method.prepare_images(batch.x, augment=False)
    assert plain.dtype == torch.float32
    assert torch.allclose(plain, (batch.x.float() / 255 - 0.5) / 0.5)  # default stats before setup
    torch.manual_seed(0)
    augmented = method.prepare_images(batch.x, augment=True)
    assert not torch.equal(plain, augmented)


def test_no_weight_decay_on_norm_and_bias():
    module = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2)
    )
    decay, no_decay = parameter_groups(module, 5e-4, decay_norm_and_bias=False)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    assert {tuple(p.shape) for p in decay["params"]} == {(4, 1, 3, 3), (2, 4)}
    assert len(no_decay["params"]) == 4  # conv bias, BN weight and bias, linear bias
    (everything,) = parameter_groups(module, 5e-4, decay_norm_and_bias=True)
    assert len(everything["params"]) == 6


def test_nonfinite_loss_stops_with_step(make_cfg, fashion):
    method = build_method(make_cfg("model=mlp"))
    trainer = fast_trainer(
        fast_dev_run=5, callbacks=[NonFiniteLossGuard(), PoisonWeightsAt(step=3)]
    )
    with pytest.raises(NonFiniteLossError, match="became NaN at step 3.*Lower the learning rate"):
        trainer.fit(method, datamodule=fashion)


def test_forward_gives_logits(make_cfg):
    method = build_method(make_cfg("model=lenet"))
    logits = method(torch.randn(2, 1, 28, 28))
    assert logits.shape == (2, 10)
    assert isinstance(Labeled(torch.zeros(1), torch.zeros(1)).x, torch.Tensor)
