"""Statistics of hidden activations, the lecture's "visualize hidden units" check.

Good training gives hidden units that are sparse, active on some inputs and not others, and
uncorrelated with each other; bad training shows units that ignore the input (dead ReLUs) or
move together (strong correlations). This callback measures both on the outputs of every
activation module (ReLU, GELU, tanh, ...) through forward hooks.
"""

from __future__ import annotations

import logging
import math
from typing import Any, NamedTuple

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from deeprecipe.callbacks.sinks import figure_to_image, log_image, log_scalars, new_figure
from deeprecipe.errors import ConfigError

log = logging.getLogger(__name__)

ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Tanh,
    nn.Sigmoid,
    nn.Softplus,
)


class ActivationStats(NamedTuple):
    """What :func:`activation_statistics` measures on one layer's output.

    ``mean`` and ``std`` (population) are over all entries; ``dead_fraction`` is the fraction of
    units that are exactly zero on every sample; ``sparsity`` the fraction of entries that are
    exactly zero; ``mean_abs_correlation`` the mean absolute Pearson correlation between pairs of
    distinct units that vary (NaN with fewer than two); ``correlation`` that matrix (U', U').
    """

    mean: float
    std: float
    dead_fraction: float
    sparsity: float
    mean_abs_correlation: float
    correlation: Tensor


def samples_by_units(activation: Tensor) -> Tensor:
    """Lay out one layer's output as (samples, units).

    (B, U) stays; images (B, C, H, W) and videos (B, C, T, H, W) have channels as units and
    every position of every image as a sample; sequences (B, T, D) have features as units and
    every token as a sample.
    """
    if activation.ndim == 2:
        return activation
    if activation.ndim == 3:
        return activation.reshape(-1, activation.shape[-1])
    return activation.movedim(1, -1).reshape(-1, activation.shape[1])


def activation_statistics(activation: Tensor, max_units: int = 64) -> ActivationStats:
    """Statistics of one layer's output; correlations over the first ``max_units`` units."""
    x = samples_by_units(activation.detach()).float()  # (N, U)
    zero = x == 0
    units = x[:, :max_units]  # (N, U')
    live = units.std(dim=0) > 0  # constant units have no correlation
    correlation = torch.corrcoef(units[:, live].T) if live.sum() > 1 else torch.empty(0, 0)
    count = correlation.shape[0]
    off_diagonal = correlation.abs().sum() - correlation.diagonal().abs().sum()
    mean, std, dead_fraction, sparsity, mean_abs_correlation = torch.stack(
        [
            x.mean(),
            x.std(correction=0),
            zero.all(dim=0).float().mean(),
            zero.float().mean(),
            off_diagonal / (count * (count - 1)) if count > 1 else torch.tensor(math.nan),
        ]
    ).tolist()  # one device sync
    return ActivationStats(
        mean, std, dead_fraction, sparsity, mean_abs_correlation, correlation.cpu()
    )


