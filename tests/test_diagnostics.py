"""The diagnostics callbacks against hand-computed values on toy networks, and in a real run."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import QUIET
from deeprecipe.callbacks import (
    ActivationStatistics,
    FirstLayerFilters,
    GradientNorms,
    NonFiniteLayerGuard,
    UpdateRatio,
)
from deeprecipe.callbacks.activations import activation_statistics
from deeprecipe.callbacks.filters import filter_grid
from deeprecipe.callbacks.layer_guard import first_non_finite_layer
from deeprecipe.errors import NonFiniteLossError
from deeprecipe.train import build

# Inputs (4, 2) and first-layer weights (3, 2) whose ReLU outputs are known by hand:
# pre-activations [[1, 2, -3], [3, 1, -4], [2, 2, -4], [1, 0, -1]], so the outputs are
# [[1, 2, 0], [3, 1, 0], [2, 2, 0], [1, 0, 0]].
INPUTS = torch.tensor([[1.0, 2.0], [3.0, 1.0], [2.0, 2.0], [1.0, 0.0]])
LABELS = torch.tensor([0, 1, 0, 1])
FIRST_WEIGHT = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])


class Toy(L.LightningModule):
    """Linear(2, 3) - ReLU - Linear(3, 2) trained with plain SGD on one fixed batch."""

    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))
        with torch.no_grad():
            self.net[0].weight.copy_(FIRST_WEIGHT)
            self.net[0].bias.zero_()
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def train_dataloader(self):
        return DataLoader(TensorDataset(INPUTS, LABELS), batch_size=len(LABELS))  # one batch

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def fit(module: L.LightningModule, callbacks: list, root: Path, steps: int = 1) -> None:
    trainer = L.Trainer(
        max_steps=steps,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        default_root_dir=str(root),
    )
    trainer.fit(module)


def test_update_ratio_and_gradient_norms_equal_hand_computed(tmp_path):
    module = Toy(lr=0.1)
    reference = Toy(lr=0.1)  # same initial weights
    loss = F.cross_entropy(reference(INPUTS), LABELS)
    loss.backward()
    ratios, grad_norms = UpdateRatio(every_n_steps=1), GradientNorms(every_n_steps=1)
    fit(module, [ratios, grad_norms], tmp_path)
    for layer in ("net.0", "net.2"):
        weight = reference.get_parameter(f"{layer}.weight")
        # plain SGD: ||W_after - W_before|| / ||W_before|| = lr * ||dW|| / ||W||
        expected = 0.1 * weight.grad.norm().item() / weight.norm().item()
        assert ratios.latest[layer] == pytest.approx(expected, rel=1e-5)
        assert grad_norms.latest[layer] == pytest.approx(weight.grad.norm().item(), rel=1e-5)
    assert set(ratios.latest) == {"net.0", "net.2"}  # weights only, named by layer


def test_update_ratio_warns_once_per_layer_when_far_from_target(tmp_path, caplog):
    ratios = UpdateRatio(every_n_steps=1, target=1e-3, tolerance=10.0)
    fit(Toy(lr=0.5), [ratios], tmp_path, steps=3)  # updates far above 1e-2 of the weights
    warnings = [r.message for r in caplog.records if "update/weight ratio" in r.message]
    assert len(warnings) == len({w.split(" is ")[0] for w in warnings}) >= 1
    assert "learning rate too high" in warnings[0]


def test_activation_statistics_equal_hand_computed():
    outputs = torch.relu(INPUTS @ FIRST_WEIGHT.T)  # (4, 3), see the comment on INPUTS
    stats = activation_statistics(outputs)
    # values 1,2,0,3,1,0,2,2,0,1,0,0: mean 12/12, E[x^2] = 24/12 so variance 2 - 1 = 1
    assert stats.mean == pytest.approx(1.0)
    assert stats.std == pytest.approx(1.0)
    assert stats.dead_fraction == pytest.approx(1 / 3)  # the third unit never fires
    assert stats.sparsity == pytest.approx(5 / 12)
    # units [1, 3, 2, 1] and [2, 1, 2, 0]: covariance sum 0.25, squared deviations 2.75 each
    assert stats.mean_abs_correlation == pytest.approx(1 / 11)
    assert stats.correlation.shape == (2, 2)  # the dead unit has no correlation


def test_activation_statistics_of_convolutions_use_channels_as_units():
    images = torch.zeros(2, 3, 4, 4)  # (B, C, H, W)
    images[:, 0] = torch.arange(16.0).view(4, 4)
    images[:, 1] = -torch.arange(16.0).view(4, 4)  # perfectly anti-correlated with channel 0
    stats = activation_statistics(images)
    assert stats.dead_fraction == pytest.approx(1 / 3)  # channel 2 is zero everywhere
    assert stats.mean_abs_correlation == pytest.approx(1.0)


def test_activation_callback_logs_hand_computed_values_and_images(tmp_path):
    callback = ActivationStatistics(every_n_steps=1, images_every_n_steps=1)
    fit(Toy(), [callback], tmp_path)
    stats = callback.latest["net.1"]  # the ReLU, on the first (captured) step
    assert (stats.mean, stats.std) == pytest.approx((1.0, 1.0))
    assert (stats.dead_fraction, stats.sparsity) == pytest.approx((1 / 3, 5 / 12))
    assert stats.mean_abs_correlation == pytest.approx(1 / 11)
    images = sorted(p.name for p in (tmp_path / "plots" / "diag").glob("*.png"))
    assert images == [
        "diag_activation_histograms_step000001.png",
        "diag_unit_correlations_step000001.png",
    ]


def test_filter_grids_of_convolutions_and_linear_layers():
    conv = filter_grid(torch.randn(8, 1, 3, 3))
    assert conv is not None and conv.dtype.name == "uint8" and conv.shape[2] == 3
    linear = filter_grid(torch.randn(16, 64), in_chans=1)  # an MLP on 8x8 grey images
    assert linear is not None and linear.shape[0] > 32
    assert filter_grid(torch.randn(16, 10)) is None  # not images: nothing to draw


class Poison(L.Callback):
    """Fill one layer's weight with NaN before the given step."""

    def __init__(self, layer: str, step: int) -> None:
        self.layer, self.step = layer, step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                pl_module.get_parameter(f"{self.layer}.weight").fill_(math.nan)


