"""``all``: the lecture's recipe from start to end, in one Markdown report.

Runs, in order, ``initial_loss``, ``overfit``, ``lr_find``, ``coarse`` (around lr_find's
learning rate), ``refine`` (around coarse's best) and ``curves`` (of the refine sweep), each in
its own sub-dir of the output dir, and writes ``report.md`` with a verdict table and every
step's section. The sweeps need the learning rate from lr_find; they are skipped when it has
none. With ``--dry-run`` the coarse preset is written but not launched, and refine and curves,
which need its results, are skipped.

Usage::

    python -m deeprecipe.recipe all [--dry-run] [--coarse-epochs 3] [--refine-epochs 15] \\
        [--trials 10] [OVERRIDE ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from omegaconf import DictConfig

from deeprecipe.recipe import coarse, curves, initial_loss, lr_find, overfit, refine
from deeprecipe.recipe.common import StepResult, compose_step

STEP = "all"


def _step(
    name: str, user: list[str], choices: tuple[str, ...], out_dir: Path
) -> tuple[DictConfig, Path]:
    """Compose one step's config into ``out_dir / name``."""
    return compose_step(name, user, choices, out_dir / name)


def chain(args: argparse.Namespace, out_dir: Path) -> list[StepResult]:
    """Run the steps in order; each result is also saved in its own sub-dir."""
    user = list(args.overrides)
    results: list[StepResult] = []

    def keep(result: StepResult, folder: Path) -> StepResult:
        result.save(folder)
        results.append(result)
        print(result.verdict_line(), flush=True)
        return result

    cfg, folder = _step(initial_loss.STEP, user, (), out_dir)
    keep(initial_loss.run(cfg, folder), folder)
    cfg, folder = _step(overfit.STEP, user, overfit.STEP_CHOICES, out_dir)
    keep(overfit.run(cfg, folder, epochs=args.overfit_epochs), folder)
    cfg, folder = _step(lr_find.STEP, user, lr_find.STEP_CHOICES, out_dir)
    found = keep(lr_find.run(cfg, folder, iterations=args.iterations), folder)

    lr = found.values.get("recommended_lr")
    if lr is None:
        return [*results, skipped("coarse, refine, curves", "lr_find found no learning rate")]
    cfg, folder = _step(coarse.STEP, user, (), out_dir)
    grid = keep(
        coarse.run(cfg, folder, user, lr, args.coarse_epochs, launch=not args.dry_run), folder
    )
    best = grid.values.get("best")
    if not best:
        why = "the coarse sweep was not launched (--dry-run)" if args.dry_run else "no coarse job"
        return [*results, skipped("refine, curves", why)]
    cfg, folder = _step(refine.STEP, user, (), out_dir)
    search = keep(
        refine.run(cfg, folder, user, best["overrides"], args.refine_epochs, args.trials), folder
    )
    sweep_dir = Path(search.values["sweep_dir"])
    if not search.values.get("best"):
        return [*results, skipped("curves", "no refine job finished")]
    keep(curves.run(sweep_dir, out_dir / curves.STEP), out_dir / curves.STEP)
    return results


def skipped(steps: str, reason: str) -> StepResult:
    return StepResult(steps, None, f"skipped: {reason}")


def report_lines(results: list[StepResult], out_dir: Path, overrides: list[str]) -> list[str]:
    """The report: the command, a verdict table, then each step's section."""
    status = {True: "PASS", False: "FAIL", None: "INFO"}
    lines = [
        "```bash",
        " ".join(["python -m deeprecipe.recipe all", *overrides]),
        "```",
        "",
        "| step | result | verdict |",
        "|---|---|---|",
        *(f"| {r.step} | {status[r.passed]} | {r.verdict} |" for r in results),
        "",
    ]
    return lines + [r.markdown(out_dir) for r in results]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="write sweep presets only")
    parser.add_argument("--overfit-epochs", type=int, default=200)
    parser.add_argument("--iterations", type=int, default=100, help="lr_find quick check")
    parser.add_argument("--coarse-epochs", type=int, default=3)
    parser.add_argument("--refine-epochs", type=int, default=15)
    parser.add_argument("--trials", type=int, default=10, help="refine trials")


def main(args: argparse.Namespace) -> tuple[StepResult, Path]:
    _, out_dir = compose_step(STEP, args.overrides, (), args.out)
    results = chain(args, out_dir)
    failed = [r.step for r in results if r.passed is False]
    verdict = f"{len(results)} steps, " + (
        f"failed: {', '.join(failed)}" if failed else "no check failed"
    )
    details = report_lines(results, out_dir, list(args.overrides))
    steps = {"steps": [r.step for r in results]}
    return StepResult(STEP, not failed, verdict, details, steps), out_dir