class ActivationStatistics(L.Callback):
    """Mean, std, dead units, sparsity and unit correlation of every activation module's output.

    Every ``every_n_steps`` optimizer steps, forward hooks catch the training batch's activations
    and log ``diag/act_mean/LAYER``, ``diag/act_std/LAYER``, ``diag/dead_fraction/LAYER``,
    ``diag/sparsity/LAYER`` and ``diag/unit_corr/LAYER`` (last values in :attr:`latest`,
    LAYER being the activation module's path). Every ``images_every_n_steps`` steps it also logs
    one image of per-layer histograms and one of per-layer correlation matrices. Off those
    steps the hooks return at once, so the cost is a Python call per activation module.

    Args:
        every_n_steps: measure on every n-th step.
        images_every_n_steps: also draw the images on every n-th step (0: never).
        max_units: units per layer in the correlation (the first ones).
        max_samples: rows (samples x positions) kept per layer.
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        images_every_n_steps: int = 500,
        max_units: int = 64,
        max_samples: int = 4096,
    ) -> None:
        if every_n_steps < 1 or images_every_n_steps < 0 or max_units < 2 or max_samples < 2:
            raise ConfigError(
                "ActivationStatistics needs every_n_steps >= 1, images_every_n_steps >= 0, "
                f"max_units >= 2 and max_samples >= 2 (got {every_n_steps}, "
                f"{images_every_n_steps}, {max_units}, {max_samples})."
            )
        self.every_n_steps = every_n_steps
        self.images_every_n_steps = images_every_n_steps
        self.max_units = max_units
        self.max_samples = max_samples
        self.latest: dict[str, ActivationStats] = {}
        self._captured: dict[str, Tensor] = {}
        self._capturing = False
        self._step = 0
        self._handles: list[RemovableHandle] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for name, module in pl_module.named_modules():
            if isinstance(module, ACTIVATION_TYPES):
                self._handles.append(module.register_forward_hook(self._hook(name)))
        if not self._handles:
            log.warning("ActivationStatistics found no activation modules to watch.")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, name: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if self._capturing and isinstance(output, Tensor):
                self._captured[name] = samples_by_units(output.detach())[: self.max_samples]

        return hook

    def _due(self, step: int) -> bool:
        images = self.images_every_n_steps > 0 and step % self.images_every_n_steps == 0
        return step % self.every_n_steps == 0 or images

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._step = trainer.global_step
        self._capturing = self._due(self._step)

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if not self._capturing:
            return
        self._capturing = False
        step = self._step
        self.latest = {
            name: activation_statistics(values, self.max_units)
            for name, values in self._captured.items()
        }
        metrics: dict[str, float] = {}
        for name, stats in self.latest.items():
            metrics[f"diag/act_mean/{name}"] = stats.mean
            metrics[f"diag/act_std/{name}"] = stats.std
            metrics[f"diag/dead_fraction/{name}"] = stats.dead_fraction
            metrics[f"diag/sparsity/{name}"] = stats.sparsity
            if not math.isnan(stats.mean_abs_correlation):
                metrics[f"diag/unit_corr/{name}"] = stats.mean_abs_correlation
        log_scalars(trainer, metrics)
        if self.images_every_n_steps and step % self.images_every_n_steps == 0 and self.latest:
            log_image(trainer, "diag/activation_histograms", self._histograms(step))
            log_image(trainer, "diag/unit_correlations", self._correlations(step))
        self._captured.clear()

    def _grid(self, step: int, title: str) -> tuple[Any, list[Any]]:
        count = len(self.latest)
        columns = min(4, count)
        rows = math.ceil(count / columns)
        figure, axes = new_figure(
            nrows=rows, ncols=columns, figsize=(3.2 * columns, 2.6 * rows), squeeze=False
        )
        figure.suptitle(f"{title}, step {step}")
        flat = list(axes.flat)
        for axis in flat[count:]:
            axis.set_visible(False)
        return figure, flat[:count]

    def _histograms(self, step: int) -> Any:
        figure, axes = self._grid(step, "Activation histograms")
        for axis, (name, values) in zip(axes, self._captured.items(), strict=True):
            stats = self.latest[name]
            axis.hist(values.float().flatten().cpu().numpy(), bins=50)
            axis.set_title(
                f"{name}\nmean {stats.mean:.2f} std {stats.std:.2f} dead {stats.dead_fraction:.0%}",
                fontsize=7,
            )
        figure.tight_layout()
        return figure_to_image(figure)

    def _correlations(self, step: int) -> Any:
        figure, axes = self._grid(step, "Correlation between hidden units")
        for axis, (name, stats) in zip(axes, self.latest.items(), strict=True):
            axis.imshow(stats.correlation.numpy(), vmin=-1, vmax=1, cmap="coolwarm")
            axis.set_title(f"{name}\nmean |corr| {stats.mean_abs_correlation:.2f}", fontsize=7)
            axis.set_xticks([])
            axis.set_yticks([])
        figure.tight_layout()
        return figure_to_image(figure)
