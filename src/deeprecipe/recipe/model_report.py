"""Parameters and forward FLOPs of a model config, before any training.

The lecture's first step is to know the model: how many parameters it has and how much compute
one image costs. This composes ``conf/config.yaml`` exactly as ``run.py`` would (any override),
builds the backbone for the data's image shape (clip shape for video data) and measures both.

Usage::

    python -m deeprecipe.recipe.model_report model=vgg11 [data=cifar10] [OVERRIDE ...]
    python -m deeprecipe.recipe.model_report --all [data=cifar10]   # Markdown table, every model
    python -m deeprecipe.recipe.model_report model=r2plus1d_small data=moving_fashion  # a clip

FLOPs are those of one forward pass of one image (one clip for video data), as counted by
``torch.utils.flop_counter.FlopCounterMode``: 2 per multiply-add of matrix products,
convolutions and attention; elementwise work (activations, norms, pooling) is not counted.
LSTM layers run as one fused op that the counter does not see; their matrix products are counted
here from the layer sizes the same way (4 gates x 2 x hidden x (input + hidden) per step).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException, MissingConfigException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from deeprecipe.errors import DeeprecipeError
from deeprecipe.models.sequence import SequenceBackbone
from deeprecipe.models.video import VideoBackbone

ROOT = Path(__file__).resolve().parents[3]
CONF = ROOT / "conf"


class ModelStats(NamedTuple):
    """What :func:`model_stats` measures for one model config on one data config."""

    model: str
    data: str
    input_shape: tuple[int, ...]  # (C, H, W), or (C, T, H, W) for video data
    params: int
    flops: int  # one forward pass, batch 1


def compose_config(overrides: Sequence[str]) -> DictConfig:
    """``conf/config.yaml`` with ``overrides``; paths and run name are plain strings, so no
    ``${hydra:...}`` interpolation (which needs a running Hydra app) is left to resolve."""
    plain = [f"paths.root_dir={ROOT}", f"paths.output_dir={ROOT}", "run_name=model_report"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=[*overrides, *plain], return_hydra_config=True)


def lstm_flops(lstm: nn.LSTM, batch: int, steps: int) -> int:
    """Matrix-product FLOPs of one forward pass of ``lstm`` over ``steps`` x ``batch`` inputs."""
    directions = 2 if lstm.bidirectional else 1
    hidden = lstm.proj_size or lstm.hidden_size
    total = 0
    for layer in range(lstm.num_layers):
        inputs = lstm.input_size if layer == 0 else hidden * directions
        per_step = 2 * 4 * lstm.hidden_size * (inputs + hidden)
        if lstm.proj_size:
            per_step += 2 * lstm.hidden_size * lstm.proj_size
        total += directions * per_step * steps * batch
    return total


def count_params_and_flops(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """Parameter count and forward FLOPs of ``model`` (in eval mode) on one zero input."""
    params = sum(p.numel() for p in model.parameters())
    model.eval()
    counter = FlopCounterMode(display=False)
    lstm_calls: list[tuple[nn.LSTM, int, int]] = []

    def record(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        assert isinstance(module, nn.LSTM)
        x = args[0]
        if isinstance(x, torch.Tensor):  # (B, T, F) if batch_first else (T, B, F); or (T, F)
            steps, batch = (x.shape[1], x.shape[0]) if module.batch_first else x.shape[:2]
            lstm_calls.append(
                (module, batch if x.ndim == 3 else 1, steps if x.ndim == 3 else x.shape[0])
            )

    hooks = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, nn.LSTM)]
    try:
        with torch.no_grad(), counter:
            model(torch.zeros(1, *input_shape))  # (1, C, H, W)
    finally:
        for hook in hooks:
            hook.remove()
    seen = counter.get_flop_counts()
    names = {module: name for name, module in model.named_modules()}
    prefix = type(model).__name__
    unseen = sum(
        lstm_flops(module, batch, steps)
        for module, batch, steps in lstm_calls
        if not any(seen.get(f"{prefix}.{names[module]}", {}).values())  # fused op: not counted
    )
    return params, counter.get_total_flops() + unseen


def _model_class(option: str) -> type:
    node = OmegaConf.load(CONF / "model" / f"{option}.yaml")
    assert isinstance(node, DictConfig), f"conf/model/{option}.yaml is not a mapping"
    return get_class(str(node["_target_"]))


def is_sequence_model(option: str) -> bool:
    """Whether ``conf/model/OPTION.yaml`` builds a token-stream backbone (no image input)."""
    return issubclass(_model_class(option), SequenceBackbone)


def is_video_model(option: str) -> bool:
    """Whether ``conf/model/OPTION.yaml`` builds a backbone of clips ``(B, C, T, H, W)``."""
    return issubclass(_model_class(option), VideoBackbone)


def image_model_options() -> list[str]:
    """Every model config that takes images (the sequence-over-rows adapters included)."""
    options = sorted(path.stem for path in (CONF / "model").glob("*.yaml"))
    return [
        option for option in options if not is_sequence_model(option) and not is_video_model(option)
    ]


def video_model_options() -> list[str]:
    """Every model config that takes clips."""
    options = sorted(path.stem for path in (CONF / "model").glob("*.yaml"))
    return [option for option in options if is_video_model(option)]


def data_shape(data: DictConfig) -> tuple[int, ...]:
    """One input of a data config: (C, H, W), or (C, T, H, W) when it has ``num_frames``."""
    frames = (data.num_frames,) if "num_frames" in data else ()
    return (data.in_chans, *frames, data.image_size, data.image_size)


def model_stats(overrides: Sequence[str]) -> ModelStats:
    """Compose with ``overrides`` (e.g. ``["model=vgg11", "data=cifar10"]``), build, measure."""
    cfg = compose_config(overrides)
    choices = cfg.hydra.runtime.choices
    input_shape = data_shape(cfg.data)
    try:
        model = instantiate(cfg.model)
    except InstantiationException as error:  # Hydra wraps the model's own ConfigError
        if isinstance(error.__cause__, DeeprecipeError):
            raise error.__cause__ from None
        raise
    params, flops = count_params_and_flops(model, input_shape)
    return ModelStats(choices.model, choices.data, input_shape, params, flops)


def human(count: int) -> str:
    """1234567 -> '1.23 M'."""
    for divisor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if count >= divisor:
            return f"{count / divisor:.3g} {suffix}"
    return str(count)


def describe(stats: ModelStats) -> str:
    """Two lines for one model: what was measured, and the counts."""
    shape = "x".join(str(side) for side in stats.input_shape)
    return (
        f"model={stats.model} data={stats.data} input {shape}\n"
        f"params {stats.params:,} ({human(stats.params)})   "
        f"FLOPs {stats.flops:,} ({human(stats.flops)}, forward, batch 1)"
    )


def markdown_table(rows: Sequence[ModelStats]) -> str:
    """One Markdown row per model: input, parameters and forward FLOPs."""
    lines = [
        "| model | data | input | params | FLOPs (forward, batch 1) |",
        "|---|---|---|---:|---:|",
    ]
    for row in rows:
        shape = "x".join(str(side) for side in row.input_shape)
        lines.append(
            f"| {row.model} | {row.data} | {shape} | {row.params:,} | {human(row.flops)} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m deeprecipe.recipe.model_report",
        description="Parameters and forward FLOPs of a model config on its data's image shape.",
    )
    parser.add_argument(
        "--all",
        action="store_true",
        help="a Markdown table over every image model config (every video one for video data)",
    )
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides, e.g. model=vgg11 data=cifar10"
    )
    args = parser.parse_args(argv)
    try:
        if args.all:
            others = [item for item in args.overrides if not item.startswith("model=")]
            video = "num_frames" in compose_config(others).data
            models = video_model_options() if video else image_model_options()
            print(markdown_table([model_stats([f"model={name}", *others]) for name in models]))
        else:
            print(describe(model_stats(args.overrides)))
    except (DeeprecipeError, MissingConfigException) as error:  # the user's input: no traceback
        raise SystemExit(f"model_report: {error}") from None


if __name__ == "__main__":
    main()
