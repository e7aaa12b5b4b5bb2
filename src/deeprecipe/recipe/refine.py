"""Step 5 of the lecture's recipe: refine around the best, train longer, no decay.

"Pick best models from Step 4, train them for longer (~10-20 epochs) without learning rate
decay." Random search (Optuna, log-uniform) over a learning rate within 3x of the coarse grid's
best and a weight decay within 10x of its best (kept at 0 when 0 won), at a constant learning
rate for ``--epochs`` epochs: ``--trials`` jobs of ``python run.py -m +sweep=refine``.

Usage::

    python -m deeprecipe.recipe refine [--from COARSE_DIR] [--epochs 15] [--trials 10] \\
        [--dry-run] [OVERRIDE ...]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from deeprecipe.errors import ConfigError
from deeprecipe.recipe.common import StepResult, compose_step, latest_result
from deeprecipe.recipe.sweeps import SweepPlan, sweep_result, write_and_launch

STEP = "refine"


def log_range(centre: float, factor: float) -> str:
    """Optuna's log-uniform interval [centre / factor, centre * factor] as a sweep value."""
    return f"tag(log,interval({centre / factor:.3g},{centre * factor:.3g}))"


def plan(
    best: dict[str, Any], epochs: int, trials: int, overrides: Sequence[str], out_dir: Path
) -> SweepPlan:
    """The refine sweep around the coarse sweep's ``best`` job overrides."""
    if epochs < 1 or trials < 1:
        raise ConfigError(f"refine --epochs {epochs} --trials {trials}; both must be positive.")
    try:
        lr = float(best["optim.lr"])
        weight_decay = float(best.get("optim.weight_decay", 0.0))
    except (KeyError, ValueError) as error:
        raise ConfigError(
            f"The coarse sweep's best job has no usable optim.lr ({best}); rerun coarse."
        ) from error
    params = {
        "optim.lr": log_range(lr, 3.0),
        "optim.weight_decay": log_range(weight_decay, 10.0) if weight_decay > 0 else "0",
        "trainer.max_epochs": str(epochs),
        "hydra.sweeper.n_trials": str(trials),
    }
    return SweepPlan("refine", params, list(overrides), out_dir / "sweep")


def run(
    cfg: DictConfig,
    out_dir: Path,
    overrides: Sequence[str],
    best: dict[str, Any],
    epochs: int = 15,
    trials: int = 10,
    launch: bool = True,
) -> StepResult:
    """Write the refine search around ``best`` and, when ``launch``, run it and report."""
    sweep = plan(best, epochs, trials, overrides, out_dir)
    status = write_and_launch(sweep, out_dir, launch)
    describe = (
        f"random search optim.lr~{sweep.params['optim.lr']}, optim.weight_decay~"
        f"{sweep.params['optim.weight_decay']}, {trials} trials of {epochs} epochs at a "
        "constant learning rate"
    )
    return sweep_result(STEP, sweep, cfg, status, describe)


def best_of_coarse(cfg: DictConfig, source: Path | None) -> dict[str, Any]:
    """Overrides of the best job of the newest (or given) coarse sweep."""
    path, values = latest_result(cfg, "coarse", source)
    if not values.get("best"):
        raise ConfigError(
            f"The coarse sweep of {path} has no finished job; launch it first: "
            f"{values.get('command', 'python -m deeprecipe.recipe coarse')}"
        )
    return dict(values["best"]["overrides"])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="source", type=Path, help="a coarse result dir or file")
    parser.add_argument("--epochs", type=int, default=15, help="epochs per trial (10-20)")
    parser.add_argument("--trials", type=int, default=10, help="random-search trials")
    parser.add_argument("--dry-run", action="store_true", help="write the preset, do not launch")


def main(args: argparse.Namespace) -> tuple[StepResult, Path]:
    cfg, out_dir = compose_step(STEP, args.overrides, (), args.out)
    best = best_of_coarse(cfg, args.source)
    result = run(cfg, out_dir, args.overrides, best, args.epochs, args.trials, not args.dry_run)
    return result, out_dir
