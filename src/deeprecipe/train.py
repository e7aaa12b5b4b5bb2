"""Build a run from its composed config, train, evaluate the best checkpoint, write metrics.json.

``run.py`` calls :func:`main`; tests and notebooks may call :func:`run` with a composed config.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import subprocess
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationToMissingValueError, MissingMandatoryValue

from deeprecipe import resume
from deeprecipe.callbacks import LearningCurves, Throughput
from deeprecipe.checkpoint_io import AtomicCheckpointIO
from deeprecipe.errors import ConfigError, DeeprecipeError
from deeprecipe.models.compiled import compile_method
from deeprecipe.speed import fastest_precision
from deeprecipe.transfer import load_backbone_weights

log = logging.getLogger(__name__)

# By design the method, not the DataModule, moves batches through augmentation on the device.
warnings.filterwarnings("ignore", message=".*overridden `on_after_batch_transfer`.*")

if not OmegaConf.has_resolver("fastest_precision"):
    OmegaConf.register_new_resolver("fastest_precision", fastest_precision)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or check(value)


def _batch_limit(value: Any) -> bool:
    """Lightning's ``limit_*_batches``: a count (int >= 0) or a fraction in [0, 1]."""
    return (_integer(value) and value >= 0) or (_number(value) and 0.0 <= value <= 1.0)


# (key, test, what it must be): checked when the key is present. Each would otherwise fail deep
# inside torch or Lightning, or (a NaN learning rate) not fail at all.
CONFIG_CHECKS: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("seed", _integer, "an integer"),
    ("eval_checkpoint", lambda v: v in ("best", "last", "both"), "best, last or both"),
    ("objective_mode", lambda v: v in ("max", "min"), "max (higher is better) or min"),
    ("optim.lr", lambda v: _number(v) and v > 0, "a positive number, e.g. 0.01"),
    ("optim.weight_decay", lambda v: _number(v) and v >= 0, "a number >= 0"),
    ("optim.momentum", lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    ("optim.eps", lambda v: _number(v) and v > 0, "a positive number"),
    ("data.batch_size", lambda v: _integer(v) and v >= 1, "a positive integer"),
    ("data.eval_batch_size", _optional(lambda v: _integer(v) and v >= 1), "null or >= 1"),
    ("data.labels_per_class", _optional(lambda v: _integer(v) and v >= 1), "null or >= 1"),
    ("data.train_fraction", lambda v: _number(v) and 0 < v <= 1, "a number in (0, 1]"),
    ("data.val_size", lambda v: _number(v) and v >= 0, "a count (>= 1) or a fraction (< 1)"),
    ("data.test_size", lambda v: _number(v) and v >= 0, "a count (>= 1) or a fraction (< 1)"),
    ("data.num_classes", lambda v: _integer(v) and v >= 2, "an integer >= 2"),
    ("data.in_chans", lambda v: _integer(v) and v >= 1, "a positive integer"),
    ("data.image_size", lambda v: _integer(v) and v >= 1, "a positive integer"),
    ("data.num_workers", lambda v: _integer(v) and v >= 0, "an integer >= 0"),
    ("data.seq_len", lambda v: _integer(v) and v >= 1, "a positive integer"),
    ("data.vocab_size", lambda v: _integer(v) and v >= 2, "an integer >= 2"),
    ("data.mu", lambda v: _integer(v) and v >= 1, "a positive integer"),
    ("trainer.max_epochs", _optional(lambda v: _integer(v) and v >= -1), "an integer >= -1"),
    ("trainer.max_steps", lambda v: _integer(v) and v >= -1, "an integer >= -1 (-1: no limit)"),
    ("trainer.accumulate_grad_batches", lambda v: _integer(v) and v >= 1, "a positive integer"),
    ("trainer.gradient_clip_val", _optional(lambda v: _number(v) and v >= 0), "null or >= 0"),
    (
        "trainer.check_val_every_n_epoch",
        _optional(lambda v: _integer(v) and v >= 1),
        "null or >= 1",
    ),
    ("trainer.log_every_n_steps", lambda v: _integer(v) and v >= 1, "a positive integer"),
    ("trainer.limit_train_batches", _batch_limit, "a count >= 0 or a fraction in [0, 1]"),
    ("trainer.limit_val_batches", _batch_limit, "a count >= 0 or a fraction in [0, 1]"),
    ("trainer.limit_test_batches", _batch_limit, "a count >= 0 or a fraction in [0, 1]"),
)
_ABSENT = object()
# probabilities of the model and method nodes, by key name: in [0, 1)
PROBABILITY_KEYS = ("dropout", "dropconnect", "head_dropout", "drop_path_rate", "label_smoothing")


