"""Learning-rate schedules stepped every iteration, each with an optional linear warmup.

Every public function here is a config target (``_partial_: true``); the method calls it with
the optimizer, ``total_steps`` and ``steps_per_epoch`` once the trainer knows them. Durations in
the config are in epochs (fractions allowed) because that is how practitioners think of them;
they are converted to iterations here. ``warmup_steps``, when set, gives the warmup in iterations
instead of ``warmup_epochs`` (it wins over it): a warmup of equal length whatever the epoch size,
e.g. for runs of a fixed number of steps over datasets of different sizes. The returned
``LambdaLR`` multiplies each group's base learning rate by a factor object whose state is saved
in checkpoints.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from deeprecipe.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class WarmupFactor:
    """Learning-rate factor at iteration ``step``: linear warmup, then the decay ``shape``.

    Shapes (``t`` = iterations since the warmup ended, ``T`` = iterations after warmup):
    ``constant`` 1; ``step`` gamma^floor(step / step_size); ``multistep`` gamma^(milestones
    passed) (these two count from the start of training, as torch's StepLR and MultiStepLR
    do, so a milestone is the epoch it names); ``exponential`` gamma^t; ``cosine``
    end + (1 - end)(1 + cos(pi t / T)) / 2;
    ``linear`` 1 - (1 - end) t / T; ``inverse_sqrt`` sqrt(timescale / (timescale + t));
    ``cosine_restarts`` the cosine within each of ``cycles`` equal cycles that split T, cycle k
    covering ``ceil(k T / cycles) <= t < ceil((k + 1) T / cycles)``.
    """

    shape: str
    warmup_steps: int = 0
    decay_steps: int = 1
    gamma: float = 1.0
    step_size: int = 1
    milestones: list[int] = field(default_factory=list)
    end_factor: float = 0.0
    timescale: float = 1.0
    cycles: int = 1

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        t = step - self.warmup_steps
        progress = min(t / max(1, self.decay_steps), 1.0)
        if self.shape == "constant":
            return 1.0
        if self.shape == "step":
            return self.gamma ** (step // self.step_size)
        if self.shape == "multistep":
            return self.gamma ** sum(step >= m for m in self.milestones)
        if self.shape == "exponential":
            return self.gamma**t
        if self.shape == "cosine":
            return self.end_factor + (1 - self.end_factor) * 0.5 * (
                1 + math.cos(math.pi * progress)
            )
        if self.shape == "cosine_restarts":
            cycle = min(t * self.cycles // self.decay_steps, self.cycles - 1)
            start, end = self._cycle_start(cycle), self._cycle_start(cycle + 1)
            return self.end_factor + (1 - self.end_factor) * 0.5 * (
                1 + math.cos(math.pi * (t - start) / (end - start))
            )
        if self.shape == "linear":
            return 1.0 - (1.0 - self.end_factor) * progress
        if self.shape == "inverse_sqrt":
            return math.sqrt(self.timescale / (self.timescale + t))
        raise ConfigError(f"Unknown schedule shape {self.shape!r}.")

    def _cycle_start(self, cycle: int) -> int:
        """First iteration after warmup of restart cycle ``cycle``: ceil(cycle T / cycles)."""
        return -(-cycle * self.decay_steps // self.cycles)

    def cycle_ended(self, steps_done: int) -> int | None:
        """The restart cycle that ``steps_done`` optimizer steps have just completed, or None.

        The weights are then at the end of that cycle's decay, the lowest learning rate, where
        snapshot ensembles take a snapshot; always None for shapes other than
        ``cosine_restarts``.
        """
        t = steps_done - self.warmup_steps
        if self.shape != "cosine_restarts" or t <= 0:
            return None
        cycle = (t - 1) * self.cycles // self.decay_steps  # the cycle of the last step taken
        return cycle if t == self._cycle_start(cycle + 1) else None


def _warmup_steps(
    warmup_epochs: float, steps_per_epoch: int, total_steps: int, warmup_steps: int | None = None
) -> int:
    """Warm-up length in steps, at most the run; a warm-up that fills the run is warned about.

    ``warmup_steps`` (iterations), when not None, replaces ``warmup_epochs``.
    """
    if warmup_epochs < 0:
        raise ConfigError(f"scheduler.warmup_epochs={warmup_epochs}; it must be >= 0.")
    if warmup_steps is not None and (warmup_steps < 0 or int(warmup_steps) != warmup_steps):
        raise ConfigError(
            f"scheduler.warmup_steps={warmup_steps}; it must be a whole number >= 0, or null "
            "to count the warmup in epochs (scheduler.warmup_epochs)."
        )
    name, value = (
        ("warmup_epochs", warmup_epochs) if warmup_steps is None else ("warmup_steps", warmup_steps)
    )
    steps = _steps(warmup_epochs, steps_per_epoch) if warmup_steps is None else int(warmup_steps)
    if steps > 0 and steps >= total_steps and total_steps > 1:
        log.warning(
            "scheduler.%s=%s is %d steps, at least the whole run (%d steps): the learning rate "
            "only rises and never decays. Lower scheduler.%s.",
            name,
            value,
            steps,
            total_steps,
            name,
        )
    return min(steps, total_steps)


def _steps(epochs: float, steps_per_epoch: int) -> int:
    return round(epochs * steps_per_epoch)


def _build(
    optimizer: Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    warmup_epochs: float,
    shape: str,
    warmup_steps: int | None = None,
    **params,
) -> LambdaLR:
    warmup = _warmup_steps(warmup_epochs, steps_per_epoch, total_steps, warmup_steps)
    factor = WarmupFactor(shape, warmup, max(1, total_steps - warmup), **params)
    return LambdaLR(optimizer, factor)


def constant(
    optimizer: Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    warmup_epochs: float = 0.0,
    warmup_steps: int | None = None,
) -> LambdaLR:
    """The base learning rate throughout (after warmup)."""
    return _build(optimizer, total_steps, steps_per_epoch, warmup_epochs, "constant", warmup_steps)


def step(
    optimizer: Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    step_epochs: float = 30.0,
    gamma: float = 0.1,
    warmup_epochs: float = 0.0,
    warmup_steps: int | None = None,
) -> LambdaLR:
    """Multiply the rate by ``gamma`` every ``step_epochs`` epochs (from the start of training).

    A step as long as the run never decays the rate: that is warned about.
    """
    if step_epochs <= 0:
        raise ConfigError(f"scheduler.step_epochs={step_epochs}; it must be > 0.")
    step_size = max(1, _steps(step_epochs, steps_per_epoch))
    if step_size >= total_steps > 1:
        log.warning(
            "scheduler.step_epochs=%s is %d steps, at least the whole run (%d steps): the "
            "learning rate never decays. Lower scheduler.step_epochs.",
            step_epochs,
            step_size,
            total_steps,
        )
    return _build(
        optimizer,
        total_steps,
        steps_per_epoch,
        warmup_epochs,
        "step",
        warmup_steps=warmup_steps,
        gamma=gamma,
        step_size=step_size,
    )


def multistep(
    optimizer: Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    milestones: Sequence[float] = (30.0, 60.0, 80.0),
    gamma: float = 0.1,
    warmup_epochs: float = 0.0,
    warmup_steps: int | None = None,
) -> LambdaLR:
    """Multiply the rate by ``gamma`` at each milestone (epochs from the start of training).

    Milestones at or past the end of the run never apply: that is warned about.
    """
    if any(m <= 0 for m in milestones) or list(milestones) != sorted(milestones):
        raise ConfigError(
            f"scheduler.milestones={list(milestones)}; they must be epochs > 0 in increasing "
            "order, e.g. [30, 60, 80] for a 90-epoch run."
        )
    marks = [_steps(m, steps_per_epoch) for m in milestones]
    late = [m for m, mark in zip(milestones, marks, strict=True) if mark >= total_steps]
    if late and total_steps > 1:
        log.warning(
            "scheduler.milestones %s lie at or past the end of the run (%d steps, %.4g epochs): "
            "the rate is never multiplied by gamma there. Lower them.",
            late,
            total_steps,
            total_steps / max(1, steps_per_epoch),
        )
    return _build(
        optimizer,
        total_steps,
        steps_per_epoch,
        warmup_epochs,
        "multistep",
        warmup_steps=warmup_steps,
        gamma=gamma,
        milestones=marks,
    )


def exponential(
    optimizer: Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    gamma: float = 0.95,
    warmup_epochs: float = 0.0,
    warmup_steps: int | None = None,
) -> LambdaLR:
    """Multiply the rate by ``gamma`` per epoch, applied smoothly every iteration."""
    if not 0.0 < gamma <= 1.0:
        raise ConfigError(f"scheduler.gamma={gamma}; it must be in (0, 1].")
    per_step = gamma ** (1.0 / steps_per_epoch)
    return _build(
        optimizer,
        total_steps,
        steps_per_epoch,
        warmup_epochs,
        "exponential",
        warmup_steps,
        gamma=per_step,
    )


def cosine(
    optimizer: Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    warmup_epochs: float = 0.0,
    warmup_steps: int | None = None,
    end_factor: float = 0.0,
) -> LambdaLR:
    """Half-cosine from the base rate to ``end_factor`` x base at the last iteration."""
    return _build(
        optimizer,
        total_steps,
        steps_per_epoch,
        warmup_epochs,
        "cosine",
        warmup_steps,
        end_factor=end_factor,
    )


def cosine_restarts(
    optimizer: Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    cycles: int = 5,
    warmup_epochs: float = 0.0,
    warmup_steps: int | None = None,
    end_factor: float = 0.0,
) -> LambdaLR:
    """Cosine annealing with warm restarts (SGDR, Loshchilov and Hutter 2017) in equal cycles.

    The iterations after warmup split into ``cycles`` equal cycles; each decays from the base
    rate to ``end_factor`` x base along a half cosine, then the rate jumps back to the base.
    Snapshot ensembles (Huang et al. 2017) save the model at the end of each cycle
    (``callbacks=snapshots``) and average the snapshots' predictions after training.
    """
    warmup = _warmup_steps(warmup_epochs, steps_per_epoch, total_steps, warmup_steps)
    if not 1 <= cycles <= total_steps - warmup:
        raise ConfigError(
            f"scheduler.cycles={cycles}; it must be between 1 and the {total_steps - warmup} "
            "iterations after warmup."
        )
    return _build(
        optimizer,
        total_steps,
        steps_per_epoch,
        warmup_epochs,
        "cosine_restarts",
        warmup_steps=warmup_steps,
        end_factor=end_factor,
        cycles=cycles,
    )


def linear(
    optimizer: Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    warmup_epochs: float = 0.0,
    warmup_steps: int | None = None,
    end_factor: float = 0.0,
) -> LambdaLR:
    """Straight line to ``end_factor`` x base; with warmup this is the one-cycle triangle."""
    return _build(
        optimizer,
        total_steps,
        steps_per_epoch,
        warmup_epochs,
        "linear",
        warmup_steps,
        end_factor=end_factor,
    )


def inverse_sqrt(
    optimizer: Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    warmup_epochs: float = 0.0,
    warmup_steps: int | None = None,
    timescale_epochs: float = 1.0,
) -> LambdaLR:
    """Decay as 1/sqrt(t) after warmup (Transformer-style), halved after 3 timescales."""
    timescale = max(1, _steps(timescale_epochs, steps_per_epoch))
    return _build(
        optimizer,
        total_steps,
        steps_per_epoch,
        warmup_epochs,
        "inverse_sqrt",
        warmup_steps=warmup_steps,
        timescale=timescale,
    )
