"""Step 3 of the lecture's recipe: find a learning rate that makes the loss go down.

Two views of the same question, both on all the training data with a small weight decay:

- the range test (Smith 2017): the learning rate grows exponentially from ``--min-lr`` to
  ``--max-lr`` over ``--range-steps`` iterations; its plot shows where the loss falls fastest,
  and the step suggests the learning rate of the steepest fall;
- the lecture's quick check: from the same initial weights, train ``--iterations`` (~100)
  iterations at each of 1e-1, 1e-2, 1e-3 and 1e-4 and see which make the loss drop
  significantly (by ``--min-drop`` of its initial value) without exploding.

The recommended learning rate, read by the ``coarse`` step, is the quick check's best (the lowest
final loss among those that dropped), else the range test's suggestion.

Usage::

    python -m deeprecipe.recipe lr_find [--iterations 100] [--range-steps 100] [OVERRIDE ...]
"""

from __future__ import annotations

import argparse
import copy
import math
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

from deeprecipe.callbacks.curves import moving_average
from deeprecipe.callbacks.sinks import new_figure, pyplot
from deeprecipe.data.base import ImageDataModule
from deeprecipe.errors import ConfigError
from deeprecipe.recipe.common import (
    StepResult,
    build_classifier,
    compose_step,
    moving_average_tail,
    set_present,
    train,
)

STEP = "lr_find"
# a constant learning rate for the quick check (the range test replaces the schedule anyway)
STEP_CHOICES = ("scheduler=constant", "logger=csv")
LECTURE_LRS = (1e-1, 1e-2, 1e-3, 1e-4)
SMALL_WEIGHT_DECAY = 1e-4


class LearningRateRamp(L.Callback):
    """Set every parameter group's learning rate at step t of n to
    ``min_lr * (max_lr / min_lr) ** (t / (n - 1))``; stop once the smoothed loss exceeds four
    times its best (the range test has then shown all it can)."""

    def __init__(self, min_lr: float, max_lr: float, steps: int, smoothing: float = 0.9) -> None:
        self.min_lr, self.max_lr, self.steps = min_lr, max_lr, steps
        self.smoothing = smoothing
        self.lrs: list[float] = []
        self._average = 0.0
        self._best = math.inf

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        fraction = trainer.global_step / max(1, self.steps - 1)
        lr = self.min_lr * (self.max_lr / self.min_lr) ** fraction
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = lr
        self.lrs.append(lr)

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        self._average = self.smoothing * self._average + (1 - self.smoothing) * float(loss)
        smoothed = self._average / (1 - self.smoothing ** len(self.lrs))
        self._best = min(self._best, smoothed)
        if smoothed > 4 * self._best:
            trainer.should_stop = True


def smooth(losses: list[float], smoothing: float = 0.9) -> list[float]:
    """Exponential moving average with bias correction (the first value is the first loss)."""
    average, out = 0.0, []
    for step, loss in enumerate(losses, start=1):
        average = smoothing * average + (1 - smoothing) * loss
        out.append(average / (1 - smoothing**step))
    return out


def steepest(lrs: list[float], smoothed: list[float], skip_begin: int = 10) -> float | None:
    """The learning rate where the smoothed loss falls fastest per decade of learning rate."""
    points = [(math.log10(lr), loss) for lr, loss in zip(lrs, smoothed, strict=False)]
    points = [(x, y) for x, y in points[skip_begin:-1] if math.isfinite(y)]
    if len(points) < 3:
        return None
    slopes = [
        (points[i + 1][1] - points[i - 1][1]) / (points[i + 1][0] - points[i - 1][0])
        for i in range(1, len(points) - 1)
    ]
    best = min(range(len(slopes)), key=slopes.__getitem__)
    return 10 ** points[best + 1][0]