def check_config(cfg: DictConfig) -> None:
    """Reject values of the wrong type or range, naming the key and what it must be.

    Runs before anything is built or written, so a mistyped command line fails in a second
    with one line of explanation instead of a traceback from inside torch or Lightning.
    """
    for key, valid, what in CONFIG_CHECKS:
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is _ABSENT:
            continue
        if not valid(value):
            raise ConfigError(f"{key}={value!r}; it must be {what}.")
    for group in ("model", "method"):
        node = cfg.get(group)
        for name in PROBABILITY_KEYS:
            if not isinstance(node, DictConfig) or name not in node:
                continue
            probability = node.get(name)
            if not (_number(probability) and 0 <= probability < 1):
                raise ConfigError(f"{group}.{name}={probability!r}; it must be a number in [0, 1).")
    resume.check_resume_config(cfg)


@functools.cache
def git_sha(folder: Path) -> str:
    """Commit of the code that ran, with ``-dirty`` when the tree had uncommitted changes.

    Read once per process: the jobs of an in-process multirun run the code imported when the
    process started, even if the tree is committed to meanwhile.
    """
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
    # names (or, with resume_schedule=config, replaces) a resumed checkpoint's other schedule
    callbacks.append(resume.ScheduleOnResume(cfg.get("resume_schedule", "checkpoint")))
    if cfg.trainer.get("enable_progress_bar", True) is False:
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    return callbacks


def _pretrained(cfg: DictConfig) -> str | None:
    """``cfg.pretrained``; a transfer experiment left without its checkpoint is a ConfigError."""
    try:
        value = cfg.get("pretrained")
    except (MissingMandatoryValue, InterpolationToMissingValueError) as missing:  # `???` left
        raise ConfigError(
            "This experiment fine-tunes or probes a pretrained backbone: pass pretrained=PATH, "
            "the checkpoint of its pretraining run (`best_ckpt` in that run's metrics.json)."
        ) from missing
    return str(value) if value else None


def build(
    cfg: DictConfig, extra_callbacks: tuple[L.Callback, ...] = (), **trainer_overrides: Any
) -> tuple[L.LightningDataModule, L.LightningModule, L.Trainer]:
    """Instantiate the run's datamodule, method and trainer (with its callbacks and loggers)."""
    check_config(cfg)
    datamodule = instantiate(cfg.data)
    backbone = instantiate(cfg.model)
    pretrained = _pretrained(cfg)
    if pretrained:
        # before the method exists, so momentum copies (BYOL, MoCo) start from these weights;
        # a later ckpt_path resume still restores the method's own state over them
        load_backbone_weights(backbone, pretrained)
    if cfg.get("compile"):
        # compiles the bound method, not the module: state_dict keys stay `backbone.*`; deep
        # copies (momentum networks, teachers, EMA) get their own compiled method
        compile_method(backbone, "forward_features")
    method = instantiate(
        cfg.method,
        backbone=backbone,
        optimizer=instantiate(cfg.optim),
        scheduler=instantiate(cfg.scheduler),
        augment=instantiate(cfg.aug),
    )
    if "plugins" not in cfg.trainer and "plugins" not in trainer_overrides:
        # checkpoints written through a temporary file and a rename: a kill never truncates one
        trainer_overrides["plugins"] = [AtomicCheckpointIO()]
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=_callbacks(cfg, extra_callbacks),
        logger=_instantiate_all(cfg.logger) or False,
        default_root_dir=str(cfg.paths.output_dir),
        **trainer_overrides,
    )
    return datamodule, method, trainer


def _best_checkpoint_callback(trainer: L.Trainer) -> ModelCheckpoint | None:
    """The ModelCheckpoint that tracks the best model (the step-wise one only saves last)."""
    callbacks = trainer.checkpoint_callbacks
    monitored = [c for c in callbacks if isinstance(c, ModelCheckpoint) and c.monitor]
    first = trainer.checkpoint_callback
    return monitored[0] if monitored else first if isinstance(first, ModelCheckpoint) else None