def test_nan_guard_names_the_first_non_finite_layer(tmp_path):
    with pytest.raises(NonFiniteLossError) as raised:
        fit(Toy(), [Poison("net.2", step=2), NonFiniteLayerGuard()], tmp_path, steps=4)
    message = str(raised.value)
    assert "at step 2" in message
    assert "'net.2' (Linear)" in message and "own parameters are non-finite" in message


def test_first_non_finite_layer_tells_input_and_overflow_apart():
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    bad_input = torch.tensor([[math.nan, 1.0]])
    layer = first_non_finite_layer(net, lambda: net(bad_input))
    assert layer is not None and layer.name == "0" and not layer.input_finite
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(2))
        net[0].bias.zero_()
        net[2].weight.fill_(1e38)  # finite weights, but their product with 1e10 overflows
    layer = first_non_finite_layer(net, lambda: net(torch.full((1, 2), 1e10)))
    assert layer is not None and layer.name == "2"
    assert layer.input_finite and layer.parameters_finite and "overflowed" in layer.describe()
    assert first_non_finite_layer(net, lambda: net(torch.ones(1, 2) * 1e-3)) is None


def test_diagnostics_config_logs_under_stable_names(make_cfg, tmp_path):
    cfg = make_cfg(
        "data=digits",
        "model=mlp",
        "model.hidden_dims=[16]",
        "aug=none",
        "callbacks=diagnostics",
        "callbacks.update_ratio.every_n_steps=2",
        "callbacks.grad_norm.every_n_steps=2",
        "callbacks.activation_stats.every_n_steps=2",
        "callbacks.activation_stats.images_every_n_steps=4",
        "callbacks.first_layer_filters.every_n_steps=4",
        "trainer.max_steps=5",
        "trainer.log_every_n_steps=1",
        "~callbacks.model_checkpoint",
        "trainer.max_epochs=1",
        *QUIET,
    )
    datamodule, method, trainer = build(cfg)
    assert isinstance(trainer.callbacks[0], L.Callback)
    assert any(isinstance(c, NonFiniteLayerGuard) for c in trainer.callbacks)
    assert any(isinstance(c, FirstLayerFilters) for c in trainer.callbacks)
    trainer.fit(method, datamodule=datamodule)
    run_dir = Path(cfg.paths.output_dir)
    with (run_dir / "csv" / "metrics.csv").open() as handle:
        columns = next(csv.reader(handle))
    layer = "backbone.layers.0.0"  # the MLP's first Linear
    for name in ("update_ratio", "grad_norm"):
        assert f"diag/{name}/{layer}" in columns
    for name in ("act_mean", "act_std", "dead_fraction", "sparsity", "unit_corr"):
        assert f"diag/{name}/backbone.layers.0.1" in columns  # its ReLU
    images = {p.name.split("_step")[0] for p in (run_dir / "plots" / "diag").glob("*.png")}
    assert images == {
        "diag_activation_histograms",
        "diag_unit_correlations",
        "diag_first_layer_filters",
    }


def test_throughput_counts_the_images_of_every_batch_kind():
    """Training images per step: multi-view batches count each image once (they counted 0),
    semi batches count labelled + unlabelled (FixMatch/Mean Teacher counted labelled only)."""
    from deeprecipe.batches import Labeled, Semi, SemiViews, Unlabeled, Views
    from deeprecipe.callbacks.throughput import count_samples

    images, labels = torch.zeros(8, 1, 4, 4), torch.zeros(8, dtype=torch.long)
    unlabeled = torch.zeros(56, 1, 4, 4)
    assert count_samples(Labeled(images, labels)) == 8
    assert count_samples(Views((images, images), labels)) == 8
    hidden = torch.zeros(56, dtype=torch.long)
    assert count_samples(Semi(Labeled(images, labels), Unlabeled(unlabeled, hidden))) == 64
    assert count_samples(SemiViews(Labeled(images, labels), unlabeled, unlabeled, hidden)) == 64


def test_learning_curves_keep_val_only_for_epochs_that_validated(make_cfg):
    """With check_val_every_n_epoch=2, epochs 0 and 2 did not validate: their rows must not
    repeat the last validation's values (Lightning keeps them in callback_metrics)."""
    import json

    from deeprecipe.callbacks import LearningCurves

    datamodule, method, trainer = build(
        make_cfg("+experiment=digits_mlp", *QUIET, "trainer.max_epochs=3"),
        (LearningCurves(),),
        check_val_every_n_epoch=2,
        limit_train_batches=2,
        num_sanity_val_steps=0,
    )
    trainer.fit(method, datamodule=datamodule)
    rows = json.loads((Path(trainer.default_root_dir) / "plots/learning_curves.json").read_text())
    has_val = [("val/acc" in row, row["epoch"]) for row in rows["epochs"]]
    assert has_val == [(False, 0.0), (True, 1.0), (False, 2.0)]