def range_test(
    cfg: DictConfig,
    datamodule: ImageDataModule,
    out_dir: Path,
    min_lr: float,
    max_lr: float,
    steps: int,
) -> tuple[float | None, dict[str, list[float]]]:
    """The LR range test: losses while the learning rate grows exponentially, the suggestion
    (steepest fall of the smoothed loss, None without enough points) and ``lr_range_test.png``.

    Written here rather than taken from Lightning's ``Tuner.lr_find``: Lightning 2.6 corrects
    the bias of its smoothed loss one step off, so the first points of a short test read far
    below the real loss (half of it at the start), and it takes the steepest slope against the
    learning rate rather than its logarithm.
    """
    ramp = LearningRateRamp(min_lr, max_lr, steps)
    training = train(
        cfg, datamodule, out_dir / "range_test", (ramp,), max_steps=steps, max_epochs=-1
    )
    count = min(len(ramp.lrs), len(training.losses))
    lrs, losses = ramp.lrs[:count], training.losses[:count]
    smoothed = smooth(losses)
    suggestion = steepest(lrs, smoothed)
    figure, axis = new_figure(figsize=(6.5, 4))
    axis.scatter(lrs, losses, s=4, alpha=0.3, label="loss")
    axis.plot(lrs, smoothed, color="C3", label="smoothed")
    if suggestion is not None:
        axis.axvline(suggestion, color="k", ls="--", label=f"steepest fall: {suggestion:.2g}")
    finite = [loss for loss in losses if math.isfinite(loss)]
    if finite:
        axis.set_ylim(min(finite) * 0.95, min(1.5 * finite[0], max(finite) * 1.05))
    axis.set(xscale="log", xlabel="learning rate", ylabel="training loss")
    axis.set_title("LR range test")
    axis.legend()
    figure.tight_layout()
    figure.savefig(out_dir / "lr_range_test.png", dpi=110)
    pyplot().close(figure)
    return suggestion, {"lr": lrs, "loss": losses}


def quick_check(
    cfg: DictConfig,
    datamodule: ImageDataModule,
    out_dir: Path,
    iterations: int,
    min_drop: float,
) -> dict[float, dict[str, Any]]:
    """Train ``iterations`` steps at each lecture learning rate from the same start.

    Per learning rate: the first loss, the mean of the last 10, the relative drop, whether it
    diverged (NaN/Inf, or ended above 1.5x its start) and whether it dropped significantly.
    """
    outcomes: dict[float, dict[str, Any]] = {}
    for lr in LECTURE_LRS:
        run_cfg = copy.deepcopy(cfg)
        OmegaConf.update(run_cfg, "optim.lr", lr)
        training = train(
            run_cfg, datamodule, out_dir / f"lr_{lr:g}", max_steps=iterations, max_epochs=-1
        )
        losses = training.losses
        first = losses[0] if losses else math.nan
        final = moving_average_tail(losses, 10) if losses else math.nan
        diverged = training.diverged is not None or not math.isfinite(final) or final > 1.5 * first
        drop = 1 - final / first if math.isfinite(final) and first > 0 else math.nan
        outcomes[lr] = {
            "first": first,
            "final": final,
            "drop": drop,
            "diverged": diverged,
            "dropped": not diverged and drop >= min_drop,
            "losses": losses,
        }
    return outcomes


def plot_quick_check(outcomes: dict[float, dict[str, Any]], path: Path) -> None:
    """The lecture's picture: loss against iteration, one curve per learning rate."""
    figure, axis = new_figure(figsize=(6.5, 4))
    for lr, outcome in outcomes.items():
        losses = [value for value in outcome["losses"] if math.isfinite(value)]
        label = f"lr={lr:g}" + (" (diverged)" if outcome["diverged"] else "")
        axis.plot(range(1, len(losses) + 1), moving_average(losses, 5), label=label)
    axis.set(xlabel="iteration", ylabel="training loss (moving average of 5)")
    axis.set_title("Which learning rate makes the loss go down?")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot().close(figure)


