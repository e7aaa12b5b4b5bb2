"""One summary table per multirun: a row per job, and mean ± std over seeds.

Registered as a Hydra callback (``conf/hydra/default.yaml``), so it runs at the end of every
multirun whatever the sweeper (basic grid, Optuna random or TPE). It can also be run by hand on
a sweep dir: ``python -m deeprecipe.sweep_summary logs/multiruns/NAME/DATE``, which also prints
a pivot table of one metric by two overrides (``--rows +noise --columns +loss --metric
test/acc``), the layout of a study's table.
"""

from __future__ import annotations

import csv
import json
import logging
import statistics
import sys
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)

SEED_KEYS = ("seed", "+seed")


def read_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    """One record per job dir (numbered sub-folders): its overrides, status and metrics."""
    jobs = []
    for job_dir in sorted(
        (p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()),
        key=lambda p: int(p.name),
    ):
        overrides_file = job_dir / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.exists() else []
        record: dict[str, Any] = {
            "job": int(job_dir.name),
            "overrides": dict(o.split("=", 1) for o in overrides or [] if "=" in o),
            "metrics": {},
            "status": "incomplete",
        }
        metrics_file = job_dir / "metrics.json"
        error_file = job_dir / "error.txt"
        skipped_file = job_dir / "skipped.txt"  # done by an earlier sweep (deeprecipe.resume)
        metrics = _read_json(metrics_file)
        if metrics is None and skipped_file.exists():
            metrics = _read_json(Path(skipped_file.read_text().strip()) / "metrics.json")
        if metrics is not None:
            record["metrics"] = metrics
            record["status"] = "ok"
            if skipped_file.exists():
                record["finished_in"] = skipped_file.read_text().strip()
        elif error_file.exists():
            record["status"] = "failed: " + error_file.read_text().strip().splitlines()[0][:120]
        jobs.append(record)
    return jobs


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _numeric_metrics(jobs: list[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for job in jobs:
        for name, value in job["metrics"].items():
            numeric = isinstance(value, int | float) and not isinstance(value, bool)
            if numeric and name != "seed" and name not in names:
                names.append(name)
    preferred = [n for n in names if n.startswith(("val/", "test/"))]
    return preferred + [n for n in names if n not in preferred]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)


def summarize(sweep_dir: Path) -> tuple[Path, Path] | None:
    """Write ``summary.csv`` and ``summary.md`` in ``sweep_dir``; return their paths."""
    jobs = read_jobs(sweep_dir)
    if not jobs:
        return None
    all_keys: list[str] = []
    for job in jobs:
        all_keys += [k for k in job["overrides"] if k not in all_keys]
    # overrides that differ between jobs make the table; those shared by all are listed once
    values = {k: {job["overrides"].get(k) for job in jobs} for k in all_keys}
    keys = [k for k in all_keys if len(values[k]) > 1] or [k for k in all_keys if k in SEED_KEYS]
    common = [f"{k}={job_value}" for k in all_keys if k not in keys for job_value in values[k]]
    metric_names = _numeric_metrics(jobs)
    header = ["job", *keys, "status", *metric_names]
    rows = [
        [job["job"], *(job["overrides"].get(k, "") for k in keys), job["status"]]
        + [job["metrics"].get(name) for name in metric_names]
        for job in jobs
    ]
    csv_path = sweep_dir / "summary.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)

    lines = [f"# Sweep summary: {sweep_dir}", ""]
    if common:
        lines += ["Overrides shared by every job: `" + " ".join(common) + "`", ""]
    lines += ["## Jobs", ""]
    lines += _markdown_table(header, [[_fmt(v) for v in row] for row in rows])
    skipped = [job for job in jobs if job.get("finished_in")]
    if skipped:
        lines += ["", "Skipped, finished by an earlier sweep (their metrics are shown above):", ""]
        lines += [f"- job {job['job']}: `{job['finished_in']}`" for job in skipped]
    groups = _group_over_seeds(jobs, keys, metric_names)
    if groups:
        group_keys = [k for k in keys if k not in SEED_KEYS]
        lines += ["", "## Mean ± std over seeds", ""]
        lines += _markdown_table(
            ["configuration" if not group_keys else ", ".join(group_keys), "seeds", *metric_names],
            groups,
        )
    md_path = sweep_dir / "summary.md"
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def _group_over_seeds(
    jobs: list[dict[str, Any]], keys: list[str], metric_names: list[str]
) -> list[list[str]]:
    """Rows of mean ± std for jobs whose overrides differ only by seed (only if any do)."""
    if not any(k in SEED_KEYS for k in keys):
        return []
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for job in jobs:
        if job["status"] != "ok":
            continue
        key = tuple(job["overrides"].get(k, "") for k in keys if k not in SEED_KEYS)
        groups.setdefault(key, []).append(job)
    rows = []
    for key, members in groups.items():
        row = [", ".join(key) or "(all)", str(len(members))]
        for name in metric_names:
            values = [
                m["metrics"][name]
                for m in members
                if isinstance(m["metrics"].get(name), int | float)
            ]
            if not values:
                row.append("")
            elif len(values) == 1:
                row.append(f"{values[0]:.4f}")
            else:
                row.append(f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}")
        rows.append(row)
    return rows


def mean_std(values: list[float], scale: float = 1.0, digits: int = 1, count: bool = True) -> str:
    """``values`` (times ``scale``) as "mean ± std (n=N)": the std only for two or more values,
    the count when ``count``; "" for no values. The one format of every results table."""
    if not values:
        return ""
    scaled = [v * scale for v in values]
    text = f"{statistics.mean(scaled):.{digits}f}"
    if len(scaled) > 1:
        text += f" ± {statistics.stdev(scaled):.{digits}f}"
    return text + (f" (n={len(scaled)})" if count else "")


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


class SweepSummary(Callback):
    """Hydra callback: write the sweep's summary table when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        written = summarize(sweep_dir)
        if written:
            log.info("Sweep summary: %s and %s", *written)
            wandb_node = (config.get("logger") or {}).get("wandb")
            if wandb_node:  # the jobs logged to W&B: the table goes there too
                log_to_wandb(sweep_dir, written[0], config, wandb_node)


def _cell(text: str) -> Any:
    """A CSV cell back to a number where it is one."""
    try:
        return float(text) if any(c in text for c in ".eE") or text == "nan" else int(text)
    except ValueError:
        return text


def log_to_wandb(sweep_dir: Path, csv_path: Path, config: DictConfig, wandb_node: Any) -> None:
    """Log ``summary.csv`` as a W&B table in the sweep's group (see :mod:`wandb_tables`)."""
    from deeprecipe.wandb_tables import log_summary_table

    with csv_path.open(newline="") as handle:
        header, *rows = list(csv.reader(handle))
    # Optuna's direction when the sweeper has one, else the run's objective_mode
    default = "minimize" if config.get("objective_mode") == "min" else "maximize"
    direction = str(config.hydra.sweeper.get("direction", default))
    log_summary_table(
        sweep_dir,
        header,
        [[_cell(value) for value in row] for row in rows],
        project=str(wandb_node.get("project", "deeprecipe")),
        mode=str(wandb_node.get("mode", "auto")),
        objective=config.get("objective"),
        maximize=direction != "minimize" and "MINIMIZE" not in direction.upper(),
    )


def pivot(
    sweep_dirs: list[Path],
    rows: str,
    columns: str,
    metric: str,
    scale: float = 1.0,
    digits: int = 2,
) -> list[str]:
    """A Markdown table of ``metric`` (mean ± std over the seeds) by two overrides.

    ``rows`` and ``columns`` name overrides as written on the command line (``+loss``,
    ``data.noise_rate``); the jobs of all ``sweep_dirs`` are pooled. Values are multiplied by
    ``scale`` (100 for percentages). Cells list the seed count when it is not the same everywhere,
    and stay empty where no job finished.
    """
    jobs = [job for folder in sweep_dirs for job in read_jobs(folder) if job["status"] == "ok"]
    cells: dict[tuple[str, str], list[float]] = {}
    row_values: list[str] = []
    column_values: list[str] = []
    for job in jobs:
        value = job["metrics"].get(metric)
        if not isinstance(value, int | float) or isinstance(value, bool):
            continue
        row, column = job["overrides"].get(rows, ""), job["overrides"].get(columns, "")
        row_values += [row] if row not in row_values else []
        column_values += [column] if column not in column_values else []
        cells.setdefault((row, column), []).append(float(value) * scale)
    counts = {len(v) for v in cells.values()}

    def cell(values: list[float] | None) -> str:
        return mean_std(values or [], digits=digits, count=len(counts) > 1)

    header = [f"{rows} / {columns}", *column_values]
    body = [[row, *(cell(cells.get((row, c))) for c in column_values)] for row in row_values]
    seeds = f"{counts.pop()} seeds" if len(counts) == 1 else "n seeds"
    return [f"{metric} x {scale:g}, mean ± std over {seeds}", "", *_markdown_table(header, body)]


def main(argv: list[str] | None = None) -> None:
    """``python -m deeprecipe.sweep_summary SWEEP_DIR...``: (re)write each summary; with
    ``--rows KEY --columns KEY --metric NAME``: print a pivot table over all the dirs instead."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m deeprecipe.sweep_summary")
    parser.add_argument("sweep_dirs", nargs="+", type=Path)
    parser.add_argument("--rows", help="override whose values make the rows, e.g. +noise")
    parser.add_argument("--columns", help="override whose values make the columns, e.g. +loss")
    parser.add_argument("--metric", default="test/acc")
    parser.add_argument("--scale", type=float, default=1.0, help="e.g. 100 for percentages")
    parser.add_argument("--digits", type=int, default=2)
    args = parser.parse_args(argv)
    if (args.rows is None) != (args.columns is None):
        parser.error("--rows and --columns go together")
    if args.rows is not None:
        table = pivot(
            args.sweep_dirs, args.rows, args.columns, args.metric, args.scale, args.digits
        )
        print("\n".join(table))
        return
    for folder in args.sweep_dirs:
        print(summarize(folder))


if __name__ == "__main__":
    main(sys.argv[1:])
