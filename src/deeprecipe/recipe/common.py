"""What the recipe steps share: composing the config, output dirs, short trainings, results.

A step composes ``conf/config.yaml`` exactly as ``run.py`` would (any override), adds the group
choices the lecture asks for (``aug=none`` to overfit, for instance) unless the user chose that
group, writes into ``logs/recipe/STEP/DATE/`` (or ``--out``) and returns a :class:`StepResult`:
a one-line verdict, Markdown details and machine-readable values saved as ``result.json``, which
the next step reads.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import lightning as L
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from deeprecipe.callbacks import LearningCurves
from deeprecipe.data.base import ImageDataModule
from deeprecipe.errors import ConfigError, NonFiniteLossError
from deeprecipe.methods.base import BaseMethod
from deeprecipe.train import build

ROOT = Path(__file__).resolve().parents[3]
CONF = ROOT / "conf"
RESULT_FILE = "result.json"
REPORT_FILE = "report.md"

# Every regularization knob of the suite's configs and its "off" value; each is set only where
# the composed config has it.
REGULARIZATION_OFF: dict[str, Any] = {
    "optim.weight_decay": 0.0,
    "method.label_smoothing": 0.0,
    "method.head_dropout": 0.0,
    "method.l1": 0.0,
    "method.mixing": None,
    "model.dropout": 0.0,
    "model.dropconnect": 0.0,
    "model.drop_path_rate": 0.0,
}


@dataclass
class StepResult:
    """Outcome of one recipe step.

    ``passed`` is True or False for checks and None for steps that only inform (a sweep preset,
    learning curves); ``values`` are what later steps read back from ``result.json``.
    """

    step: str
    passed: bool | None
    verdict: str
    details: list[str] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    def verdict_line(self) -> str:
        status = {True: "PASS", False: "FAIL", None: "INFO"}[self.passed]
        return f"{self.step}: {status} {self.verdict}"

    def markdown(self, base: Path | None = None) -> str:
        """A Markdown section; file links relative to ``base`` when given."""
        lines = [f"## {self.step}", "", f"**{self.verdict_line()}**", "", *self.details]
        for name in self.files:
            link = os.path.relpath(name, base) if base else name
            lines += ["", f"![{Path(name).stem}]({link})" if name.endswith(".png") else link]
        return "\n".join(lines) + "\n"

    def save(self, out_dir: Path) -> None:
        """Write ``result.json`` and ``report.md`` into ``out_dir``."""
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / RESULT_FILE).write_text(json.dumps(asdict(self), indent=2, default=str) + "\n")
        (out_dir / REPORT_FILE).write_text(self.markdown(out_dir))


def override_key(override: str) -> str:
    """``+model.width=3`` -> ``model.width``; ``~callbacks.x`` -> ``callbacks.x``."""
    return override.split("=", 1)[0].lstrip("+~")


def merge_overrides(user: Sequence[str], step_choices: Sequence[str]) -> list[str]:
    """The step's group choices, except those the user made too (the user's win), then the
    user's overrides."""
    chosen = {override_key(item) for item in user}
    return [item for item in step_choices if override_key(item) not in chosen] + list(user)


def compose_config(overrides: Sequence[str]) -> DictConfig:
    """``conf/config.yaml`` with ``overrides``, rooted at the current directory like ``run.py``.

    ``${hydra:...}`` interpolations (run name, paths) resolve as in a run: the Hydra config is
    registered, with the current directory as run dir until :func:`set_runtime_dir` moves it.
    """
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    with read_write(cfg.hydra), open_dict(cfg):
        cfg.hydra.runtime.cwd = os.getcwd()
    set_runtime_dir(cfg, Path.cwd())
    return cfg


def set_runtime_dir(cfg: DictConfig, output_dir: Path) -> None:
    """Make ``output_dir`` the run dir that ``paths.output_dir`` resolves to."""
    with read_write(cfg.hydra), open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
    HydraConfig.instance().set_config(cfg)


def compose_step(
    step: str, user_overrides: Sequence[str], step_choices: Sequence[str], out: Path | None
) -> tuple[DictConfig, Path]:
    """Compose a step's config and pick its output dir (``logs/recipe/STEP/DATE`` by default)."""
    cfg = compose_config(merge_overrides(user_overrides, step_choices))
    out_dir = out or Path(cfg.paths.log_dir) / "recipe" / step / timestamp()
    set_runtime_dir(cfg, out_dir)
    return cfg, out_dir


