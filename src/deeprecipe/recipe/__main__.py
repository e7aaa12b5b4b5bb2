"""``python -m deeprecipe.recipe STEP [options] [hydra overrides ...]``: the lecture's recipe.

Steps, in the lecture's order (each takes the overrides of ``run.py``, prints one verdict line
and writes ``report.md`` + ``result.json`` + plots into ``logs/recipe/STEP/DATE/`` or ``--out``):

  initial_loss  loss of the untrained model vs log(C)
  overfit       100% training accuracy on a small sample, regularization off, plain SGD
  lr_find       LR range test, and which of 1e-1..1e-4 makes the loss drop in ~100 iterations
  coarse        grid of LR x weight decay around lr_find's LR, a few epochs (a sweep)
  refine        random search around coarse's best, longer, no LR decay (a sweep)
  curves        learning curves of a run or sweep dir, with an over/underfitting diagnosis
  all           the steps above in order, one Markdown report
  gradcheck     finite-difference gradient checks of every custom layer, loss and augmentation

The exit status is 1 when a check fails, so the steps can gate a script.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from hydra.errors import HydraException, InstantiationException

from deeprecipe.recipe import (
    coarse,
    curves,
    gradcheck,
    initial_loss,
    lr_find,
    overfit,
    refine,
    report,
)
from deeprecipe.train import user_error

STEPS: dict[str, ModuleType] = {
    module.STEP: module
    for module in (initial_loss, overfit, lr_find, coarse, refine, curves, report, gradcheck)
}


def parse(argv: Sequence[str]) -> tuple[ModuleType, argparse.Namespace]:
    """The step module and its parsed options; options and overrides may be interleaved."""
    if not argv or argv[0] not in STEPS:
        given = f"unknown step {argv[0]!r}\n\n" if argv and not argv[0].startswith("-") else ""
        raise SystemExit(f"{given}{__doc__}")
    step = STEPS[argv[0]]
    parser = argparse.ArgumentParser(
        prog=f"python -m deeprecipe.recipe {argv[0]}",
        description=(step.__doc__ or "").split("\n\n")[0],
    )
    parser.add_argument("--out", type=Path, help="output dir (default logs/recipe/STEP/DATE)")
    step.add_arguments(parser)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for run.py")
    return step, parser.parse_intermixed_args(argv[1:])


def main(argv: Sequence[str] | None = None) -> int:
    """Run one step; print its verdict and where its report is; return the exit status."""
    step, args = parse(sys.argv[1:] if argv is None else argv)
    try:
        result, out_dir = step.main(args)
    except Exception as raised:
        error = user_error(raised)
        composing = isinstance(raised, HydraException) and not isinstance(
            raised, InstantiationException
        )  # an unknown option or a malformed override: the user's input too
        if error is None and not composing:
            raise
        print(f"recipe {step.STEP}: {error or raised}", file=sys.stderr)
        return 2
    result.save(out_dir)
    print(result.verdict_line())
    print(f"report: {out_dir / 'report.md'}")
    return 1 if result.passed is False else 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no per-trainer banners
    sys.exit(main())
