"""Logger factories with behaviour the plain Lightning loggers lack."""

from __future__ import annotations

import logging
import netrc
import os
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


def wandb(
    project: str,
    name: str,
    save_dir: str,
    mode: str = "auto",
    **kwargs: Any,
) -> WandbLogger:
    """A W&B logger that never prompts and never hangs.

    ``mode``: ``online``, ``offline`` or ``auto`` (online when an API key is configured, offline
    otherwise, or whatever ``WANDB_MODE`` says). Offline runs land in ``save_dir/wandb`` and
    upload later with ``wandb sync save_dir/wandb/offline-run-*``.
    """
    if mode == "auto":
        mode = os.environ.get("WANDB_MODE") or ("online" if wandb_key_configured() else "offline")
    if mode not in ("online", "offline", "disabled"):
        from deeprecipe.errors import ConfigError

        raise ConfigError(f"logger.wandb.mode={mode!r}: use auto, online, offline or disabled.")
    if mode == "offline":
        log.info("W&B runs offline (no API key); upload later with `wandb sync %s/wandb`", save_dir)
    os.environ.setdefault("WANDB_SILENT", "true")
    return WandbLogger(
        project=project,
        name=name,
        save_dir=save_dir,
        offline=mode == "offline",
        mode=mode,
        **kwargs,
    )
