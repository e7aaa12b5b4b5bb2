"""Test-only callbacks that interrupt training (used via PYTHONPATH=tests, like nan_helpers).

Registered with ``+callbacks.killer._target_=kill_helpers.KillAfterSteps`` in every attempt of a
command, so that the re-run is the *same* command; only the environment decides whether it
kills: ``KILL_AFTER_STEPS=N`` (and optionally ``KILL_JOB=J``, a multirun's job number).
"""

from __future__ import annotations

import os
import signal

import lightning as L
from hydra.core.hydra_config import HydraConfig


class KillAfterSteps(L.Callback):
    """SIGKILL the process once training reaches ``KILL_AFTER_STEPS`` optimizer steps.

    Runs in ``on_train_batch_end`` before Lightning's checkpoint callbacks (which it orders
    last), so step N's own checkpoint is never written: the re-run has to resume from an
    earlier one, mid-epoch when the step checkpoints say so.
    """

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        steps = os.environ.get("KILL_AFTER_STEPS")
        job = os.environ.get("KILL_JOB")
        if not steps or trainer.global_step < int(steps):
            return
        if job is not None and HydraConfig.get().job.num != int(job):
            return
        os.kill(os.getpid(), signal.SIGKILL)


class Interrupted(Exception):
    """Raised by :class:`RaiseAfterSteps`: an in-process stand-in for a kill."""


class RaiseAfterSteps(L.Callback):
    """Raise :class:`Interrupted` at ``steps`` optimizer steps (in-process tests)."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.steps:
            raise Interrupted(f"interrupted at step {trainer.global_step}")
