"""Step 1 of the lecture's recipe: check the loss at initialization.

An untrained classifier should be unsure of every class: its softmax near uniform, its mean
cross-entropy near log(C) (2.303 for 10 classes). Far more means the initial logits are large,
confident and mostly wrong (the last layer starts too big, or the inputs are not normalized);
far less on balanced data means the labels leak into the inputs or the loss is not what it
seems. Regularization is off (the lecture's loss includes the weight-decay penalty; only the
data term compares with log(C)); the model runs in training mode, as in its first step.

Usage::

    python -m deeprecipe.recipe initial_loss [--batches 4] [--tolerance 0.2] [OVERRIDE ...]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from deeprecipe.data.base import ImageDataModule
from deeprecipe.errors import ConfigError
from deeprecipe.methods.base import BaseMethod
from deeprecipe.recipe.common import (
    StepResult,
    build_classifier,
    compose_step,
    turn_off_regularization,
)

STEP = "initial_loss"


def measure(method: BaseMethod, datamodule: ImageDataModule, batches: int) -> tuple[float, float]:
    """Mean cross-entropy and logit std of ``method`` on its first ``batches`` training batches.

    ``datamodule`` must be set up; its normalization statistics are given to the method, as
    ``BaseMethod.setup`` does in a run.
    """
    method.normalize.set_stats(datamodule.mean, datamodule.std)
    method.train()
    losses, logit_stds = [], []
    with torch.no_grad():
        for index, batch in enumerate(datamodule.train_dataloader()):
            if index == batches:
                break
            logits = method(method.prepare_images(batch.x, augment=False))  # (B, C)
            losses.append(F.cross_entropy(logits.float(), batch.y))
            logit_stds.append(logits.float().std())
    return float(torch.stack(losses).mean()), float(torch.stack(logit_stds).mean())


def verdict(loss: float, num_classes: int, tolerance: float, logit_std: float) -> StepResult:
    """Compare ``loss`` with log(C) within ``tolerance`` x log(C)."""
    expected = math.log(num_classes)
    allowed = tolerance * expected
    passed = abs(loss - expected) <= allowed
    text = (
        f"mean cross-entropy at init {loss:.3f}, expected log({num_classes}) = {expected:.3f} "
        f"± {allowed:.3f} ({tolerance:.0%})"
    )
    if loss > expected + allowed:
        text += (
            f"; too high: the initial logits are large (std {logit_std:.2f}), so the net starts "
            "confidently wrong. Scale the last layer's initial weights down (or zero them) and "
            "check that the inputs are normalized"
        )
    elif loss < expected - allowed:
        text += (
            "; too low: the untrained net already knows the labels. Check that labels do not "
            "leak into the inputs and that the loss gets raw logits (log-softmax applied once)"
        )
    return StepResult(
        STEP,
        passed,
        text,
        values={
            "loss": loss,
            "expected": expected,
            "tolerance": allowed,
            "num_classes": num_classes,
            "logit_std": logit_std,
        },
    )


def check(
    method: BaseMethod, datamodule: ImageDataModule, batches: int = 4, tolerance: float = 0.2
) -> StepResult:
    """Measure ``method`` on ``datamodule`` and judge the loss against log(C)."""
    if batches < 1 or not 0 < tolerance < 1:
        raise ConfigError(
            f"initial_loss --batches {batches} --tolerance {tolerance}; use at least one batch "
            "and a relative tolerance in (0, 1), e.g. 0.2."
        )
    loss, logit_std = measure(method, datamodule, batches)
    result = verdict(loss, method.num_classes, tolerance, logit_std)
    result.details += [
        "| batches | batch size | classes | loss at init | log(C) | tolerance | logit std |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {batches} | {datamodule.batch_size} | {method.num_classes} | {loss:.4f} | "
        f"{result.values['expected']:.4f} | ±{result.values['tolerance']:.4f} | "
        f"{logit_std:.3f} |",
    ]
    return result


def run(
    cfg: DictConfig,
    out_dir: Path,
    batches: int = 4,
    tolerance: float = 0.2,
    datamodule: ImageDataModule | None = None,
) -> StepResult:
    """Build the untrained model of ``cfg`` (seeded) and check its initial loss."""
    turned_off = turn_off_regularization(cfg)
    built_data, method = build_classifier(cfg)
    datamodule = datamodule or built_data
    datamodule.setup("fit")
    result = check(method, datamodule, batches, tolerance)
    if turned_off:
        result.details += ["", "Regularization turned off: `" + " ".join(turned_off) + "`."]
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batches", type=int, default=4, help="training batches to average")
    parser.add_argument(
        "--tolerance", type=float, default=0.2, help="allowed |loss - log C| as a fraction of log C"
    )


def main(args: argparse.Namespace) -> tuple[StepResult, Path]:
    cfg, out_dir = compose_step(STEP, args.overrides, (), args.out)
    return run(cfg, out_dir, args.batches, args.tolerance), out_dir
