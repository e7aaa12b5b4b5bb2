"""Resuming: find the earlier attempt of the same command, skip it, or continue it exactly.

Hydra gives every launch a new timestamped dir, so running a killed command again cannot find
its checkpoint by path. With ``resume: auto`` a run looks through the earlier attempts of its
``run_name`` (``runs/NAME/*`` for single runs, ``multiruns/NAME/*/N`` for multirun jobs) for the
newest one whose recorded task overrides (``.hydra/overrides.yaml``, less ``resume``,
``ckpt_path``, ``ckpt_weights_only``, ``resume_schedule`` and ``hydra.*``) equal its own and
whose composed config (``.hydra/config.yaml``, less the same keys and ``paths``) does too, so
that edited config files start a new run rather than resume or skip an old one, and:

- that attempt finished (``metrics.json``): a multirun job is skipped (``skipped.txt`` and a copy
  of the small ``metrics.json`` in the new job dir; the objective goes back to the sweeper), while
  a single run trains afresh (re-running a finished command asks for a new run);
- it was interrupted (``checkpoints/last.ckpt``, no ``metrics.json``): training continues from
  that checkpoint, writing into the *new* dir, which is where the user, the log and the sweep
  summary look. The old dir is left as it was; the best checkpoints it holds are hard-linked
  into the new dir and the checkpoint's ``ModelCheckpoint`` state is rewritten to point there,
  so that best-model tracking goes on as if the run had never stopped;
- it failed with a user error (``error.txt``): training starts afresh.

Resumed training is *exact*: the same final metrics as an uninterrupted run with the same seed
(in deterministic mode). Lightning restores weights, optimizer, schedule and loop counters;
:class:`ExactResume` restores the position in the epoch's permutation
(:class:`deeprecipe.data.base.ResumableLoader`) and makes every random draw of training a
function of (seed, batches trained), so the resumed run draws the same augmentation and dropout.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from omegaconf import DictConfig, OmegaConf
from torch import nn

from deeprecipe.checkpoint_io import (
    atomic_torch_save,
    check_training_checkpoint,
    load_checkpoint,
)
from deeprecipe.data.base import ResumableLoader, mixed_seed, run_seed
from deeprecipe.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

RESUME_MODES = ("auto", "never")
RESUME_SCHEDULES = ("checkpoint", "config")
# overrides that say how to start, not what to train: ignored when matching attempts
IGNORED_KEYS = ("resume", "ckpt_path", "ckpt_weights_only", "resume_schedule")
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"
METRICS = "metrics.json"
SKIPPED = "skipped.txt"
RESUMED = "resumed_from.txt"
# small per-run files that a resumed attempt carries over (W&B run id)
STATE_FILES = ("wandb_id.txt",)
# set by deeprecipe.distributed.run_task for a multirun job that runs as a single run of its own
SWEEP_JOB_DIR_ENV = "DEEPRECIPE_SWEEP_JOB_DIR"


@dataclass(frozen=True)
class ResumePlan:
    """What a run does about earlier attempts: train afresh, resume, or skip (multirun)."""

    checkpoint: Path | None = None  # resume training from this file
    source_dir: Path | None = None  # the earlier attempt it comes from
    finished_metrics: dict[str, Any] | None = field(default=None)  # set: skip, it finished

    @property
    def skip(self) -> bool:
        return self.finished_metrics is not None


def check_resume_config(cfg: DictConfig) -> None:
    """Reject wrong ``resume``/``ckpt_path`` values before anything runs."""
    mode = cfg.get("resume", "never")
    if mode not in RESUME_MODES:
        raise ConfigError(f"resume={mode!r}; use auto (find the earlier attempt) or never.")
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path is not None and (not isinstance(ckpt_path, str) or not ckpt_path.strip()):
        raise ConfigError(
            f"ckpt_path={ckpt_path!r}; give a checkpoint file, `last` (the newest earlier "
            "attempt of this command) or null."
        )
    schedule = cfg.get("resume_schedule", "checkpoint")
    if schedule not in RESUME_SCHEDULES:
        raise ConfigError(
            f"resume_schedule={schedule!r}; use checkpoint (continue the checkpoint's schedule "
            "and optimizer settings) or config (this run's, from the checkpoint's step)."
        )
    if not isinstance(cfg.get("ckpt_weights_only", True), bool):
        raise ConfigError(
            f"ckpt_weights_only={cfg.get('ckpt_weights_only')!r}; it must be true or false."
        )


def override_key(override: str) -> str:
    """``+trainer.max_steps=5`` -> ``trainer.max_steps``."""
    return override.lstrip("~+").split("=", 1)[0]


def comparable(overrides: list[str]) -> list[str]:
    """The overrides that define what is trained, in a canonical order."""
    return sorted(
        o
        for o in overrides
        if override_key(o) not in IGNORED_KEYS and not override_key(o).startswith("hydra.")
    )


def _recorded_overrides(job_dir: Path) -> list[str] | None:
    path = job_dir / ".hydra" / "overrides.yaml"
    try:
        overrides = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):  # unreadable or truncated: not an attempt to match
        return None
    return [str(o) for o in overrides] if isinstance(overrides, list) else None


def _started(job_dir: Path) -> float:
    try:
        return (job_dir / ".hydra" / "overrides.yaml").stat().st_mtime
    except OSError:
        return 0.0


def read_metrics(job_dir: Path) -> dict[str, Any] | None:
    """The ``metrics.json`` of a finished attempt, or None (absent or unreadable)."""
    try:
        metrics = json.loads((job_dir / METRICS).read_text())
    except (OSError, ValueError):
        return None
    return metrics if isinstance(metrics, dict) else None


def candidate_dirs(output_dir: Path, sweep_dir: Path | None) -> list[Path]:
    """Earlier attempt dirs that may hold this job, newest first (``output_dir`` included).

    Single runs: the sibling dirs of ``output_dir`` (``runs/NAME/*``). Multirun jobs: the job
    dirs of the sibling sweeps of ``sweep_dir`` (``multiruns/NAME/*/*``).
    """
    found = {output_dir}
    if sweep_dir is None:
        siblings = [output_dir.parent]
    else:
        siblings = [p for p in _subdirs(sweep_dir.parent) if p != sweep_dir]
    for folder in siblings:
        found.update(p for p in _subdirs(folder) if (p / ".hydra" / "overrides.yaml").is_file())
    return sorted(found, key=_started, reverse=True)


def _subdirs(folder: Path) -> list[Path]:
    try:
        return [p for p in folder.iterdir() if p.is_dir()]
    except OSError:
        return []


def comparable_config(config: Any) -> Any:
    """A composed config (a dict, unresolved) less the keys that say how to start or where."""
    if not isinstance(config, dict):
        return config
    return {k: v for k, v in config.items() if k not in (*IGNORED_KEYS, "hydra", "paths")}


def _recorded_config(job_dir: Path) -> Any:
    """The composed config Hydra saved for ``job_dir`` (``.hydra/config.yaml``), or None."""
    try:
        return yaml.safe_load((job_dir / ".hydra" / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None


def find_attempt(
    output_dir: Path,
    sweep_dir: Path | None,
    overrides: list[str],
    config: dict[Any, Any] | None = None,
) -> Path | None:
    """The newest earlier attempt of these overrides that finished, failed or checkpointed.

    With ``config`` (this run's composed config, unresolved), an attempt whose saved config
    differs is not the same command: the same overrides over edited config files (a changed
    experiment, model or default) train something else and must not be skipped or resumed.
    """
    wanted = comparable(overrides)
    for job_dir in candidate_dirs(output_dir, sweep_dir):
        recorded = _recorded_overrides(job_dir)
        if recorded is None or comparable(recorded) != wanted:
            continue
        if config is not None and job_dir != output_dir:
            saved = _recorded_config(job_dir)
            if saved is not None and comparable_config(saved) != comparable_config(config):
                log.info(
                    "%s ran the same overrides with other config values (config files changed "
                    "since); not resumed or skipped.",
                    job_dir,
                )
                continue
        if (
            read_metrics(job_dir) is not None
            or (job_dir / "error.txt").is_file()
            or (job_dir / LAST_CHECKPOINT).is_file()
        ):
            return job_dir
    return None


def plan_resume(cfg: DictConfig) -> ResumePlan:
    """Decide, from ``resume``/``ckpt_path`` and the earlier attempts, how this run starts."""
    check_resume_config(cfg)
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path not in (None, "last"):
        return ResumePlan(checkpoint=Path(ckpt_path).expanduser())
    if ckpt_path is None and cfg.get("resume", "never") == "never":
        return ResumePlan()
    if not HydraConfig.initialized():
        if ckpt_path == "last":
            raise CheckpointError("ckpt_path=last needs a run started by `python run.py`.")
        return ResumePlan()
    hydra = HydraConfig.get()
    output_dir = Path(cfg.paths.output_dir).resolve()
    sweep_job_dir = os.environ.get(SWEEP_JOB_DIR_ENV)
    sweep_dir = None
    if hydra.mode == RunMode.MULTIRUN:
        sweep_dir = Path(hydra.sweep.dir).resolve()
    elif sweep_job_dir:
        sweep_dir = Path(sweep_job_dir).resolve().parent
    multirun = sweep_dir is not None
    config = OmegaConf.to_container(cfg, resolve=False)
    attempt = find_attempt(
        output_dir,
        sweep_dir,
        list(hydra.overrides.task),
        config if isinstance(config, dict) else None,
    )
    last = attempt / LAST_CHECKPOINT if attempt is not None else None
    if ckpt_path == "last":
        if last is None or not last.is_file():
            raise CheckpointError(
                f"ckpt_path=last, but no earlier attempt of this command (run_name "
                f"{cfg.get('run_name')}, same overrides) under {output_dir.parent} has "
                f"{LAST_CHECKPOINT}. Pass ckpt_path=PATH, or drop ckpt_path to start afresh."
            )
        log.info("Resuming from %s (ckpt_path=last)", last)
        return ResumePlan(checkpoint=last, source_dir=attempt)
    if attempt is None:
        return ResumePlan()
    metrics = read_metrics(attempt)
    if metrics is not None:
        if multirun:
            return ResumePlan(source_dir=attempt, finished_metrics=metrics)
        log.info(
            "An earlier run of this command finished in %s; training a new run "
            "(ckpt_path=last continues from its last checkpoint instead).",
            attempt,
        )
        return ResumePlan()
    if (attempt / "error.txt").is_file():
        log.info("The earlier attempt %s failed (error.txt); starting afresh.", attempt)
        return ResumePlan()
    assert last is not None
    log.info("Resuming the interrupted attempt %s from %s (resume=auto)", attempt, last)
    return ResumePlan(checkpoint=last, source_dir=attempt)


def record_skip(plan: ResumePlan, output_dir: Path, job_num: Any = None) -> dict[str, Any]:
    """Mark ``output_dir`` as done by ``plan.source_dir``; return the metrics recorded there."""
    assert plan.finished_metrics is not None and plan.source_dir is not None
    output_dir.mkdir(parents=True, exist_ok=True)
    label = f"job {job_num}" if job_num is not None else "this job"
    log.info("Skipping %s: finished in %s", label, plan.source_dir)
    if plan.source_dir.resolve() != output_dir.resolve():
        (output_dir / SKIPPED).write_text(f"{plan.source_dir}\n")
        write_json_atomic(output_dir / METRICS, plan.finished_metrics)
    return plan.finished_metrics


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON through a temporary file and a rename: never a half-written file."""
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(temp, path)


def carry_state_files(source_dir: Path | None, output_dir: Path) -> None:
    """Copy the small per-run state files (W&B run id) of the attempt being resumed."""
    if source_dir is None or source_dir == output_dir:
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    for name in STATE_FILES:
        if (source_dir / name).is_file() and not (output_dir / name).exists():
            shutil.copy2(source_dir / name, output_dir / name)


def _link_or_copy(source: Path, target: Path) -> None:
    if target.exists() or not source.is_file():
        if not source.is_file():
            log.warning("Checkpoint %s of the resumed attempt is gone; not carried over", source)
        return
    try:
        os.link(source, target)  # no copy of the bytes; the checkpoint IO never writes in place
    except OSError:
        shutil.copy2(source, target)


def relocate(checkpoint: dict[str, Any], trainer: L.Trainer) -> Path | None:
    """Point the checkpoint's ``ModelCheckpoint`` states at this run's checkpoint dirs.

    Lightning restores a ModelCheckpoint's best score and top-k files only when the saved
    ``dirpath`` equals the callback's; from another dir it would keep only the path, forget the
    best score, and then save any later epoch as "best". So the states are rewritten to the new
    dir and the files they name are hard-linked (copied across filesystems) into it. Returns
    the dir of the relocated ``last.ckpt``, or None when nothing had to move.
    """
    states = checkpoint.get("callbacks") or {}
    target_dir = None
    for callback in trainer.checkpoint_callbacks:
        if not isinstance(callback, ModelCheckpoint) or callback.dirpath is None:
            continue
        state = states.get(callback.state_key)
        if not isinstance(state, dict) or not state.get("dirpath"):
            continue
        old_dir, new_dir = Path(state["dirpath"]), Path(callback.dirpath)
        if old_dir == new_dir:
            continue
        new_dir.mkdir(parents=True, exist_ok=True)

        def moved(path: Any, old_dir: Path = old_dir, new_dir: Path = new_dir) -> Any:
            if not path or Path(path).parent != old_dir:
                return path
            return str(new_dir / Path(path).name)

        best_k = state.get("best_k_models") or {}
        for path in {*best_k, state.get("best_model_path"), state.get("kth_best_model_path")}:
            if path and Path(path).parent == old_dir and Path(path).name != "last.ckpt":
                _link_or_copy(Path(path), new_dir / Path(path).name)
        state["best_k_models"] = {moved(k): v for k, v in best_k.items()}
        state["best_model_path"] = moved(state.get("best_model_path"))
        state["kth_best_model_path"] = moved(state.get("kth_best_model_path"))
        state["last_model_path"] = moved(state.get("last_model_path"))
        state["dirpath"] = str(new_dir)
        target_dir = target_dir or new_dir
    return target_dir


def prepare_resume(
    checkpoint_path: Path, method: nn.Module, trainer: L.Trainer, weights_only: bool = True
) -> Path:
    """Check ``checkpoint_path`` and return the checkpoint file ``trainer.fit`` resumes from.

    Raises :class:`CheckpointError` for an unreadable, foreign or mismatched file, before any
    training and before anything is written. A checkpoint from another run dir is rewritten as
    this run's ``checkpoints/last.ckpt`` (see :func:`relocate`); the original stays untouched.
    """
    checkpoint = load_checkpoint(checkpoint_path, "ckpt_path", weights_only=weights_only)
    check_training_checkpoint(checkpoint, checkpoint_path, method)
    target_dir = relocate(checkpoint, trainer)
    if target_dir is None:
        return checkpoint_path
    target = target_dir / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"
    atomic_torch_save(checkpoint, target)
    (target_dir.parent / RESUMED).write_text(f"{checkpoint_path.resolve()}\n")
    return target


class StepCheckpoint(ModelCheckpoint):
    """``last.ckpt`` every ``every_n_train_steps`` steps, except on an epoch's last batch.

    A checkpoint saved after an epoch's last batch but before its validation makes Lightning
    (2.6) skip that validation on resume, so the resumed run would track a different best
    model; the epoch-end checkpoint follows moments later anyway.
    """

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if batch_idx + 1 >= trainer.num_training_batches:
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


def resumable_loaders(loaders: Any) -> list[ResumableLoader]:
    """The :class:`ResumableLoader` objects in a (nested) collection of training loaders."""
    if isinstance(loaders, ResumableLoader):
        return [loaders]
    if isinstance(loaders, dict):
        loaders = list(loaders.values())
    if isinstance(loaders, list | tuple):
        return [found for item in loaders for found in resumable_loaders(item)]
    return []


class ExactResume(L.Callback):
    """Make a resumed run train exactly as the uninterrupted one would have.

    Lightning restores weights, optimizer, schedule and loop counters, but not two things:

    - **The position in the epoch.** The checkpoint keeps the state of every
      :class:`~deeprecipe.data.base.ResumableLoader` (epoch and batches done), and the resumed
      run hands it back before its first batch, so it continues the same permutation.
    - **The random stream.** Augmentation, dropout and every other random draw of training use
      the global RNGs, whose state after batch ``n`` depends on everything drawn before,
      including draws that differ between an uninterrupted and a resumed run (validation and
      sanity-check loaders). So this callback reseeds torch (all devices), numpy and ``random``
      from ``(seed, rank, batches trained so far)`` at the points after which training draws
      next -- the start of training and of every epoch, the end of every batch and of every
      validation -- and keeps the batch count in the checkpoint.

    Args:
        seed: the run seed; default: the one ``lightning.seed_everything`` set.
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed
        self.rank = 0
        self.batches = 0
        self._trainer: L.Trainer | None = None
        self._device: torch.device | None = None
        self._loader_states: list[dict[str, Any]] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.seed is None:
            self.seed = run_seed()
        self.rank = trainer.global_rank  # DDP ranks keep streams of their own
        self._trainer = trainer
        self._device = trainer.strategy.root_device

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"batches": self.batches}
        trainer = self._trainer
        if trainer is not None and trainer.state.fn == TrainerFn.FITTING:
            loaders = resumable_loaders(trainer.train_dataloader)
            state["loaders"] = [loader.state_dict() for loader in loaders]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.batches = int(state_dict.get("batches", 0))
        self._loader_states = list(state_dict.get("loaders", []))

    def reseed(self) -> None:
        base = self.seed if self.seed is not None else run_seed()
        seed = mixed_seed(base, self.rank, self.batches)
        # the CPU generator and the training device's, not torch.manual_seed: that one visits
        # every backend (CUDA, MPS, XPU, ...) and costs ~0.5 ms, every step
        torch.default_generator.manual_seed(seed)
        if self._device is not None and self._device.type != "cpu":
            torch.get_device_module(self._device.type).manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._loader_states:
            loaders = resumable_loaders(trainer.train_dataloader)
            if len(loaders) == len(self._loader_states):
                for loader, state in zip(loaders, self._loader_states, strict=True):
                    loader.load_state_dict(state)
            else:
                log.warning("The training loaders changed since the checkpoint; epoch restarts")
            self._loader_states = []
        self.reseed()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.reseed()

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self.batches += 1
        self.reseed()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self.reseed()


# optimizer hyperparameters that are settings, not state (the lr is the schedule's output)
_SCHEDULED = {"params", "lr", "initial_lr"}


def _schedule_settings(scheduler: Any) -> dict[str, Any]:
    """What a restored schedule keeps of its run's config: base rates and the factor's fields."""
    state = scheduler.state_dict()
    return {"base_lrs": state.get("base_lrs"), "lr_lambdas": state.get("lr_lambdas")}


def _group_settings(optimizer: Any) -> list[dict[str, Any]]:
    return [
        {k: v for k, v in group.items() if k not in _SCHEDULED} for group in optimizer.param_groups
    ]


def _differences(before: Any, after: Any, prefix: str = "") -> list[str]:
    """``key: CHECKPOINT (checkpoint) vs CONFIG (config)`` for each leaf where the checkpoint's
    value ``after`` differs from the configured ``before``."""
    if isinstance(before, dict) and isinstance(after, dict):
        return [
            line
            for key in before
            for line in _differences(before[key], after.get(key), f"{prefix}{key}.")
        ]
    sequences = isinstance(before, list | tuple) and isinstance(after, list | tuple)
    if sequences and len(before) == len(after):
        return [
            line
            for i, (b, a) in enumerate(zip(before, after, strict=True))
            for line in _differences(b, a, f"{prefix}{i}.")
        ]
    if before != after:
        return [f"{prefix.rstrip('.')}: {after} (checkpoint) vs {before} (config)"]
    return []


class ScheduleOnResume(L.Callback):
    """A run resumed from a checkpoint whose schedule or optimizer settings differ from its config.

    Lightning restores the checkpoint's learning-rate schedule (its length, warm-up, milestones,
    base rates) and optimizer settings (weight decay, momentum) over the configured ones: exact
    continuation, but a finished run resumed with a larger ``trainer.max_epochs`` then trains its
    extra epochs at the end of the old decay (often a rate of 0), and a new ``optim.lr`` is
    ignored. This callback names every difference in a warning; with
    ``resume_schedule=config`` it applies the configured schedule and settings instead, from the
    checkpoint's step on (the rate jumps to the new schedule's value at that step).
    """

    def __init__(self, mode: str = "checkpoint") -> None:
        if mode not in RESUME_SCHEDULES:
            raise ConfigError(f"resume_schedule={mode!r}; use checkpoint or config.")
        self.mode = mode
        self._configured: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # optimizers and schedulers are configured, the checkpoint's state not yet restored
        self._configured = [
            (_schedule_settings(config.scheduler), _group_settings(config.scheduler.optimizer))
            for config in trainer.lr_scheduler_configs
        ]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.ckpt_path is None or not self._configured:
            return
        configs = trainer.lr_scheduler_configs
        differences = []
        for config, (schedule, groups) in zip(configs, self._configured, strict=False):
            restored = config.scheduler
            differences += _differences(schedule, _schedule_settings(restored), "scheduler.")
            differences += _differences(groups, _group_settings(restored.optimizer), "optimizer.")
        if not differences:
            return
        shown = "; ".join(differences[:8]) + ("; ..." if len(differences) > 8 else "")
        if self.mode == "checkpoint":
            log.warning(
                "Resumed from %s, whose learning-rate schedule or optimizer settings differ from "
                "this run's config: %s. The checkpoint's are used (exact continuation; a longer "
                "trainer.max_epochs does not stretch the old decay). To use the configured ones "
                "from the checkpoint's step on, add resume_schedule=config.",
                trainer.ckpt_path,
                shown,
            )
            return
        for config, (schedule, groups) in zip(configs, self._configured, strict=False):
            self._apply(config.scheduler, schedule, groups)
        log.warning(
            "Resumed from %s with this run's schedule and optimizer settings "
            "(resume_schedule=config) in place of the checkpoint's: %s.",
            trainer.ckpt_path,
            shown,
        )

    @staticmethod
    def _apply(scheduler: Any, schedule: dict[str, Any], groups: list[dict[str, Any]]) -> None:
        restored = scheduler.state_dict()
        restored.update(schedule)
        scheduler.load_state_dict(restored)
        for group, settings, base in zip(
            scheduler.optimizer.param_groups, groups, scheduler.base_lrs, strict=True
        ):
            group.update(settings)
            group["initial_lr"] = base
        step = scheduler.last_epoch
        lambdas = getattr(scheduler, "lr_lambdas", None)
        if lambdas is not None:  # LambdaLR: the rate of the configured schedule at this step
            for group, base, factor in zip(
                scheduler.optimizer.param_groups, scheduler.base_lrs, lambdas, strict=True
            ):
                group["lr"] = base * factor(step)
            scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]
