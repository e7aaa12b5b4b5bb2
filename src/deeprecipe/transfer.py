"""Transfer: start a backbone from the weights of an earlier run of the suite.

A pretraining run (``+experiment=simclr_pretrain``) saves Lightning checkpoints whose
``state_dict`` holds the method's modules under their attribute names; the backbone's weights are
the ``backbone.*`` entries (momentum copies and heads live under other names and are left out).
"""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from deeprecipe.checkpoint_io import load_checkpoint
from deeprecipe.errors import CheckpointError

log = logging.getLogger(__name__)

PREFIX = "backbone."
SHOWN = 5  # mismatched keys listed in an error message


def _listing(keys: list[str]) -> str:
    more = f" and {len(keys) - SHOWN} more" if len(keys) > SHOWN else ""
    return ", ".join(keys[:SHOWN]) + more


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> None:
    """Copy the ``backbone.*`` weights of a suite checkpoint at ``path`` into ``backbone``.

    Raises :class:`CheckpointError`, naming the problem and the fix, when the file is missing or
    not a suite checkpoint, or when its backbone's keys or shapes differ from ``backbone``'s
    (another model, width or number of input channels). Nothing is copied unless all fit.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"pretrained={path}: no such file. Pass the .ckpt of a pretraining run, e.g. "
            "outputs/.../checkpoints/last.ckpt."
        )
    # weights_only: tensors and plain containers; a corrupt or truncated file is named
    checkpoint = load_checkpoint(path, "pretrained")
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(
            f"pretrained={path} has no 'state_dict': it is not a Lightning checkpoint of this "
            "suite."
        )
    weights = {k.removeprefix(PREFIX): v for k, v in state.items() if k.startswith(PREFIX)}
    if not weights:
        raise CheckpointError(
            f"pretrained={path} holds no '{PREFIX}*' weights (its keys start with "
            f"{_listing(sorted({k.split('.')[0] for k in state}))})."
        )
    expected = backbone.state_dict()
    missing = sorted(expected.keys() - weights.keys())
    unexpected = sorted(weights.keys() - expected.keys())
    wrong_shape = [
        f"{key} {tuple(weights[key].shape)} vs {tuple(expected[key].shape)}"
        for key in sorted(expected.keys() & weights.keys())
        if weights[key].shape != expected[key].shape
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
            f"The backbone in pretrained={path} does not fit the model "
            f"{type(backbone).__name__}; {'; '.join(problems)}. Use the model config of the "
            "pretraining run (same model, model.width and data.in_chans)."
        )
    backbone.load_state_dict(weights)
    log.info("Loaded %d backbone tensors from %s", len(weights), path)
