"""Distributed data parallel (DDP) for the suite: the strategy, batch norm over the global batch on
any device, and multiruns whose jobs each train on several processes.

Three things Lightning's DDP leaves to us:

- **Random streams.** Every process calls ``seed_everything`` with the run's seed, so without care
  all ranks draw the same augmentation parameters and dropout masks for different images: the
  ranks' augmentations are correlated. :class:`DDPStrategy` reseeds ranks > 0 once the process
  group exists (rank 0 keeps the run's stream). The default ``callbacks.exact_resume`` reseeds
  every step from (seed, rank, step) anyway; this covers runs without it.
- **Batch norm on the CPU.** ``torch.nn.SyncBatchNorm`` (what ``trainer.sync_batchnorm=true``
  uses) runs on GPUs only. On the CPU :class:`DDPStrategy` swaps in :class:`AllReduceBatchNorm`,
  which all-reduces the batch statistics through autograd-aware collectives (gloo), so that
  ``trainer=ddp_cpu trainer.sync_batchnorm=true`` trains exactly as one process on the global
  batch.
- **Multiruns.** Lightning starts ranks > 0 by re-executing ``sys.argv``
  (``_hydra_subprocess_cmd``); under ``-m`` that is the whole sweep, so each child rank would
  start the sweep again. :func:`run_task` (the body of ``run.py``) therefore runs a DDP job of a
  multirun as a *single run* of its own: ``python run.py <the job's overrides>
  hydra.run.dir=<the job's dir>``, a subprocess in which Lightning then starts the other ranks the
  ordinary way. The sweep's process waits for it and returns the job's objective from its
  ``metrics.json``. See :func:`run_task` for why a subprocess rather than patching ``sys.argv``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.plugins import LayerSync, TorchSyncBatchNorm
from lightning.pytorch.strategies import DDPStrategy as LightningDDPStrategy
from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher
from omegaconf import DictConfig
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from deeprecipe.losses.ssl import sum_across_processes

log = logging.getLogger(__name__)

# Set for the processes of a multirun job that runs as its own single run: the job's dir, where
# they record a user error as error.txt (what train.main does for in-process jobs).
JOB_DIR_ENV = "DEEPRECIPE_SWEEP_JOB_DIR"

# Hydra overrides about the sweep itself; a job rerun as a single run leaves them out.
_SWEEP_ONLY_HYDRA_KEYS = (
    "hydra.mode",
    "hydra.sweeper",
    "hydra/sweeper",
    "hydra.launcher",
    "hydra/launcher",
    "hydra.sweep",
    "hydra.run",
    "hydra.output_subdir",
    "hydra.job.name",
)


def is_distributed() -> bool:
    """Whether a process group of more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


# --------------------------------------------------------------------------------- strategy
class DDPStrategy(LightningDDPStrategy):
    """Lightning's DDP (one process per device, ``popen`` start) with two additions.

    - Ranks > 0 reseed torch's generator with ``seed + rank`` after the process group starts,
      so that their on-device augmentation and dropout differ from rank 0's.
    - On the CPU, ``trainer.sync_batchnorm=true`` uses :class:`AllReduceBatchNorm` (torch's
      ``SyncBatchNorm`` refuses CPU tensors).

    Everything else, including the SLURM and torchrun environment detection, is Lightning's.
    """

    def setup_environment(self) -> None:
        super().setup_environment()  # starts the process group (and resets the seed)
        if self.global_rank > 0:
            seed = int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed()))
            torch.manual_seed(seed + self.global_rank)

    def setup(self, trainer: Any) -> None:
        if isinstance(self._layer_sync, TorchSyncBatchNorm) and self.root_device.type == "cpu":
            self._layer_sync = AllReduceBatchNormSync()
        super().setup(trainer)


