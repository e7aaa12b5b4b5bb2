"""Sweep summaries as W&B tables, next to the Markdown/CSV files of :mod:`sweep_summary`.

A W&B dashboard groups a sweep's job runs by their ``group`` (the sweep dir's name); the table
itself goes into one more run of that group, ``job_type="sweep-summary"``, under the key
``sweep/summary`` (columns: job, the overrides that vary, status, metrics), with the best job's
metrics in that run's summary as ``best/<metric>``. Offline (no API key), the run lands in
``SWEEP_DIR/wandb/offline-run-*`` and uploads with ``wandb sync SWEEP_DIR/wandb/offline-run-*``.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TABLE_KEY = "sweep/summary"


def _cell(value: Any) -> Any:
    """W&B table cells: numbers stay numbers (sortable in the UI), the rest become strings."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, int | float):
        return None if isinstance(value, float) and math.isnan(value) else value
    return str(value)


def best_row(
    header: list[str], rows: list[list[Any]], objective: str | None, maximize: bool = True
) -> dict[str, Any]:
    """The row (as a dict) with the best finite ``objective``; empty when none has one."""
    if objective is None or objective not in header:
        return {}
    column = header.index(objective)
    scored = [
        row
        for row in rows
        if isinstance(row[column], int | float) and math.isfinite(float(row[column]))
    ]
    if not scored:
        return {}
    best: list[Any] = (max if maximize else min)(scored, key=lambda row: float(row[column]))
    return dict(zip(header, best, strict=True))


def log_summary_table(
    sweep_dir: Path,
    header: list[str],
    rows: list[list[Any]],
    project: str,
    mode: str = "auto",
    objective: str | None = None,
    maximize: bool = True,
) -> Path | None:
    """Log the sweep table to a W&B run of the sweep's group; return its local run dir.

    ``mode`` is that of ``deeprecipe.loggers.wandb`` (auto: online with a key, else offline).
    Never raises for W&B trouble: the Markdown and CSV summaries are already written, so a
    failed upload is logged as a warning with what to do instead.
    """
    from deeprecipe.loggers import wandb_key_configured

    if mode == "auto":
        mode = os.environ.get("WANDB_MODE") or ("online" if wandb_key_configured() else "offline")
    if mode == "dryrun":  # wandb's old name for offline, which wandb.init puts in WANDB_MODE
        mode = "offline"
    if mode == "disabled":
        return None
    try:
        import wandb

        run = wandb.init(
            project=project,
            dir=str(sweep_dir),
            group=sweep_dir.name,
            job_type="sweep-summary",
            name=f"summary-{sweep_dir.name}",
            mode=mode,  # type: ignore[arg-type]  # a WANDB_MODE value; wandb checks it
            reinit="create_new",
            settings=wandb.Settings(silent=True),
        )
        table = wandb.Table(
            columns=list[str | int](header), data=[[_cell(v) for v in row] for row in rows]
        )
        run.log({TABLE_KEY: table})
        for name, value in best_row(header, rows, objective, maximize).items():
            run.summary[f"best/{name}"] = _cell(value)
        run_dir = Path(run.dir).parent
        run.finish()
    except Exception as raised:  # W&B must never turn a finished sweep into a failure
        log.warning(
            "Could not log the sweep table to W&B (%s: %s); the summary is in %s/summary.md. "
            "Check the W&B login, or set WANDB_MODE=offline and `wandb sync` later.",
            type(raised).__name__,
            raised,
            sweep_dir,
        )
        return None
    if mode == "offline":
        log.info("W&B sweep table offline; upload with `wandb sync %s`", run_dir)
    return run_dir
