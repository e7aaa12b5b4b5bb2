"""Logger factories with behaviour the plain Lightning loggers lack."""

from __future__ import annotations

import logging
import netrc
import os
import secrets
import string
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger

log = logging.getLogger(__name__)


def wandb_key_configured() -> bool:
    """True when W&B has an API key: ``WANDB_API_KEY`` or a ``wandb login`` entry in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        hosts = netrc.netrc().hosts
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return any("wandb" in host for host in hosts)


RUN_ID_FILE = "wandb_id.txt"


def wandb_run_id(save_dir: str | Path) -> tuple[str, bool]:
    """The W&B run id of the run dir ``save_dir`` and whether it continues an earlier run.

    The id lives in ``save_dir/wandb_id.txt``: the first attempt of a run creates it, and a
    resumed attempt finds it there (:mod:`deeprecipe.resume` copies it into the new run dir), so
    W&B appends to the same run instead of starting a second one.
    """
    path = Path(save_dir) / RUN_ID_FILE
    if path.is_file():
        run_id = path.read_text().strip()
        if run_id:
            return run_id, True
    # W&B's own ids: 8 lowercase letters and digits (its generator is not public API)
    run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id + "\n")
    return run_id, False


def sweep_group() -> str | None:
    """The W&B group of a multirun job: its sweep dir's name (its date); None for single runs.

    The sweep's summary table (:mod:`deeprecipe.wandb_tables`) is logged in the same group.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return Path(str(HydraConfig.get().sweep.dir)).name


def wandb(
    project: str,
    name: str,
    save_dir: str,
    mode: str = "auto",
    **kwargs: Any,
) -> WandbLogger:
    """A W&B logger that never prompts, never hangs, and resumes the run of a resumed attempt.

    ``mode``: ``online``, ``offline`` or ``auto`` (online when an API key is configured, offline
    otherwise, or whatever ``WANDB_MODE`` says). Offline runs land in ``save_dir/wandb`` and
    upload later with ``wandb sync save_dir/wandb/offline-run-*``. The run id comes from
    :func:`wandb_run_id` (``id=...`` in ``kwargs`` wins) and is passed with ``resume="allow"``.
    """
    if mode == "auto":
        mode = os.environ.get("WANDB_MODE") or ("online" if wandb_key_configured() else "offline")
    if mode == "dryrun":  # wandb's old name for offline; wandb.init itself sets WANDB_MODE to it
        mode = "offline"
    if mode not in ("online", "offline", "disabled"):
        from deeprecipe.errors import ConfigError

        raise ConfigError(f"logger.wandb.mode={mode!r}: use auto, online, offline or disabled.")
    if mode == "offline":
        log.info("W&B runs offline (no API key); upload later with `wandb sync %s/wandb`", save_dir)
    os.environ.setdefault("WANDB_SILENT", "true")
    if "id" not in kwargs:
        kwargs["id"], resumed = wandb_run_id(save_dir)
        if resumed:
            log.info("W&B continues run %s", kwargs["id"])
    kwargs.setdefault("resume", "allow")
    if kwargs.get("group") is None:
        kwargs["group"] = sweep_group()  # a multirun's jobs side by side in the dashboard
    return WandbLogger(
        project=project,
        name=name,
        save_dir=save_dir,
        offline=mode == "offline",
        mode=mode,
        **kwargs,
    )
