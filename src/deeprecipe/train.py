"""Build a run from its composed config, train, evaluate the best checkpoint, write metrics.json.

``run.py`` calls :func:`main`; tests and notebooks may call :func:`run` with a composed config.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from omegaconf import DictConfig, OmegaConf

from deeprecipe.callbacks import LearningCurves, Throughput
from deeprecipe.errors import ConfigError, DeeprecipeError
from deeprecipe.speed import fastest_precision
from deeprecipe.transfer import load_backbone_weights

log = logging.getLogger(__name__)

# By design the method, not the DataModule, moves batches through augmentation on the device.
warnings.filterwarnings("ignore", message=".*overridden `on_after_batch_transfer`.*")

if not OmegaConf.has_resolver("fastest_precision"):
    OmegaConf.register_new_resolver("fastest_precision", fastest_precision)


def check_config(cfg: DictConfig) -> None:
    """Reject values that would fail deep inside torch later, naming the key and the fix."""
    lr = cfg.optim.get("lr")
    if not isinstance(lr, int | float) or isinstance(lr, bool) or not lr > 0:
        raise ConfigError(f"optim.lr={lr!r}; the learning rate must be a positive number.")
    weight_decay = cfg.optim.get("weight_decay", 0.0)
    if not isinstance(weight_decay, int | float) or weight_decay < 0:
        raise ConfigError(f"optim.weight_decay={weight_decay!r}; it must be a number >= 0.")
    if not isinstance(cfg.seed, int):
        raise ConfigError(f"seed={cfg.seed!r}; it must be an integer.")


def git_sha(folder: Path) -> str:
    """Commit of the code that ran, with ``-dirty`` when the tree had uncommitted changes."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha + ("-dirty" if dirty else "")) if sha else "unknown"


def _instantiate_all(group: DictConfig | None) -> list[Any]:
    """Instantiate every non-null node of a group of named nodes (callbacks, loggers)."""
    if not group:
        return []
    return [instantiate(node) for node in group.values() if node is not None]


def _callbacks(cfg: DictConfig, extra: tuple[L.Callback, ...]) -> list[Any]:
    """The configured callbacks plus ``extra``; no progress bar when the trainer hides it
    (``trainer.enable_progress_bar=false`` would otherwise clash with the configured bar)."""
    callbacks = [*_instantiate_all(cfg.callbacks), *extra]
    if cfg.trainer.get("enable_progress_bar", True) is False:
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    return callbacks


def build(
    cfg: DictConfig, extra_callbacks: tuple[L.Callback, ...] = (), **trainer_overrides: Any
) -> tuple[L.LightningDataModule, L.LightningModule, L.Trainer]:
    """Instantiate the run's datamodule, method and trainer (with its callbacks and loggers)."""
    check_config(cfg)
    datamodule = instantiate(cfg.data)
    backbone = instantiate(cfg.model)
    if cfg.get("pretrained"):
        # before the method exists, so momentum copies (BYOL, MoCo) start from these weights;
        # a later ckpt_path resume still restores the method's own state over them
        load_backbone_weights(backbone, cfg.pretrained)
    method = instantiate(
        cfg.method,
        backbone=backbone,
        optimizer=instantiate(cfg.optim),
        scheduler=instantiate(cfg.scheduler),
        augment=instantiate(cfg.aug),
    )
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=_callbacks(cfg, extra_callbacks),
        logger=_instantiate_all(cfg.logger) or False,
        default_root_dir=str(cfg.paths.output_dir),
        **trainer_overrides,
    )
    return datamodule, method, trainer


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train and evaluate one configuration; return (and write) its metrics."""
    start = time.perf_counter()
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True)
    throughput = Throughput()
    datamodule, method, trainer = build(cfg, extra_callbacks=(throughput, LearningCurves()))
    trainer.fit(method, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))

    checkpoint = trainer.checkpoint_callback
    best = checkpoint.best_model_path if isinstance(checkpoint, ModelCheckpoint) else ""
    # Final numbers are those of the best checkpoint (the current weights without one).
    val = trainer.validate(method, datamodule=datamodule, ckpt_path=best or None, verbose=False)
    test = trainer.test(method, datamodule=datamodule, ckpt_path=best or None)
    metrics: dict[str, Any] = {**val[0], **test[0]}
    metrics.update(
        {
            "train/throughput": round(throughput.samples_per_second, 2),
            "params": sum(p.numel() for p in method.parameters()),
            "epochs": trainer.current_epoch,
            "steps": trainer.global_step,
            "best_ckpt": best or None,
            "seed": cfg.seed,
            "git_sha": git_sha(Path(cfg.paths.root_dir)),
            "wall_time_s": round(time.perf_counter() - start, 2),
        }
    )
    if trainer.is_global_zero:
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        log.info("metrics: %s", json.dumps(metrics))
    return metrics


def _is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def user_error(error: BaseException) -> DeeprecipeError | None:
    """The DeeprecipeError behind `error`, also when Hydra's `instantiate` wrapped it."""
    while error is not None:
        if isinstance(error, DeeprecipeError):
            return error
        error = error.__cause__  # type: ignore[assignment]
    return None


def main(cfg: DictConfig) -> float | None:
    """Entry point of ``run.py``: returns the sweep objective ``cfg.objective``.

    A :class:`DeeprecipeError` (bad config, missing data, diverged loss) is reported as its
    message without a traceback. A single run then exits with status 1; inside a multirun the job
    is recorded as failed (``error.txt`` in its dir) and the sweep goes on, with NaN as the
    objective so that Optuna marks the trial failed.
    """
    try:
        metrics = run(cfg)
    except Exception as raised:
        error = user_error(raised)
        if error is None:
            raise
        log.error("%s: %s", type(error).__name__, error)
        if not _is_multirun():
            raise SystemExit(1) from None
        output_dir = Path(cfg.paths.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "error.txt").write_text(f"{type(error).__name__}: {error}\n")
        return math.nan
    value = metrics.get(cfg.objective)
    return float(value) if value is not None else None
