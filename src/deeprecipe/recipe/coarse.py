"""Step 4 of the lecture's recipe: a coarse grid, trained for a few epochs.

"Choose a few values of learning rate and weight decay around what worked from Step 3, train a
few models for ~1-5 epochs." The grid is the learning rate of the ``lr_find`` step times
10^-0.5, 1 and 10^0.5, by the lecture's weight decays 0, 1e-5 and 1e-4, each trained for
``--epochs`` epochs with the run's own schedule: nine jobs of ``python run.py -m +sweep=coarse``.

Usage::

    python -m deeprecipe.recipe coarse [--from LR_FIND_DIR | --lr 0.1] [--epochs 3] \\
        [--dry-run] [OVERRIDE ...]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from deeprecipe.errors import ConfigError
from deeprecipe.recipe.common import StepResult, compose_step, latest_result
from deeprecipe.recipe.sweeps import SweepPlan, sweep_result, write_and_launch

STEP = "coarse"
WEIGHT_DECAYS = ("0", "1e-5", "1e-4")  # the lecture's "good weight decay to try"


def learning_rates(lr: float) -> list[str]:
    """Three learning rates, half a decade apart, centred on ``lr`` (two significant digits)."""
    return [f"{lr * 10**exponent:.2g}" for exponent in (-0.5, 0.0, 0.5)]


def plan(lr: float, epochs: int, overrides: Sequence[str], out_dir: Path) -> SweepPlan:
    if not lr > 0 or epochs < 1:
        raise ConfigError(f"coarse --lr {lr} --epochs {epochs}; both must be positive.")
    params = {
        "optim.lr": ",".join(learning_rates(lr)),
        "optim.weight_decay": ",".join(WEIGHT_DECAYS),
        "trainer.max_epochs": str(epochs),
    }
    return SweepPlan("coarse", params, list(overrides), out_dir / "sweep")


def run(
    cfg: DictConfig,
    out_dir: Path,
    overrides: Sequence[str],
    lr: float,
    epochs: int = 3,
    launch: bool = True,
) -> StepResult:
    """Write the coarse grid around ``lr`` and, when ``launch``, run it and report its best."""
    sweep = plan(lr, epochs, overrides, out_dir)
    status = write_and_launch(sweep, out_dir, launch)
    describe = (
        f"grid optim.lr={sweep.params['optim.lr']} x optim.weight_decay="
        f"{sweep.params['optim.weight_decay']}, {epochs} epochs each, around lr {lr:.2g}"
    )
    result = sweep_result(STEP, sweep, cfg, status, describe)
    result.values["lr"] = lr
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--from", dest="source", type=Path, help="an lr_find result dir or file")
    source.add_argument("--lr", type=float, help="centre the grid here instead")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per job (lecture: 1-5)")
    parser.add_argument("--dry-run", action="store_true", help="write the preset, do not launch")


def main(args: argparse.Namespace) -> tuple[StepResult, Path]:
    cfg, out_dir = compose_step(STEP, args.overrides, (), args.out)
    lr = args.lr
    if lr is None:
        source, values = latest_result(cfg, "lr_find", args.source)
        lr = values.get("recommended_lr")
        if lr is None:
            raise ConfigError(f"{source} recommends no learning rate; pass --lr VALUE.")
    return run(cfg, out_dir, args.overrides, lr, args.epochs, not args.dry_run), out_dir