def run(
    cfg: DictConfig,
    out_dir: Path,
    iterations: int = 100,
    range_steps: int = 100,
    min_lr: float = 1e-6,
    max_lr: float = 1.0,
    min_drop: float = 0.2,
    datamodule: ImageDataModule | None = None,
) -> StepResult:
    """Range test and quick check on ``cfg``'s full training data; recommend a learning rate."""
    if iterations < 10 or range_steps < 20 or not 0 < min_lr < max_lr or not 0 < min_drop < 1:
        raise ConfigError(
            "lr_find needs --iterations >= 10, --range-steps >= 20, 0 < --min-lr < --max-lr "
            "and --min-drop in (0, 1)."
        )
    notes = []
    if float(OmegaConf.select(cfg, "optim.weight_decay", default=0.0) or 0.0) == 0.0:
        notes = set_present(cfg, {"optim.weight_decay": SMALL_WEIGHT_DECAY})
    built_data, _ = build_classifier(cfg)
    datamodule = datamodule or built_data
    datamodule.setup("fit")
    out_dir.mkdir(parents=True, exist_ok=True)
    suggestion, curve = range_test(cfg, datamodule, out_dir, min_lr, max_lr, range_steps)
    outcomes = quick_check(cfg, datamodule, out_dir, iterations, min_drop)
    plot_quick_check(outcomes, out_dir / "quick_check.png")

    dropped = {lr: o for lr, o in outcomes.items() if o["dropped"]}
    best = min(dropped, key=lambda lr: dropped[lr]["final"]) if dropped else None
    recommended = best if best is not None else suggestion
    suggested = f"{suggestion:.2g}" if suggestion is not None else "none"
    if best is not None:
        text = (
            f"optim.lr={best:g} makes the loss drop most in {iterations} iterations "
            f"({outcomes[best]['first']:.3f} -> {outcomes[best]['final']:.3f}); "
            f"dropping: {', '.join(f'{lr:g}' for lr in dropped)}; range test suggests {suggested}"
        )
    else:
        text = (
            f"no learning rate of {', '.join(f'{lr:g}' for lr in LECTURE_LRS)} made the loss "
            f"drop by {min_drop:.0%} in {iterations} iterations (range test suggests "
            f"{suggested}): check the overfit step, or try more --iterations"
        )
    result = StepResult(
        STEP,
        best is not None,
        text,
        values={
            "recommended_lr": recommended,
            "quick_check_best_lr": best,
            "suggested_lr": suggestion,
            "quick_check": {f"{lr:g}": o for lr, o in outcomes.items()},
            "range_test": curve,
        },
    )
    result.details += [
        "| optim.lr | first loss | last 10 (mean) | drop | diverged | dropped significantly |",
        "|---:|---:|---:|---:|:---:|:---:|",
    ]
    for lr, outcome in outcomes.items():
        result.details.append(
            f"| {lr:g} | {outcome['first']:.3f} | {outcome['final']:.3f} | "
            f"{outcome['drop']:.0%} | {'yes' if outcome['diverged'] else ''} | "
            f"{'yes' if outcome['dropped'] else ''} |"
        )
    if notes:
        result.details += ["", f"Small weight decay turned on: `{' '.join(notes)}`."]
    result.files += [
        str(path)
        for path in (out_dir / "quick_check.png", out_dir / "lr_range_test.png")
        if path.exists()
    ]
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--iterations", type=int, default=100, help="quick check, per LR")
    parser.add_argument("--min-drop", type=float, default=0.2, help="'significant' drop")
    parser.add_argument("--range-steps", type=int, default=100, help="range test iterations")
    parser.add_argument("--min-lr", type=float, default=1e-6, help="range test start")
    parser.add_argument("--max-lr", type=float, default=1.0, help="range test end")


def main(args: argparse.Namespace) -> tuple[StepResult, Path]:
    cfg, out_dir = compose_step(STEP, args.overrides, STEP_CHOICES, args.out)
    result = run(
        cfg,
        out_dir,
        args.iterations,
        args.range_steps,
        args.min_lr,
        args.max_lr,
        args.min_drop,
    )
    return result, out_dir
