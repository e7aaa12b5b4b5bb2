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
from typing import Any

from omegaconf import DictConfig

from deeprecipe.errors import ConfigError
from deeprecipe.recipe.common import StepResult, compose_step, latest_result
from deeprecipe.recipe.sweeps import SweepPlan, ranked_jobs, sweep_result, write_and_launch

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
    if result.values.get("best"):
        plot = grid_heatmap(sweep.sweep_dir, str(cfg.objective), out_dir / "grid.png")
        if plot is not None:
            result.details += ["", f"![grid]({plot.name})"]
    return result


def grid_values(sweep_dir: Path, objective: str) -> tuple[list[float], list[float], Any] | None:
    """(learning rates, weight decays, array[decay, lr] of ``objective``; NaN where no job
    finished) of a coarse sweep, or None when no job finished."""
    import numpy as np

    jobs = ranked_jobs(sweep_dir, objective)
    if not jobs:
        return None
    lrs = sorted({float(j["overrides"]["optim.lr"]) for j in jobs})
    decays = sorted({float(j["overrides"]["optim.weight_decay"]) for j in jobs})
    grid = np.full((len(decays), len(lrs)), np.nan)
    for job in jobs:
        row = decays.index(float(job["overrides"]["optim.weight_decay"]))
        grid[row, lrs.index(float(job["overrides"]["optim.lr"]))] = job["metrics"][objective]
    return lrs, decays, grid


def grid_heatmap(sweep_dir: Path, objective: str, path: Path) -> Path | None:
    """Heatmap of ``objective`` over the learning rate x weight decay grid of a coarse sweep.

    Failed jobs show as blank cells; each cell is labelled with its value. None when the sweep
    has no finished job.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    values = grid_values(sweep_dir, objective)
    if values is None:
        return None
    lrs, decays, grid = values
    figure, axes = plt.subplots(figsize=(1.6 * len(lrs) + 2, 1.0 * len(decays) + 1.5))
    image = axes.imshow(grid, cmap="viridis", origin="lower", aspect="auto")
    axes.set_xticks(range(len(lrs)), [f"{v:.2g}" for v in lrs])
    axes.set_yticks(range(len(decays)), [f"{v:.0e}" if v else "0" for v in decays])
    axes.set_xlabel("optim.lr")
    axes.set_ylabel("optim.weight_decay")
    for (row, col), value in np.ndenumerate(grid):
        if not np.isnan(value):
            axes.text(col, row, f"{value:.3f}", ha="center", va="center", color="white")
    figure.colorbar(image, ax=axes, label=objective)
    axes.set_title(f"coarse grid: {objective}")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


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
