"""Step 6 of the lecture's recipe: look at the learning curves.

Reads what every run writes, ``plots/learning_curves.json`` (training loss per step, accuracies
per epoch) and ``csv/metrics.csv`` (everything logged per epoch, which fills what the JSON
lacks), for one run dir or every job of a sweep dir, and draws the lecture's plots: the loss as a
scatter with its moving average (losses are noisy), and train vs validation accuracy per epoch.

The diagnosis follows the lecture from the gap between training and validation accuracy at the
last epoch: a large gap (``--overfit-gap``, 0.05) is overfitting (more regularization or data),
no gap (``--underfit-gap``, 0.01, or val above train) is underfitting (train longer, a bigger
model); validation accuracy that peaked and fell means overfitting since the peak, and one still
rising means the run stopped too early. Training accuracy is measured during each epoch, with
augmentation and dropout on, so it reads a little low.

Usage::

    python -m deeprecipe.recipe curves RUN_OR_SWEEP_DIR [--overfit-gap 0.05] [--window 50]
"""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from deeprecipe.callbacks.curves import moving_average
from deeprecipe.callbacks.sinks import new_figure, pyplot
from deeprecipe.errors import ConfigError
from deeprecipe.recipe.common import StepResult, timestamp

STEP = "curves"
EPOCH_KEYS = ("train/acc", "val/acc", "val/loss")


@dataclass
class RunCurves:
    """One run's training loss per step and its per-epoch rows (``epoch``, ``train/acc``, ...)."""

    name: str
    losses: list[float]
    epochs: list[dict[str, float]]


def _csv_rows(path: Path) -> tuple[list[float], dict[int, dict[str, float]]]:
    """Logged ``train/loss`` per step and, per epoch, the first logged value of each key."""
    losses: list[float] = []
    epochs: dict[int, dict[str, float]] = {}
    if not path.is_file():
        return losses, epochs
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row.get("train/loss"):
                losses.append(float(row["train/loss"]))
            if not row.get("epoch"):
                continue
            values = epochs.setdefault(int(row["epoch"]), {})
            for key in EPOCH_KEYS:
                if row.get(key) and key not in values:
                    values[key] = float(row[key])
    return losses, epochs


def read_run(run_dir: Path, name: str | None = None) -> RunCurves | None:
    """The curves of a run dir, or None when it wrote neither file."""
    curves_file = run_dir / "plots" / "learning_curves.json"
    csv_losses, csv_epochs = _csv_rows(run_dir / "csv" / "metrics.csv")
    if curves_file.is_file():
        data = json.loads(curves_file.read_text())
        losses, epochs = data["loss"], data["epochs"]
    elif csv_epochs or csv_losses:
        losses, epochs = csv_losses, []
    else:
        return None
    by_epoch = {int(row["epoch"]): row for row in epochs}
    for epoch, values in csv_epochs.items():  # fill in, never overwrite what the JSON has
        if epoch in by_epoch or not curves_file.is_file():
            row = by_epoch.setdefault(epoch, {"epoch": float(epoch)})
            for key, value in values.items():
                row.setdefault(key, value)
    rows = [by_epoch[epoch] for epoch in sorted(by_epoch)]
    return RunCurves(name or run_dir.name, losses, rows)


def _job_overrides(job_dir: Path) -> dict[str, str]:
    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
    return dict(item.split("=", 1) for item in overrides or [] if "=" in item)


def read_runs(folder: Path) -> list[RunCurves]:
    """Every job of a sweep dir (numbered sub-dirs), else the run dir itself."""
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a directory; give a run dir or a sweep dir.")
    jobs = sorted(
        (p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)
    )
    overrides = [_job_overrides(job) for job in jobs]
    keys = {key for job in overrides for key in job}
    varying = sorted(k for k in keys if len({job.get(k) for job in overrides}) > 1)
    labels = [
        " ".join([f"job {job.name}:", *(f"{k}={o[k]}" for k in varying if k in o)])
        for job, o in zip(jobs, overrides, strict=True)
    ]
    runs = [read_run(j, label) for j, label in zip(jobs, labels, strict=True)] or [read_run(folder)]
    found = [run for run in runs if run is not None]
    if not found:
        raise ConfigError(
            f"No learning curves in {folder}: expected plots/learning_curves.json or "
            "csv/metrics.csv in it (a run dir) or in its numbered job dirs (a sweep dir)."
        )
    return found


