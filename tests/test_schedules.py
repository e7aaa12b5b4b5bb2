"""Learning-rate schedules against their closed forms, stepped per iteration."""

from __future__ import annotations

import logging
import math
from functools import partial

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from deeprecipe import schedules
from deeprecipe.errors import ConfigError
from deeprecipe.methods.optimization import configure_optimization


def lrs(factory, total=100, steps_per_epoch=10, **kwargs):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = factory(optimizer, total_steps=total, steps_per_epoch=steps_per_epoch, **kwargs)
    values = []
    for _ in range(total):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return values


def test_warmup_then_cosine():
    values = lrs(schedules.cosine, warmup_epochs=1.0)
    assert values[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])
    for step in range(10, 100):
        t = (step - 10) / 90
        assert values[step] == pytest.approx(0.5 * (1 + math.cos(math.pi * t)))


def test_step_multistep_exponential():
    assert lrs(schedules.step, step_epochs=3, gamma=0.5)[29:31] == pytest.approx([1.0, 0.5])
    values = lrs(schedules.multistep, milestones=[2, 5], gamma=0.1)
    assert (
        values[19] == 1.0 and values[20] == pytest.approx(0.1) and values[50] == pytest.approx(0.01)
    )
    values = lrs(schedules.exponential, gamma=0.5)
    assert values[10] == pytest.approx(0.5) and values[20] == pytest.approx(0.25)
    assert values[5] == pytest.approx(0.5**0.5)  # smooth within the epoch


def test_step_milestones_count_from_the_start_of_training():
    """As torch's MultiStepLR/StepLR: a milestone is the epoch it names, warm-up or not."""
    values = lrs(schedules.multistep, milestones=[2, 5], gamma=0.1, warmup_epochs=1.0)
    assert values[9] == pytest.approx(1.0) and values[19] == pytest.approx(1.0)
    assert values[20] == pytest.approx(0.1) and values[50] == pytest.approx(0.01)
    values = lrs(schedules.step, step_epochs=3, gamma=0.5, warmup_epochs=1.0)
    assert values[29:31] == pytest.approx([1.0, 0.5])


def test_decay_that_never_happens_is_warned(caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="deeprecipe.schedules"):
        lrs(schedules.multistep, milestones=[5, 8])  # 10 epochs of 10 steps: both apply
        lrs(schedules.step, step_epochs=4)
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="deeprecipe.schedules"):
        lrs(schedules.multistep, milestones=[5, 10, 15])
    assert "[10, 15] lie at or past the end of the run" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="deeprecipe.schedules"):
        lrs(schedules.step, step_epochs=10)
    assert "never decays" in caplog.text
    with pytest.raises(ConfigError, match="increasing order"):
        lrs(schedules.multistep, milestones=[8, 5])
    with pytest.raises(ConfigError, match="step_epochs=0"):
        lrs(schedules.step, step_epochs=0)


def test_linear_onecycle_constant_inverse_sqrt():
    values = lrs(schedules.linear, warmup_epochs=2.0)
    assert values[19] == pytest.approx(1.0) and values[-1] == pytest.approx(1 / 80)
    assert max(values) == pytest.approx(1.0)
    assert set(lrs(schedules.constant)) == {1.0}
    values = lrs(schedules.inverse_sqrt, warmup_epochs=1.0, timescale_epochs=1.0)
    assert values[10] == pytest.approx(1.0)
    assert values[40] == pytest.approx(math.sqrt(10 / 40))


def test_schedule_state_survives_checkpoint():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = schedules.cosine(optimizer, total_steps=50, steps_per_epoch=5, warmup_epochs=1)
    state = scheduler.state_dict()
    assert state["lr_lambdas"][0]["warmup_steps"] == 5


def test_bad_schedule_values():
    with pytest.raises(ConfigError):
        lrs(schedules.exponential, gamma=1.5)
    with pytest.raises(ConfigError):
        lrs(schedules.cosine, warmup_epochs=-1)


