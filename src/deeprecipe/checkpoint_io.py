"""Checkpoint files: written atomically, read with ``weights_only``, checked before any training.

A run killed while it writes ``last.ckpt`` must not leave a truncated file that the next attempt
then fails to resume from, and a checkpoint given by the user (``ckpt_path``, a resumed attempt)
must be rejected with a message that names the file and the fix *before* training starts, not
with a traceback from deep inside ``torch.load`` or Lightning's restore.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.types import _PATH
from torch import nn

from deeprecipe.errors import CheckpointError

SHOWN = 5  # mismatched keys listed in an error message
# what every checkpoint that Lightning's `trainer.fit` writes holds, and a resume needs
TRAINING_KEYS = ("state_dict", "loops", "optimizer_states", "epoch", "global_step")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync it, then rename it over ``path``.

    ``os.replace`` is atomic on POSIX and Windows, so a reader (or a run killed at any moment)
    sees the old file or the new one, never a part; the fsync makes the content reach the disk
    before the name does. On any error the temporary file is removed and the old file is left.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Persist a rename: fsync the directory entry (a no-op where directories cannot be opened)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with :func:`atomic_torch_save` for local paths.

    Lightning's own save goes through an fsspec transaction that serializes the whole checkpoint
    into memory first and never fsyncs; this one streams to a temporary file in the target
    folder, fsyncs, and renames. Remote URLs (``s3://``, ...) keep Lightning's behaviour.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(
                "AtomicCheckpointIO.save_checkpoint takes no storage_options; pass them to a "
                "custom CheckpointIO instead."
            )
        if "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_torch_save(checkpoint, path)


def _listing(keys: list[str]) -> str:
    more = f" and {len(keys) - SHOWN} more" if len(keys) > SHOWN else ""
    return ", ".join(keys[:SHOWN]) + more


def load_checkpoint(path: str | Path, name: str = "ckpt_path", weights_only: bool = True) -> Any:
    """``torch.load`` of ``path`` on the CPU; any failure becomes a :class:`CheckpointError`.

    ``weights_only=True`` (the default) unpickles only tensors and plain containers, so a
    foreign or malicious file cannot run code; every checkpoint this suite writes loads so.
    ``name`` is the config key the path came from, used in messages.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"{name}={path}: no such file. Runs write their checkpoints to "
            "RUN_DIR/checkpoints/ (last.ckpt and best-*.ckpt)."
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        message = str(error)
        refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", message)
        if weights_only and refused:
            raise CheckpointError(
                f"{name}={path} holds Python objects ({refused.group(1)}) besides tensors and "
                "plain containers, which weights_only loading refuses: it was not written by "
                "this suite. Only if you trust the file, load it with ckpt_weights_only=false."
            ) from None
        first_line = message.strip().splitlines()[0][:200] if message.strip() else ""
        fix = (
            "Delete it and resume from another checkpoint (e.g. the run's best-*.ckpt), or "
            "start afresh with ckpt_path=null resume=never."
            if name == "ckpt_path"
            else "Pass an intact checkpoint (RUN_DIR/checkpoints/*.ckpt)."
        )
        raise CheckpointError(
            f"{name}={path} is not a readable checkpoint ({type(error).__name__}: {first_line}); "
            f"the file is truncated or corrupt. {fix}"
        ) from None


def check_training_checkpoint(checkpoint: Any, path: str | Path, method: nn.Module) -> None:
    """Raise :class:`CheckpointError` unless ``checkpoint`` can resume training ``method``.

    Catches, before Lightning's restore would fail deep inside: a file that is not a Lightning
    training checkpoint (a plain ``state_dict``, another project's file), one saved with
    ``weights_only`` (no optimizer or loop state), and one written by another model or method
    (different keys or shapes).
    """
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        looks_like = (
            " (it looks like a plain model state_dict)"
            if isinstance(checkpoint, dict)
            and checkpoint
            and all(isinstance(v, torch.Tensor) for v in checkpoint.values())
            else ""
        )
        raise CheckpointError(
            f"{path} is not a Lightning checkpoint of this suite{looks_like}. To start a "
            "backbone from its weights use pretrained=PATH; to resume, pass a "
            "RUN_DIR/checkpoints/last.ckpt written by `python run.py`."
        )
    missing_keys = [key for key in TRAINING_KEYS if key not in checkpoint]
    if missing_keys:
        raise CheckpointError(
            f"{path} holds weights but no training state ({', '.join(missing_keys)} missing): "
            "it was saved with weights_only. Resume from RUN_DIR/checkpoints/last.ckpt, or use "
            "pretrained=PATH to start a new run from its backbone."
        )
    saved = checkpoint["state_dict"]
    expected = method.state_dict()
    missing = sorted(expected.keys() - saved.keys())
    unexpected = sorted(saved.keys() - expected.keys())
    wrong_shape = [
        f"{key} {tuple(saved[key].shape)} vs {tuple(expected[key].shape)}"
        for key in sorted(expected.keys() & saved.keys())
        if isinstance(saved[key], torch.Tensor) and saved[key].shape != expected[key].shape
    ]
    if missing or unexpected or wrong_shape:
        problems = []
        if missing:
            problems.append(f"missing in the checkpoint: {_listing(missing)}")
        if unexpected:
            problems.append(f"not in the model: {_listing(unexpected)}")
        if wrong_shape:
            problems.append(f"shapes differ (checkpoint vs model): {_listing(wrong_shape)}")
        raise CheckpointError(
            f"{path} was written by another model or method than {type(method).__name__} of "
            f"this config; {'; '.join(problems)}. Resume with the config of the run that wrote "
            "it (its RUN_DIR/.hydra/config.yaml), or start afresh with ckpt_path=null "
            "resume=never."
        )