def diagnose(run: RunCurves, overfit_gap: float, underfit_gap: float) -> tuple[str, str]:
    """A short diagnosis (overfitting, underfitting, healthy) and the advice that goes with it."""
    rows = [row for row in run.epochs if "train/acc" in row and "val/acc" in row]
    if not rows:
        return "unknown", "no epoch has both train/acc and val/acc"
    train_acc, val_acc = rows[-1]["train/acc"], rows[-1]["val/acc"]
    gap = train_acc - val_acc
    if gap >= overfit_gap:
        label = "overfitting"
        advice = (
            f"train-val gap {gap:.3f}: more regularization (weight decay, dropout, "
            "augmentation) or more data"
        )
    elif gap <= underfit_gap:
        label = "underfitting"
        advice = f"train-val gap {gap:.3f}: train longer, use a bigger model or a higher LR"
    else:
        label = "healthy"
        advice = f"small train-val gap {gap:.3f}"
    peak = max(rows, key=lambda row: row["val/acc"])
    if val_acc < peak["val/acc"] - 0.01:
        label = "overfitting"
        advice += (
            f"; val/acc peaked at {peak['val/acc']:.3f} in epoch {int(peak['epoch']) + 1} and "
            "fell since: stop earlier (the best checkpoint is kept)"
        )
    elif len(rows) > 1 and val_acc > rows[-2]["val/acc"] + 0.002:
        advice += "; val/acc still rising: train longer"
    return label, advice


def plot(runs: list[RunCurves], window: int, path: Path) -> None:
    """Loss scatter + moving average, and train (dashed) vs val (solid) accuracy per epoch."""
    figure, (ax_loss, ax_acc) = new_figure(ncols=2, figsize=(12, 4.5))
    for index, run in enumerate(runs):
        colour = f"C{index % 10}"
        steps = range(1, len(run.losses) + 1)
        ax_loss.scatter(steps, run.losses, s=2, alpha=0.15, color=colour)
        smoothing = min(window, max(1, len(run.losses) // 5))  # short runs: a shorter window
        ax_loss.plot(steps, moving_average(run.losses, smoothing), color=colour, label=run.name)
        for key, style in (("train/acc", "--"), ("val/acc", "-")):
            points = [(row["epoch"] + 1, row[key]) for row in run.epochs if key in row]
            if points:
                epochs, values = zip(*points, strict=True)
                ax_acc.plot(epochs, values, style, marker="o", ms=3, color=colour)
    ax_loss.set(
        xlabel="step", ylabel="training loss", title=f"Loss (moving average, <= {window} steps)"
    )
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="Accuracy: train (dashed) vs val (solid)")
    if len(runs) <= 12:
        ax_loss.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot().close(figure)


def run(
    folder: Path,
    out_dir: Path,
    overfit_gap: float = 0.05,
    underfit_gap: float = 0.01,
    window: int = 50,
) -> StepResult:
    """Plot and diagnose the learning curves of a run dir or every job of a sweep dir."""
    if not underfit_gap < overfit_gap or window < 1:
        raise ConfigError("curves needs --underfit-gap < --overfit-gap and --window >= 1.")
    runs = read_runs(folder)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot(runs, window, out_dir / "curves.png")
    diagnoses = {run.name: diagnose(run, overfit_gap, underfit_gap) for run in runs}
    details = [
        f"Learning curves of {folder}.",
        "",
        "| run | epochs | train/acc | val/acc | gap | diagnosis |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for curves in runs:
        # the last epoch that validated (check_val_every_n_epoch > 1 leaves some without val/*)
        validated = [row for row in curves.epochs if "val/acc" in row]
        last = validated[-1] if validated else (curves.epochs[-1] if curves.epochs else {})
        train_acc, val_acc = last.get("train/acc"), last.get("val/acc")
        gap = f"{train_acc - val_acc:.3f}" if train_acc is not None and val_acc is not None else ""
        label, advice = diagnoses[curves.name]
        details.append(
            f"| {curves.name} | {len(curves.epochs)} | {_fmt(train_acc)} | {_fmt(val_acc)} | "
            f"{gap} | {label}: {advice} |"
        )
    if len(runs) == 1:
        label, advice = diagnoses[runs[0].name]
        text = f"{label}: {advice}"
    else:
        labels = [label for label, _ in diagnoses.values()]
        counts = ", ".join(f"{labels.count(label)} {label}" for label in sorted(set(labels)))
        best = max(runs, key=_best_val_acc)
        text = (
            f"{len(runs)} runs: {counts}; best val/acc in {best.name} ({diagnoses[best.name][0]})"
        )
    return StepResult(
        STEP,
        None,
        text,
        details,
        values={"folder": str(folder), "diagnoses": {k: list(v) for k, v in diagnoses.items()}},
        files=[str(out_dir / "curves.png")],
    )


def _best_val_acc(curves: RunCurves) -> float:
    return max((row.get("val/acc", 0.0) for row in curves.epochs), default=0.0)


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overfit-gap", type=float, default=0.05, help="train-val gap")
    parser.add_argument("--underfit-gap", type=float, default=0.01, help="train-val gap")
    parser.add_argument("--window", type=int, default=50, help="moving average of the loss")


def main(args: argparse.Namespace) -> tuple[StepResult, Path]:
    if len(args.overrides) != 1:
        raise ConfigError(
            "curves takes one run or sweep dir: python -m deeprecipe.recipe curves DIR"
        )
    folder = Path(args.overrides[0])
    out_dir = args.out or Path("logs") / "recipe" / STEP / timestamp()
    return run(folder, out_dir, args.overfit_gap, args.underfit_gap, args.window), out_dir