def test_warmup_as_long_as_the_run_is_warned(caplog):
    import logging

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with caplog.at_level(logging.WARNING, logger="deeprecipe.schedules"):
        schedules.cosine(optimizer, total_steps=100, steps_per_epoch=50, warmup_epochs=0.5)
    assert not caplog.records  # 25 of 100 steps: fine
    with caplog.at_level(logging.WARNING, logger="deeprecipe.schedules"):
        schedules.cosine(optimizer, total_steps=100, steps_per_epoch=50, warmup_epochs=2.0)
    assert "100 steps, at least the whole run (100 steps)" in caplog.text


@pytest.mark.parametrize(
    "factory", [schedules.cosine, schedules.linear, schedules.constant, schedules.step]
)
def test_warmup_counted_in_steps_replaces_epochs(factory):
    # 7 warm-up iterations whatever the epoch length and the preset's warmup_epochs
    for steps_per_epoch in (10, 50):
        values = lrs(factory, steps_per_epoch=steps_per_epoch, warmup_epochs=3.0, warmup_steps=7)
        assert values[:7] == pytest.approx([(i + 1) / 7 for i in range(7)])
        assert values[7] == pytest.approx(1.0)
    values = lrs(schedules.cosine, warmup_epochs=2.0, warmup_steps=0)  # 0 turns warm-up off
    assert values[0] == pytest.approx(1.0)
    assert values[50] == pytest.approx(0.5 * (1 + math.cos(math.pi * 50 / 100)))


def test_bad_warmup_steps():
    for bad in (-1, 2.5):
        with pytest.raises(ConfigError, match="scheduler.warmup_steps"):
            lrs(schedules.cosine, warmup_steps=bad)
    with pytest.raises(ConfigError, match="scheduler.warmup_steps"):
        lrs(schedules.cosine_restarts, cycles=2, warmup_steps=-3)


class _Tiny(L.LightningModule):
    """A linear model whose configure_optimizers is the suite's, recording the rate per step."""

    def __init__(self, scheduler):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.scheduler = scheduler
        self.rates: list[float] = []

    def training_step(self, batch, batch_idx):
        self.rates.append(self.trainer.optimizers[0].param_groups[0]["lr"])
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        optimizer = partial(torch.optim.SGD, lr=1.0)
        return configure_optimization(self, optimizer, self.scheduler, decay_norm_and_bias=True)


@pytest.mark.parametrize(("max_epochs", "max_steps"), [(-1, 30), (3, -1)])
def test_warmup_epochs_count_the_real_epoch_when_the_run_is_bounded_by_steps(max_epochs, max_steps):
    # 50 samples in batches of 5: an epoch is 10 steps, whether the run is bounded by steps
    # (Lightning then never loads the data to estimate the run: one epoch used to count as one
    # step) or by epochs
    data = DataLoader(TensorDataset(torch.randn(50, 2)), batch_size=5)
    module = _Tiny(partial(schedules.cosine, warmup_epochs=1.0))
    trainer = L.Trainer(
        max_epochs=max_epochs,
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, data)
    assert len(module.rates) == 30
    # linear warm-up over the first 10 steps, then the half cosine over the last 20
    assert module.rates[:10] == pytest.approx([(i + 1) / 10 for i in range(10)], abs=0.11)
    assert module.rates[9] > module.rates[5] > module.rates[1]
    assert module.rates[10] == pytest.approx(1.0, abs=0.02) and module.rates[-1] < 0.05


def test_base_batch_size_without_scale_lr_is_warned(caplog):
    from deeprecipe.methods.optimization import linear_scaling

    with caplog.at_level(logging.WARNING, logger="deeprecipe.methods.optimization"):
        plain = linear_scaling(partial(torch.optim.SGD, lr=0.1, base_batch_size=64), None)
    assert "no effect without +optim.scale_lr=true" in caplog.text
    assert plain.keywords == {"lr": 0.1}  # the key never reaches the optimizer