# ------------------------------------------------------------------ batch norm on any device
class AllReduceBatchNorm(_BatchNorm):
    """Batch norm whose training statistics are those of the global batch, for any backend.

    In training under DDP the per-channel sums behind the mean and the (biased) variance are
    all-reduced by an autograd-aware collective, whose backward all-reduces the gradients: forward
    and backward equal batch norm over the concatenated batches of all processes. Running
    statistics take the global mean and unbiased variance, as ``torch.nn.SyncBatchNorm`` does.
    Outside DDP training it is plain batch norm. Parameter and buffer names are those of
    ``nn.BatchNorm*d``, so checkpoints do not change.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        source_type: type[_BatchNorm] = nn.BatchNorm2d,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.source_type = source_type  # the class that revert() restores

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: Tensor) -> Tensor:
        if not (self.training and is_distributed()):
            return super().forward(input)
        # statistics in at least fp32 (also for bf16 activations), in fp64 for fp64 ones
        values = input.to(torch.promote_types(input.dtype, torch.float32))
        dims = [0, *range(2, values.ndim)]  # all but the channel dimension
        shape = [1, -1] + [1] * (values.ndim - 2)  # broadcast a (C,) vector over the input
        count = values.new_tensor([values.numel() / values.shape[1]])  # (1,) values per channel
        sums = sum_across_processes(torch.cat([values.sum(dims), count]))  # (C + 1,)
        total = sums[-1].detach()
        mean = sums[:-1] / total  # (C,)
        centered = values - mean.view(shape)
        variance = sum_across_processes(centered.square().sum(dims)) / total  # (C,) biased
        output = centered * torch.rsqrt(variance + self.eps).view(shape)
        if self.affine:
            output = output * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), variance.detach(), total)
        return output.to(input.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, variance: Tensor, total: Tensor) -> None:
        running_mean, running_var = self.running_mean, self.running_var
        assert running_mean is not None and running_var is not None
        assert self.num_batches_tracked is not None
        self.num_batches_tracked.add_(1)
        factor = self.momentum
        if factor is None:  # cumulative moving average, as nn.BatchNorm with momentum=None
            factor = 1.0 / float(self.num_batches_tracked)
        unbiased = variance * total / (total - 1).clamp_min(1)
        running_mean.lerp_(mean.to(running_mean.dtype), factor)
        running_var.lerp_(unbiased.to(running_var.dtype), factor)


def _swap_batch_norms(
    module: nn.Module, make: Callable[[nn.Module], nn.Module | None]
) -> nn.Module:
    """``module`` with every submodule ``m`` for which ``make(m)`` is a module replaced by it."""
    replacement = make(module) or module
    for name, child in module.named_children():
        replacement.add_module(name, _swap_batch_norms(child, make))
    return replacement


def _copy_state(source: _BatchNorm, target: _BatchNorm) -> _BatchNorm:
    """Give ``target`` the very parameter and buffer tensors of ``source`` (optimizer refs hold)."""
    if source.affine:
        target.weight = source.weight
        target.bias = source.bias
    target.running_mean = source.running_mean
    target.running_var = source.running_var
    target.num_batches_tracked = source.num_batches_tracked
    target.train(source.training)
    return target


def _to_all_reduce(module: nn.Module) -> nn.Module | None:
    if not isinstance(module, _BatchNorm) or isinstance(module, AllReduceBatchNorm):
        return None
    converted = AllReduceBatchNorm(
        module.num_features,
        module.eps,
        module.momentum,
        module.affine,
        module.track_running_stats,
        source_type=type(module),
    )
    return _copy_state(module, converted)


def _from_all_reduce(module: nn.Module) -> nn.Module | None:
    if not isinstance(module, AllReduceBatchNorm):
        return None
    restored = module.source_type(
        module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
    )
    return _copy_state(module, restored)


class AllReduceBatchNormSync(LayerSync):
    """Lightning layer-sync plugin: every batch norm becomes :class:`AllReduceBatchNorm` while
    fitting, and its original class afterwards."""

    def apply(self, model: nn.Module) -> nn.Module:
        return _swap_batch_norms(model, _to_all_reduce)

    def revert(self, model: nn.Module) -> nn.Module:
        return _swap_batch_norms(model, _from_all_reduce)


# ----------------------------------------------------------------------- multirun jobs
def _is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def launches_script_copies(trainer_cfg: DictConfig) -> bool:
    """Whether this trainer config makes Lightning start its ranks by re-executing the script.

    Asked of Lightning itself: the trainer is built (without callbacks or loggers) and its strategy
    inspected. True for DDP with the ``popen`` start on one node, whatever the device count;
    False for one device without DDP, for ``ddp_spawn`` and for processes that a cluster
    (SLURM, torchrun) starts. A config that cannot build a trainer gives False, so that the run
    itself reports the problem.
    """
    try:
        with _quiet("lightning.pytorch"), _quiet("lightning.fabric"):
            trainer = instantiate(
                trainer_cfg,
                logger=False,
                callbacks=[],
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
            )
    except Exception:
        return False
    strategy = trainer.strategy
    environment = getattr(strategy, "cluster_environment", None)
    return (
        isinstance(strategy.launcher, _SubprocessScriptLauncher)
        and environment is not None
        and not environment.creates_processes_externally
    )


def _quote(value: str) -> str:
    """A Hydra override value that stays one string (a path with ``=``, ``,`` or spaces)."""
    return "'" + value.replace("'", "\\'") + "'"


def _keeps(hydra_override: str) -> bool:
    key = hydra_override.lstrip("~+").split("=", 1)[0]
    return not key.startswith(_SWEEP_ONLY_HYDRA_KEYS)


def single_run_command(script: Path) -> list[str]:
    """The command that reruns the current multirun job as a single run in the job's dir.

    The job's task overrides (for Optuna they hold the trial's sampled values) with its
    non-sweep Hydra overrides and config sources; ``hydra.output_subdir=null`` leaves the job's
    ``.hydra/`` (written by the sweep, read by the sweep summary) as it is.
    """
    hydra_cfg = HydraConfig.get()
    command = [sys.executable, str(script)]
    for source in hydra_cfg.runtime.config_sources:
        if source.schema != "file":
            continue
        if source.provider == "main":
            command.append(f"--config-path={source.path}")
        elif source.provider == "command-line":
            command.append(f"--config-dir={source.path}")
    command.append(f"--config-name={hydra_cfg.job.config_name}")
    command += list(hydra_cfg.overrides.task)
    command += [o for o in hydra_cfg.overrides.hydra if _keeps(o)]
    command += [
        f"hydra.run.dir={_quote(str(hydra_cfg.runtime.output_dir))}",
        "hydra.output_subdir=null",
        # the sweep's job logs to <job name>.log in the same dir; Lightning names the others so
        "hydra.job.name=train_ddp_process_0",
    ]
    return command


def _run_as_single_run(cfg: DictConfig, script: Path) -> float | None:
    """Run this multirun job as ``python run.py <job overrides>`` and return its objective."""
    hydra_cfg = HydraConfig.get()
    job_dir = Path(hydra_cfg.runtime.output_dir)
    (job_dir / "error.txt").unlink(missing_ok=True)
    command = single_run_command(script)
    log.info("Job %s trains on several processes; running it as: %s", job_dir, shlex.join(command))
    started = time.time()
    process = subprocess.Popen(
        command, cwd=hydra_cfg.runtime.cwd, env={**os.environ, JOB_DIR_ENV: str(job_dir)}
    )
    try:
        status = process.wait()
    finally:
        if process.poll() is None:  # interrupted: take the job's ranks down with us
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
    metrics_file = job_dir / "metrics.json"
    if status == 0 and metrics_file.is_file() and metrics_file.stat().st_mtime >= started:
        value = json.loads(metrics_file.read_text()).get(cfg.objective)
        return float(value) if value is not None else None
    error_file = job_dir / "error.txt"
    if error_file.is_file():  # a user error (bad config, diverged loss): the sweep goes on
        log.error("Job %s failed: %s", job_dir, error_file.read_text().strip())
        return math.nan
    raise RuntimeError(
        f"The DDP job in {job_dir} exited with status {status} without metrics.json; its ranks' "
        f"logs are {job_dir}/train_ddp_process_*.log."
    )


class _FirstErrorToFile(logging.Handler):
    """Writes the first ERROR record it sees to ``path`` (the job's error.txt)."""

    def __init__(self, path: Path) -> None:
        super().__init__(level=logging.ERROR)
        self.path = path

    def emit(self, record: logging.LogRecord) -> None:
        try:
            with self.path.open("x") as handle:  # the first rank to fail names the error
                handle.write(record.getMessage() + "\n")
        except OSError:
            pass


def run_task(cfg: DictConfig, main: Callable[[DictConfig], float | None], script: Path) -> Any:
    """The body of ``run.py``: ``main(cfg)``, except for DDP jobs of a multirun.

    A multirun job whose trainer would re-execute the script (:func:`launches_script_copies`)
    runs as a single run in a subprocess (:func:`single_run_command`); the sweep's process waits
    and returns the objective. Compared with rewriting ``sys.argv`` and ``hydra.run.dir`` so that
    Lightning's children run the job, this keeps every trace of DDP out of the sweep's process:
    Lightning exports ``LOCAL_RANK``, ``WORLD_SIZE`` and ``MASTER_PORT`` into the launching
    process's environment and leaves the process group up, so a second job there would take
    itself for an externally started rank and wait forever; a rank that fails kills its launcher
    (Lightning's process observer), which would end the whole sweep; and Hydra's joblib workers
    have no ``sys.argv`` of ``run.py`` to re-execute. The cost is one more interpreter start per
    job. Processes that a cluster starts (SLURM tasks of the submitit launcher, torchrun) run
    ``main`` directly.
    """
    job_dir = os.environ.get(JOB_DIR_ENV)
    if job_dir and not _is_multirun():  # a rank of a DDP sweep job: record errors as main does
        logging.getLogger("deeprecipe.train").addHandler(
            _FirstErrorToFile(Path(job_dir) / "error.txt")
        )
    if _is_multirun() and launches_script_copies(cfg.trainer):
        return _run_as_single_run(cfg, script)
    return main(cfg)