def _evaluate(
    trainer: L.Trainer,
    method: L.LightningModule,
    datamodule: L.LightningDataModule,
    ckpt_path: str | None,
    weights_only: bool,
) -> dict[str, Any]:
    """Validation and test metrics of checkpoint ``ckpt_path`` (None: the current weights)."""
    val = trainer.validate(
        method, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False, weights_only=weights_only
    )
    test = trainer.test(
        method, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=weights_only
    )
    return {**val[0], **test[0]}


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train and evaluate one configuration; return (and write) its metrics.

    Everything a user can get wrong (config values, data files, the checkpoint to resume from)
    is checked before the first training step and before anything is written into the run dir,
    so a failing re-run in an existing dir loses nothing. An earlier attempt of the same command
    is resumed or, in a multirun, skipped when it finished (see :mod:`deeprecipe.resume`).
    """
    start = time.perf_counter()
    code = git_sha(Path(cfg.paths.root_dir))  # the code that starts, not the tree at the end
    check_config(cfg)
    output_dir = Path(cfg.paths.output_dir)
    plan = resume.plan_resume(cfg)
    if plan.skip:
        job_num = HydraConfig.get().job.num if HydraConfig.initialized() else None
        return resume.record_skip(plan, output_dir, job_num)
    if plan.source_dir is not None:  # before build: the W&B logger reads the carried run id
        resume.carry_state_files(plan.source_dir, output_dir)
    L.seed_everything(cfg.seed, workers=True)
    throughput = Throughput()
    datamodule, method, trainer = build(cfg, extra_callbacks=(throughput, LearningCurves()))
    if trainer.world_size == 1:
        # data errors surface here rather than inside fit; setup() keeps what it loaded
        datamodule.prepare_data()
        datamodule.setup("fit")
    weights_only = bool(cfg.get("ckpt_weights_only", True))
    ckpt_path = None
    if plan.checkpoint is not None:
        ckpt_path = resume.prepare_resume(plan.checkpoint, method, trainer, weights_only)
    output_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        if ckpt_path is not None:  # a resumed run's dir holds the carried-over checkpoints
            warnings.filterwarnings("ignore", message="Checkpoint directory .* is not empty")
        trainer.fit(method, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=weights_only)

    checkpoint = _best_checkpoint_callback(trainer)
    best = checkpoint.best_model_path if checkpoint is not None else ""
    which = cfg.get("eval_checkpoint", "best")
    final: dict[str, Any] = {}
    if which in ("last", "both") and best:  # before the best checkpoint replaces the weights
        final = _evaluate(trainer, method, datamodule, None, weights_only)
    # Final numbers are those of the best checkpoint (the current weights without one).
    metrics: dict[str, Any] = (
        dict(final)
        if which == "last" and final
        else _evaluate(trainer, method, datamodule, best or None, weights_only)
    )
    if which == "both":
        metrics.update({f"final/{key}": value for key, value in (final or metrics).items()})
    metrics.update(
        {
            "train/throughput": round(throughput.samples_per_second, 2),
            "params": sum(p.numel() for p in method.parameters()),
            "epochs": trainer.current_epoch,
            "steps": trainer.global_step,
            "best_ckpt": best or None,
            "eval_checkpoint": which,
            "seed": cfg.seed,
            "git_sha": code,
            "wall_time_s": round(time.perf_counter() - start, 2),
        }
    )
    if ckpt_path is not None:
        metrics["resumed_from"] = str(plan.checkpoint)
    if trainer.is_global_zero:
        resume.write_json_atomic(output_dir / "metrics.json", metrics)
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
    objective so that Optuna marks the trial failed. Any other exception of a multirun job is
    logged with its traceback and written to the job's ``error.txt`` at once, then re-raised
    (Hydra reports it when the sweep ends). A config with a ``self_training`` node
    (``+experiment=self_training_fashion``) runs all its rounds (:mod:`deeprecipe.self_training`).
    """
    if cfg.get("self_training") is not None:
        from deeprecipe import self_training  # imports this module: import it only when used

        return self_training.main(cfg)
    try:
        metrics = run(cfg)
    except Exception as raised:
        error = user_error(raised)
        if error is None:
            if _is_multirun():
                # Hydra keeps a failed job's exception until the whole sweep ends: say it now
                log.exception("This job failed (the sweep goes on; Hydra re-raises at its end)")
                output_dir = Path(cfg.paths.output_dir)
                output_dir.mkdir(parents=True, exist_ok=True)
                (output_dir / "error.txt").write_text(traceback.format_exc())
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
