"""Every option of every config group composes and instantiates (lightning-hydra-template)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import group_options, is_sequence_model
from deeprecipe.augment import Pipeline
from deeprecipe.data import CharTextDataModule, ImageDataModule, VideoDataModule
from deeprecipe.methods import BaseMethod, LanguageModel
from deeprecipe.models import Backbone, SequenceBackbone

# sequence models and the language model compose with text data instead of the default images
TEXT_DATA = "data=fortunes"
LANGUAGE_MODEL = [TEXT_DATA, "model=lstm", "aug=none"]
GROUPS = ["data", "aug", "model", "method", "optim", "scheduler", "trainer", "logger", "callbacks"]


def test_every_group_has_options():
    for group in [*GROUPS, "experiment", "sweep"]:
        assert group_options(group), f"conf/{group}/ is empty"


@pytest.mark.parametrize("option", group_options("data"))
def test_data_options(make_cfg, option):
    overrides = [f"data={option}"]
    if option in ("image_folder", "video_folder"):
        overrides.append("data.num_classes=3")
    datamodule = instantiate(make_cfg(*overrides).data)
    assert isinstance(datamodule, ImageDataModule | CharTextDataModule | VideoDataModule)


@pytest.mark.parametrize("option", group_options("aug"))
def test_aug_options(make_cfg, option):
    aug = instantiate(make_cfg(f"aug={option}").aug)
    assert isinstance(aug, Pipeline)
    x = torch.rand(4, 1, 28, 28)
    assert aug(x).shape == x.shape


@pytest.mark.parametrize("option", group_options("model"))
def test_model_options(make_cfg, option):
    data = [TEXT_DATA] if is_sequence_model(option) else []
    model = instantiate(make_cfg(*data, f"model={option}").model)
    assert isinstance(model, Backbone | SequenceBackbone)


@pytest.mark.parametrize("option", group_options("optim"))
def test_optim_options(make_cfg, option):
    optimizer = instantiate(make_cfg(f"optim={option}").optim)([torch.nn.Parameter(torch.ones(2))])
    assert isinstance(optimizer, torch.optim.Optimizer)


@pytest.mark.parametrize("option", group_options("scheduler"))
def test_scheduler_options(make_cfg, option):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1)
    factory = instantiate(make_cfg(f"scheduler={option}").scheduler)
    scheduler = factory(optimizer, total_steps=100, steps_per_epoch=10)
    for _ in range(100):
        optimizer.step()
        scheduler.step()
    assert 0.0 <= optimizer.param_groups[0]["lr"] <= 0.1


@pytest.mark.parametrize("option", group_options("method"))
def test_method_options(make_cfg, option):
    cfg = make_cfg(*(LANGUAGE_MODEL if option == "language_model" else []), f"method={option}")
    method = instantiate(
        cfg.method,
        backbone=instantiate(cfg.model),
        optimizer=instantiate(cfg.optim),
        scheduler=instantiate(cfg.scheduler),
        augment=instantiate(cfg.aug),
    )
    assert isinstance(method, BaseMethod | LanguageModel)


@pytest.mark.parametrize("option", group_options("trainer"))
def test_trainer_options(make_cfg, option):
    cfg = make_cfg(f"trainer={option}")
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        # a GPU preset composes here, and on a machine without one it fails clearly
        assert cfg.trainer.strategy is not None
        with pytest.raises(Exception, match="(?i)gpu|cuda"):
            instantiate(cfg.trainer, logger=False)
        return
    trainer = instantiate(cfg.trainer, logger=False)
    assert isinstance(trainer, L.Trainer)


@pytest.mark.parametrize("option", group_options("logger"))
def test_logger_options(make_cfg, option, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    loggers = [instantiate(node) for node in make_cfg(f"logger={option}").logger.values()]
    assert loggers


@pytest.mark.parametrize("option", group_options("callbacks"))
def test_callbacks_options(make_cfg, option):
    callbacks = [instantiate(node) for node in make_cfg(f"callbacks={option}").callbacks.values()]
    assert all(isinstance(c, L.Callback) for c in callbacks)


@pytest.mark.parametrize("name", group_options("experiment"))
def test_experiments_compose_and_instantiate(make_cfg, name):
    cfg = make_cfg(f"+experiment={name}")
    assert cfg.run_name == name
    instantiate(cfg.data)
    instantiate(cfg.model)


@pytest.mark.parametrize("name", group_options("sweep"))
def test_sweeps_compose(make_cfg, name):
    cfg = make_cfg(f"+sweep={name}")
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    assert "optim.lr" in params


def test_hiding_the_progress_bar_drops_the_configured_one(make_cfg):
    """`trainer.enable_progress_bar=false` must not clash with callbacks.progress_bar."""
    from lightning.pytorch.callbacks import ProgressBar

    from deeprecipe.train import build

    _, _, shown = build(make_cfg("data=digits", "model=mlp"))
    assert any(isinstance(c, ProgressBar) for c in shown.callbacks)
    _, _, hidden = build(make_cfg("data=digits", "model=mlp", "trainer.enable_progress_bar=false"))
    assert not any(isinstance(c, ProgressBar) for c in hidden.callbacks)


def test_max_steps_is_a_trainer_key(make_cfg):
    from deeprecipe.train import build

    _, _, trainer = build(make_cfg("data=digits", "model=mlp", "trainer.max_steps=7"))
    assert trainer.max_steps == 7


@pytest.mark.parametrize(
    ("overrides", "mode", "direction"),
    [((), "max", "maximize"), (("+experiment=char_lstm",), "min", "minimize")],
)
def test_objective_mode_drives_checkpoint_early_stopping_and_sweeps(
    make_cfg, overrides, mode, direction
):
    """One setting says whether the objective is better higher or lower: the best checkpoint,
    early stopping and the sweeper's direction all follow it (val/bpc is minimized)."""
    cfg = make_cfg(*overrides, "callbacks=early_stopping", "+sweep=tpe_lr_wd")
    for callback in ("model_checkpoint", "early_stopping"):
        assert cfg.callbacks[callback].monitor == cfg.objective
        assert cfg.callbacks[callback].mode == mode
    assert cfg.hydra.sweeper.direction == direction


def test_objective_mode_is_checked(make_cfg):
    from deeprecipe.errors import ConfigError
    from deeprecipe.train import check_config

    with pytest.raises(ConfigError, match="objective_mode='maximize'"):
        check_config(make_cfg("objective_mode=maximize"))
