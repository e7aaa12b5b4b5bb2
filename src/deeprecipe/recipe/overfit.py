"""Step 2 of the lecture's recipe: overfit a small sample.

Train on a handful of training examples (the first 20 by default, like the lecture's first 20
CIFAR-10 images, in one full batch; or ``--batches K`` minibatches) with augmentation and every
regularization off, plain SGD (no momentum) and a constant learning rate, until the training
accuracy is 100%. A model that cannot memorize 20 examples has a bug, a bad learning rate or a bad
initialization; the step says which from the loss: not going down means the learning rate is too
low or the init is bad, exploding to Inf/NaN means it is too high.

Usage::

    python -m deeprecipe.recipe overfit [--examples 20 | --batches 5] [--epochs 200] \\
        [optim.lr=0.1] [OVERRIDE ...]
"""

from __future__ import annotations

import argparse
import copy
import math
from pathlib import Path

import torch
from lightning.pytorch.callbacks import EarlyStopping
from omegaconf import DictConfig

from deeprecipe.data.base import ImageDataModule
from deeprecipe.errors import ConfigError
from deeprecipe.recipe.common import (
    StepResult,
    Training,
    build_classifier,
    compose_step,
    moving_average_tail,
    set_present,
    train,
    turn_off_regularization,
)

STEP = "overfit"
# plain SGD (momentum 0), constant learning rate, no augmentation; CSV logs only
STEP_CHOICES = ("aug=none", "optim=sgd", "scheduler=constant", "logger=csv")


def small_sample(
    datamodule: ImageDataModule, examples: int, batches: int | None = None
) -> ImageDataModule:
    """A copy of ``datamodule`` that trains on the first ``examples`` training examples in one
    full batch, or on the first ``batches`` minibatches of its batch size."""
    datamodule.setup("fit")
    assert datamodule.train is not None
    count = batches * datamodule.batch_size if batches else examples
    if not 1 <= count <= len(datamodule.train):
        raise ConfigError(
            f"overfit wants {count} examples but the training split has {len(datamodule.train)}; "
            "choose --examples or --batches within it."
        )
    sample = copy.copy(datamodule)  # the caller's datamodule keeps its full training split
    sample.train = datamodule.train.take(torch.arange(count))
    if not batches:
        sample.batch_size = count  # full-batch gradient descent, as in the lecture
    return sample


def diagnose(training: Training, examples: int, lr: float) -> tuple[bool, str]:
    """Pass/fail and the lecture's diagnosis from the losses and per-epoch accuracies."""
    losses = training.losses
    epochs = training.epochs
    first = losses[0] if losses else math.nan
    last = moving_average_tail(losses, 5) if losses else math.nan
    accuracy = max((row.get("train/acc", 0.0) for row in epochs), default=0.0)
    reached = next((row for row in epochs if row.get("train/acc", 0.0) >= 1.0), None)
    trend = f"{first:.3f} -> {last:.3f} (mean of the last 5 steps)"
    setting = f"optim.lr={lr:g}, {len(epochs)} epochs"
    if training.diverged is not None or not math.isfinite(last) or last > 2 * first:
        where = f"NaN/Inf after {len(losses)} steps" if training.diverged else trend
        return False, (
            f"loss explodes: LR too high or bad init (loss {where}, {setting}); lower optim.lr "
            "3-10x"
        )
    if reached is not None:
        epoch = int(reached["epoch"]) + 1
        return True, (
            f"100% training accuracy on {examples} examples after {epoch} epochs "
            f"({int(reached['step'])} steps), loss {first:.3f} -> {losses[-1]:.3f}"
        )
    if last > 0.9 * first:
        return False, (
            f"loss not going down: LR too low or bad init (loss {trend}, {setting}); raise "
            "optim.lr 3-10x and run the initial_loss step"
        )
    return False, (
        f"loss going down ({trend}) but training accuracy only {accuracy:.0%} ({setting}): "
        "train longer (--epochs), raise optim.lr, or use a bigger model"
    )


def run(
    cfg: DictConfig,
    out_dir: Path,
    examples: int = 20,
    batches: int | None = None,
    epochs: int = 200,
    datamodule: ImageDataModule | None = None,
) -> StepResult:
    """Train ``cfg``'s model on a small sample until 100% training accuracy or ``epochs``."""
    if epochs < 1:
        raise ConfigError(f"overfit --epochs {epochs}; train for at least one epoch.")
    turned_off = turn_off_regularization(cfg) + set_present(
        cfg, {"scheduler.warmup_epochs": 0.0, "scheduler.warmup_steps": 0}
    )
    built_data, _ = build_classifier(cfg)
    sample = small_sample(datamodule or built_data, examples, batches)
    assert sample.train is not None
    count = len(sample.train)
    stop = EarlyStopping(
        monitor="train/acc",
        mode="max",
        stopping_threshold=1.0 - 0.5 / count,  # accuracy is k / count: above this means 100%
        patience=epochs + 1,
        check_on_train_epoch_end=True,
    )
    training = train(cfg, sample, out_dir, callbacks=(stop,), max_epochs=epochs)
    passed, text = diagnose(training, count, float(cfg.optim.lr))
    result = StepResult(
        STEP,
        passed,
        text,
        values={
            "examples": count,
            "batch_size": sample.batch_size,
            "lr": float(cfg.optim.lr),
            "epochs_run": len(training.epochs),
            "losses": training.losses,
            "epochs": training.epochs,
            "diverged": str(training.diverged) if training.diverged else None,
        },
    )
    result.details += [
        f"{count} training examples in batches of {sample.batch_size}, plain SGD at a constant "
        f"optim.lr={float(cfg.optim.lr):g}, no augmentation, at most {epochs} epochs.",
    ]
    if turned_off:
        result.details += ["", "Regularization turned off: `" + " ".join(turned_off) + "`."]
    plot = out_dir / "plots" / "learning_curves.png"
    if plot.exists():
        result.files.append(str(plot))
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--examples", type=int, default=20, help="examples, in one full batch")
    size.add_argument("--batches", type=int, help="minibatches of data.batch_size instead")
    parser.add_argument("--epochs", type=int, default=200, help="give up after this many")


def main(args: argparse.Namespace) -> tuple[StepResult, Path]:
    cfg, out_dir = compose_step(STEP, args.overrides, STEP_CHOICES, args.out)
    return run(cfg, out_dir, args.examples, args.batches, args.epochs), out_dir
