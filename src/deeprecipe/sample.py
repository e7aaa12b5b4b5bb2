"""Generate text from a language-model checkpoint.

``python -m deeprecipe.sample ckpt=PATH [prime=TEXT] [length=500] [temperature=0.8] [seed=0]
[device=cpu]`` prints ``prime`` followed by ``length`` sampled characters.

The model is rebuilt from the run's composed config (``RUN_DIR/.hydra/config.yaml``, next to
``RUN_DIR/checkpoints/``) and loaded with the checkpoint's weights, which include the vocabulary.
Checkpoints are read with ``weights_only=True``: tensors and plain containers, no code.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import OmegaConf

from deeprecipe.checkpoint_io import load_checkpoint
from deeprecipe.errors import CheckpointError, ConfigError, DataNotFoundError
from deeprecipe.methods.language_model import LanguageModel
from deeprecipe.train import user_error


@dataclass(frozen=True)
class SampleArguments:
    """What to sample: see the module docstring."""

    ckpt: Path
    prime: str = ""
    length: int = 500
    temperature: float = 0.8
    seed: int = 0
    device: str = "cpu"


CONVERTERS: dict[str, Callable[[str], Any]] = {
    "ckpt": Path,
    "prime": str,
    "length": int,
    "temperature": float,
    "seed": int,
    "device": str,
}


def parse_arguments(argv: Sequence[str]) -> SampleArguments:
    """``key=value`` arguments, typed; ``prime`` is taken verbatim (spaces included)."""
    values: dict[str, Any] = {}
    for argument in argv:
        key, sep, value = argument.partition("=")
        if not sep or key not in CONVERTERS:
            raise ConfigError(
                f"Unknown argument {argument!r}; use key=value with keys {', '.join(CONVERTERS)}."
            )
        try:
            values[key] = CONVERTERS[key](value)
        except ValueError as error:
            raise ConfigError(f"{key}={value!r} is not a valid {key}.") from error
    if "ckpt" not in values:
        raise ConfigError("Say which checkpoint to sample from: ckpt=RUN_DIR/checkpoints/X.ckpt.")
    return SampleArguments(**values)


def load_language_model(ckpt: Path, device: str = "cpu") -> LanguageModel:
    """The language model of a run, with the weights (and vocabulary) of checkpoint ``ckpt``."""
    if not ckpt.is_file():
        raise DataNotFoundError(
            f"No checkpoint at {ckpt}; runs write them to RUN_DIR/checkpoints/."
        )
    config_path = ckpt.resolve().parent.parent / ".hydra" / "config.yaml"
    if not config_path.is_file():
        raise DataNotFoundError(
            f"No run config at {config_path}: the model is rebuilt from the config of the run "
            "that wrote the checkpoint; keep the checkpoint in RUN_DIR/checkpoints/."
        )
    cfg = OmegaConf.load(config_path)
    method = instantiate(
        cfg.method,
        backbone=instantiate(cfg.model),
        optimizer=instantiate(cfg.optim),
        scheduler=instantiate(cfg.scheduler),
        augment=None,
    )
    if not isinstance(method, LanguageModel):
        raise ConfigError(
            f"{ckpt} is from a {type(method).__name__} run; sampling needs a language_model run."
        )
    checkpoint = load_checkpoint(ckpt, "ckpt")  # weights_only: tensors and plain containers
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointError(f"{ckpt} is not a Lightning checkpoint of this suite.")
    method.load_state_dict(checkpoint["state_dict"])
    seq_len = OmegaConf.select(cfg, "data.seq_len")
    if int(method.trained_length) == 0 and isinstance(seq_len, int) and seq_len > 0:
        method.trained_length.fill_(seq_len)  # a checkpoint from before it was recorded
    return method.to(device).eval()


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: print the sample; a :class:`DeeprecipeError` exits 1 with its message."""
    try:
        args = parse_arguments(sys.argv[1:] if argv is None else argv)
        model = load_language_model(args.ckpt, args.device)
        text = model.generate(args.prime, args.length, args.temperature, args.seed)
    except Exception as raised:
        error = user_error(raised)  # also when Hydra's instantiate wrapped it
        if error is None:
            raise
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    print(text)


if __name__ == "__main__":
    main()