def timestamp() -> str:
    return datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def set_present(cfg: DictConfig, values: dict[str, Any]) -> list[str]:
    """Set each dotted key of ``values`` that ``cfg`` has and differs; return ``key=value``s."""
    changed = []
    with open_dict(cfg):
        for key, value in values.items():
            missing = object()
            current = OmegaConf.select(cfg, key, default=missing)
            if current is missing or current == value:
                continue
            OmegaConf.update(cfg, key, value, merge=False)
            changed.append(f"{key}={value}")
    return changed


def turn_off_regularization(cfg: DictConfig) -> list[str]:
    """Set every regularization knob the config has to its off value (see REGULARIZATION_OFF)."""
    return set_present(cfg, REGULARIZATION_OFF)


def drop_validation_callbacks(cfg: DictConfig) -> None:
    """Remove the checkpoint and early-stopping callbacks, which watch the validation metrics
    that the recipe's short trainings do not compute."""
    with open_dict(cfg):
        for name, node in list((cfg.get("callbacks") or {}).items()):
            target = str(node.get("_target_", "")) if node is not None else ""
            if target.rsplit(".", 1)[-1] in ("ModelCheckpoint", "EarlyStopping"):
                cfg.callbacks[name] = None


def build_classifier(cfg: DictConfig) -> tuple[ImageDataModule, BaseMethod]:
    """The datamodule and untrained method of ``cfg`` (seeded by ``cfg.seed``).

    Raises:
        ConfigError: the run is not image classification, which the recipe's checks assume.
    """
    L.seed_everything(cfg.seed, verbose=False)
    datamodule, method, _ = build(cfg)
    if not isinstance(datamodule, ImageDataModule) or not isinstance(method, BaseMethod):
        raise ConfigError(
            f"The recipe checks image classifiers; data={type(datamodule).__name__} with "
            f"method={type(method).__name__} is not one. Pick an image data config and a "
            "classification method (method=supervised)."
        )
    return datamodule, method


@dataclass
class Training:
    """Per-step losses and per-epoch rows of a short training, and its divergence if any."""

    losses: list[float]
    epochs: list[dict[str, float]]
    diverged: NonFiniteLossError | None


def train(
    cfg: DictConfig,
    datamodule: L.LightningDataModule,
    output_dir: Path,
    callbacks: Sequence[L.Callback] = (),
    **trainer_overrides: Any,
) -> Training:
    """Fit the run of ``cfg`` on ``datamodule`` without validation, writing into ``output_dir``.

    Seeded by ``cfg.seed``, so calls that differ only in a hyperparameter start from the same
    weights and see the same batches. A NaN/Inf loss ends the training and is returned, not
    raised. The learning-curve plot lands in ``output_dir/plots``.
    """
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)  # checkpoints, loggers and plots go there
    drop_validation_callbacks(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    curves = LearningCurves(window=10)  # short trainings: a short moving average
    _, method, trainer = build(
        cfg,
        extra_callbacks=(curves, *callbacks),
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_model_summary=False,
        log_every_n_steps=1,
        **trainer_overrides,
    )
    try:
        trainer.fit(method, datamodule=datamodule)
    except NonFiniteLossError as error:
        return Training(curves.losses, curves.epochs, error)
    return Training(curves.losses, curves.epochs, None)


def load_result(path: Path, step: str) -> dict[str, Any]:
    """The ``values`` of a step's ``result.json`` (``path`` is the file or its folder)."""
    file = path / RESULT_FILE if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"No {step} result at {path}; run `python -m deeprecipe.recipe {step}`.")
    data = json.loads(file.read_text())
    if data.get("step") != step:
        raise ConfigError(f"{file} is a {data.get('step')!r} result, not {step!r}.")
    return data["values"]


def latest_result(cfg: DictConfig, step: str, given: Path | None) -> tuple[Path, dict[str, Any]]:
    """``given`` or the newest ``logs/recipe/STEP/*/result.json``; its path and values."""
    if given is None:
        found = sorted(Path(cfg.paths.log_dir).glob(f"recipe/{step}/*/{RESULT_FILE}"))
        if not found:
            raise ConfigError(
                f"No {step} result under {cfg.paths.log_dir}/recipe/{step}; run "
                f"`python -m deeprecipe.recipe {step}` first or pass --from PATH."
            )
        given = found[-1]
    return given, load_result(given, step)


def moving_average_tail(values: Sequence[float], count: int) -> float:
    """Mean of the last ``count`` values (all of them when fewer)."""
    tail = values[-count:]
    return sum(tail) / len(tail)
