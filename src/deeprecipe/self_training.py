"""Self-training in rounds, driven by
``python -m deeprecipe.self_training +experiment=self_training_fashion``.

Round 0 trains a teacher on the labelled split. Then, for ``r = 1 .. rounds``: the teacher labels
the unlabelled images offline (eval mode, no augmentation: :func:`teacher_probabilities`), keeps
the pseudo-labels it is confident about (:func:`select_pseudo_labels`: hard labels or its soft
distribution, above an optional threshold), a student trains on labelled + kept pseudo-labelled
images under its own noise (augmentation, dropout) and becomes the next teacher.

Every round is an ordinary run of :func:`deeprecipe.train.run` in ``RUN_DIR/round_R/`` (its
checkpoints, ``metrics.json``, curves), with ``data.pseudo_labels`` pointing at the teacher's
labels saved in that dir (``pseudo_labels.pt``, with ``pseudo_labels.json``: how many were kept,
the mask rate and their accuracy against the hidden true labels). ``RUN_DIR/metrics.json`` holds
the last student's metrics (``val/acc``, ``test/acc``, ...), the same per round as flat keys
(``round1/test/acc``, ``round1/pseudo/mask_rate``) and as rows (``rounds``; also ``rounds.md``).
Rounds are separate fits rather than one fit with a callback that swaps the data, so each
student gets its own optimizer, schedule and best-checkpoint selection, as in Noisy Student.

Running the same command again continues an interrupted attempt (``resume=auto``): its finished
rounds are taken over, the interrupted round resumes from its ``last.ckpt``.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import hydra
import torch
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import Tensor

from deeprecipe import resume
from deeprecipe.checkpoint_io import load_checkpoint
from deeprecipe.data.self_training import PseudoLabels, SelfTrainingData, save_pseudo_labels
from deeprecipe.errors import CheckpointError, ConfigError
from deeprecipe.methods.base import BaseMethod
from deeprecipe.train import check_config, git_sha, user_error
from deeprecipe.train import run as train_run

log = logging.getLogger(__name__)

CONF = Path(__file__).resolve().parents[2] / "conf"
PSEUDO_FILE = "pseudo_labels.pt"
STATS_FILE = "pseudo_labels.json"
STUDENT_INITS = ("fresh", "continue")
# per-round numbers copied into the rows and the flat round keys of the final metrics.json
ROUND_KEYS = ("val/acc", "test/acc", "val/loss", "test/loss", "wall_time_s")


@dataclass(frozen=True)
class SelfTrainingSettings:
    """The ``self_training`` config node: see ``conf/experiment/self_training_fashion.yaml``."""

    rounds: int
    threshold: float = 0.0
    soft: bool = False
    temperature: float = 1.0
    student: str = "fresh"

    @classmethod
    def from_config(cls, cfg: DictConfig) -> SelfTrainingSettings:
        node = cfg.get("self_training")
        if not isinstance(node, DictConfig):
            raise ConfigError(
                "The config has no self_training settings; run "
                "`python -m deeprecipe.self_training +experiment=self_training_fashion`."
            )
        values = OmegaConf.to_container(node, resolve=True)
        assert isinstance(values, dict)
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(map(str, values)) - set(known))
        if unknown:
            raise ConfigError(
                f"Unknown self_training keys {unknown}; the keys are {', '.join(known)}."
            )
        if "rounds" not in values:
            raise ConfigError("Set self_training.rounds, the student rounds after round 0.")
        settings = cls(**{str(k): v for k, v in values.items()})
        if not isinstance(settings.rounds, int) or settings.rounds < 0:
            raise ConfigError(f"self_training.rounds={settings.rounds!r}; it must be an int >= 0.")
        if not 0.0 <= settings.threshold <= 1.0:
            raise ConfigError(
                f"self_training.threshold={settings.threshold}; it must be in [0, 1]."
            )
        if not isinstance(settings.soft, bool):
            raise ConfigError(f"self_training.soft={settings.soft!r}; it must be true or false.")
        if not settings.temperature > 0:
            raise ConfigError(f"self_training.temperature={settings.temperature}; it must be > 0.")
        if settings.student not in STUDENT_INITS:
            raise ConfigError(
                f"self_training.student={settings.student!r}; choose fresh (the configured "
                "initialization) or continue (from the teacher's backbone)."
            )
        return settings


# ----------------------------------------------------------------------------- labelling
@torch.no_grad()
def teacher_probabilities(
    method: BaseMethod, images: Tensor, batch_size: int, device: torch.device | str = "cpu"
) -> Tensor:
    """Class probabilities ``(N, K)`` of uint8 ``images`` ``(N, C, H, W)``: eval mode, no
    augmentation (the teacher labels clean images; only the student is noised)."""
    method.eval().to(device)
    probabilities = []
    for start in range(0, len(images), batch_size):
        x = method.prepare_images(images[start : start + batch_size].to(device), augment=False)
        probabilities.append(torch.softmax(method(x).float(), dim=1).cpu())
    return torch.cat(probabilities)


def select_pseudo_labels(
    probabilities: Tensor, threshold: float = 0.0, soft: bool = False, temperature: float = 1.0
) -> PseudoLabels:
    """Keep the images whose top probability reaches ``threshold``; targets one-hot or soft.

    ``probabilities`` ``(N, K)``. Soft targets are the teacher's distribution sharpened (or
    flattened) by ``temperature``: ``p ** (1 / T)`` renormalized, i.e. ``softmax(logits / T)``.
    """
    confidence, top = probabilities.max(dim=1)  # (N,)
    indices = torch.nonzero(confidence >= threshold).flatten()  # (M,)
    if soft:
        sharpened = probabilities[indices].double() ** (1.0 / temperature)  # (M, K)
        targets = (sharpened / sharpened.sum(dim=1, keepdim=True)).float()
    else:
        targets = torch.nn.functional.one_hot(top[indices], probabilities.shape[1]).float()
    return PseudoLabels(indices, targets)


def pseudo_label_report(
    probabilities: Tensor, labels: PseudoLabels, hidden: Tensor
) -> dict[str, Any]:
    """What the teacher's labels are worth, against the hidden true labels ``hidden`` ``(N,)``.

    ``pseudo/mask_rate``: fraction of the unlabelled images kept; ``pseudo/acc``: accuracy of
    the kept labels' top class (None when none was kept); ``pseudo/teacher_acc``: the teacher's
    accuracy on all unlabelled images; ``pseudo/kept``: how many were kept.
    """
    top = probabilities.argmax(dim=1)  # (N,)
    kept = labels.indices
    correct = (labels.targets.argmax(dim=1) == hidden[kept]).double()  # (M,)
    return {
        "pseudo/kept": len(kept),
        "pseudo/mask_rate": len(kept) / max(1, len(hidden)),
        "pseudo/acc": correct.mean().item() if len(kept) else None,
        "pseudo/teacher_acc": (top == hidden).double().mean().item(),
    }


def load_method(cfg: DictConfig, checkpoint: Path) -> BaseMethod:
    """The run's method, built from ``cfg``, with all the weights of a checkpoint of it."""
    method = instantiate(
        cfg.method,
        backbone=instantiate(cfg.model),
        optimizer=instantiate(cfg.optim),
        scheduler=instantiate(cfg.scheduler),
        augment=instantiate(cfg.aug),
    )
    content = load_checkpoint(checkpoint, "teacher checkpoint")
    state = content.get("state_dict") if isinstance(content, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{checkpoint} is not a Lightning checkpoint of this suite.")
    try:
        method.load_state_dict(state)
    except RuntimeError as error:
        raise CheckpointError(
            f"The teacher checkpoint {checkpoint} does not fit the configured method: "
            f"{str(error).splitlines()[0]}. Keep the model and method of the earlier rounds."
        ) from None
    return method


def _device(cfg: DictConfig) -> torch.device:
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    use_cuda = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return torch.device("cuda" if use_cuda else "cpu")


def label_round(
    cfg: DictConfig, teacher: Path, settings: SelfTrainingSettings, path: Path
) -> dict[str, Any]:
    """The teacher labels the unlabelled split of ``cfg.data``; save to ``path``, report."""
    datamodule = instantiate(cfg.data)
    if not isinstance(datamodule, SelfTrainingData):
        raise ConfigError(
            f"data={cfg.data._target_} has no unlabelled split to pseudo-label; use "
            "data=fashion_mnist_self_training (or another SelfTrainingData DataModule)."
        )
    datamodule.prepare_data()
    datamodule.setup("fit")
    assert datamodule.unlabeled is not None
    method = load_method(cfg, teacher)
    probabilities = teacher_probabilities(
        method, datamodule.unlabeled.images, datamodule.eval_batch_size, _device(cfg)
    )  # (N_u, K)
    labels = select_pseudo_labels(
        probabilities, settings.threshold, settings.soft, settings.temperature
    )
    save_pseudo_labels(path, labels, datamodule)
    report = pseudo_label_report(probabilities, labels, datamodule.unlabeled.labels)
    report["teacher"] = str(teacher)
    resume.write_json_atomic(path.with_name(STATS_FILE), report)
    return report


# -------------------------------------------------------------------------------- rounds
def round_config(
    cfg: DictConfig,
    round_dir: Path,
    pseudo_labels: Path | None,
    pretrained: str | None,
    ckpt_path: Path | None = None,
) -> DictConfig:
    """``cfg`` as one round's run: its own dir and pseudo-labels, resumed only by the driver."""
    round_cfg = copy.deepcopy(cfg)
    with open_dict(round_cfg):
        round_cfg.paths.output_dir = str(round_dir)
        round_cfg.data.pseudo_labels = str(pseudo_labels) if pseudo_labels is not None else None
        round_cfg.pretrained = pretrained
        round_cfg.resume = "never"  # attempts are matched by the driver, not per round
        round_cfg.ckpt_path = str(ckpt_path) if ckpt_path is not None else None
    return round_cfg


def teacher_checkpoint(metrics: dict[str, Any], round_dir: Path, which: str = "best") -> Path:
    """The round's checkpoint the next teacher labels with: its best (in this dir when the round
    was carried over; ``eval_checkpoint`` best or both), or its last (``eval_checkpoint=last``,
    and when no best was written)."""
    best = metrics.get("best_ckpt") if which != "last" else None
    candidates = [round_dir / "checkpoints" / Path(best).name, Path(best)] if best else []
    candidates.append(round_dir / resume.LAST_CHECKPOINT)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"{round_dir} holds no checkpoint for the teacher to label with; keep "
        "callbacks.model_checkpoint (trainer=debug and fast_dev_run write none)."
    )


def _link_or_copy(source: str, target: str) -> None:
    """Checkpoints are hard-linked (always replaced by a rename, never written in place); other
    files are copied, since loggers append to them."""
    if source.endswith(".ckpt"):
        try:
            os.link(source, target)
            return
        except OSError:
            pass
    shutil.copy2(source, target)


def carry_earlier_attempt(cfg: DictConfig, output_dir: Path) -> dict[str, Any] | None:
    """Take over the rounds of the newest earlier attempt of this command, if it was cut off.

    Attempts are matched as :mod:`deeprecipe.resume` does (same ``run_name`` and overrides).
    Returns the metrics of a finished attempt when this is a multirun job (it is then skipped);
    a finished single run is trained afresh.
    """
    if cfg.get("resume", "auto") != "auto" or not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    sweep_dir = Path(hydra_cfg.sweep.dir).resolve() if multirun else None
    wanted = resume.comparable(list(hydra_cfg.overrides.task))
    here = output_dir.resolve()
    for attempt in resume.candidate_dirs(here, sweep_dir):
        if attempt == here:
            continue
        try:
            recorded = yaml.safe_load((attempt / ".hydra" / "overrides.yaml").read_text())
        except (OSError, yaml.YAMLError):
            continue
        if not isinstance(recorded, list) or resume.comparable(list(map(str, recorded))) != wanted:
            continue
        if (attempt / "error.txt").is_file():  # failed on a user error: start afresh
            return None
        finished = resume.read_metrics(attempt)
        if finished is not None:
            if multirun:
                plan = resume.ResumePlan(source_dir=attempt, finished_metrics=finished)
                return resume.record_skip(plan, output_dir, hydra_cfg.job.num)
            return None
        rounds = sorted(p for p in attempt.glob("round_*") if p.is_dir())
        if not rounds:
            return None
        for round_dir in rounds:
            shutil.copytree(
                round_dir,
                output_dir / round_dir.name,
                copy_function=_link_or_copy,
                dirs_exist_ok=True,
            )
        (output_dir / resume.RESUMED).write_text(f"{attempt}\n")
        log.info(
            "Continuing the interrupted attempt %s (%d rounds carried over)", attempt, len(rounds)
        )
        return None
    return None


def _check_single_process(cfg: DictConfig) -> None:
    devices = cfg.trainer.get("devices", 1)
    strategy = str(cfg.trainer.get("strategy", ""))
    if devices not in (1, "1") or "ddp" in strategy:
        raise ConfigError(
            "The self-training driver runs its rounds in one process (the teacher labels "
            "between fits); use trainer=default (trainer.devices=1)."
        )


def _row(round_index: int, metrics: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"round": round_index}
    row.update(
        {
            key: report.get(key)
            for key in ("pseudo/kept", "pseudo/mask_rate", "pseudo/acc", "pseudo/teacher_acc")
        }
    )
    row.update({key: metrics.get(key) for key in ROUND_KEYS})
    row["best_ckpt"] = metrics.get("best_ckpt")
    return row


def rounds_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table of the rounds."""
    columns = (
        "round",
        "pseudo/kept",
        "pseudo/mask_rate",
        "pseudo/acc",
        "pseudo/teacher_acc",
        "val/acc",
        "test/acc",
    )

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def run_rounds(cfg: DictConfig) -> dict[str, Any]:
    """Train the teacher and ``self_training.rounds`` students; return (and write) the metrics."""
    start = time.perf_counter()
    settings = SelfTrainingSettings.from_config(cfg)
    check_config(cfg)
    _check_single_process(cfg)
    if "pseudo_labels" not in cfg.data:
        raise ConfigError(
            f"data={cfg.data.get('_target_')} cannot take the teacher's pseudo-labels; use "
            "data=fashion_mnist_self_training (a SelfTrainingData DataModule)."
        )
    if cfg.get("ckpt_path") is not None:
        raise ConfigError(
            "ckpt_path does not apply to self-training; run the same command again to "
            "continue an interrupted attempt (resume=auto)."
        )
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    skipped = carry_earlier_attempt(cfg, output_dir)
    if skipped is not None:
        return skipped
    initial = cfg.get("pretrained")
    rows: list[dict[str, Any]] = []
    metrics: dict[str, Any] = {}
    teacher: Path | None = None
    for round_index in range(settings.rounds + 1):
        round_dir = output_dir / f"round_{round_index}"
        pseudo_path, report = None, {}
        if teacher is not None:
            pseudo_path = round_dir / PSEUDO_FILE
            stats = _read_json(round_dir / STATS_FILE) if pseudo_path.is_file() else None
            if stats is None:
                labelling = round_config(cfg, round_dir, None, initial)
                stats = label_round(labelling, teacher, settings, pseudo_path)
            report = stats
            log.info(
                "round %d: the teacher kept %d pseudo-labels (mask rate %.3f, accuracy %s)",
                round_index,
                report["pseudo/kept"],
                report["pseudo/mask_rate"],
                report["pseudo/acc"],
            )
        metrics = resume.read_metrics(round_dir) or {}
        if not metrics:
            last = round_dir / resume.LAST_CHECKPOINT
            pretrained = str(teacher) if teacher and settings.student == "continue" else initial
            round_cfg = round_config(
                cfg, round_dir, pseudo_path, pretrained, last if last.is_file() else None
            )
            metrics = {**train_run(round_cfg), **report, "round": round_index}
            resume.write_json_atomic(round_dir / resume.METRICS, metrics)
        teacher = teacher_checkpoint(metrics, round_dir, str(cfg.get("eval_checkpoint", "best")))
        rows.append(_row(round_index, metrics, report))
        log.info(
            "round %d: val/acc %s test/acc %s",
            round_index,
            metrics.get("val/acc"),
            metrics.get("test/acc"),
        )
    # the last student's metrics, without what belongs to its round only
    final = {
        k: v
        for k, v in metrics.items()
        if k not in ("round", "teacher") and not k.startswith("pseudo/")
    }
    for row in rows:
        for key, value in row.items():
            if key not in ("round", "best_ckpt") and isinstance(value, int | float):
                final[f"round{row['round']}/{key}"] = value
    final.update(
        {
            "rounds": rows,
            "seed": cfg.seed,
            "git_sha": git_sha(Path(cfg.paths.root_dir)),
            "wall_time_s": round(time.perf_counter() - start, 2),
        }
    )
    (output_dir / "rounds.md").write_text(rounds_table(rows))
    resume.write_json_atomic(output_dir / resume.METRICS, final)
    log.info("self-training rounds:\n%s", rounds_table(rows))
    return final


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) else None


def main(cfg: DictConfig) -> float | None:
    """Run the rounds; a :class:`DeeprecipeError` is reported as in :func:`deeprecipe.train.main`
    (exit status 1, or ``error.txt`` and a NaN objective inside a multirun)."""
    try:
        metrics = run_rounds(cfg)
    except Exception as raised:
        error = user_error(raised)
        if error is None:
            raise
        log.error("%s: %s", type(error).__name__, error)
        if not (HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN):
            raise SystemExit(1) from None
        output_dir = Path(cfg.paths.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "error.txt").write_text(f"{type(error).__name__}: {error}\n")
        return math.nan
    value = metrics.get(cfg.objective)
    return float(value) if isinstance(value, int | float) else None


@hydra.main(version_base="1.3", config_path=str(CONF), config_name="config")
def entry(cfg: DictConfig) -> float | None:
    return main(cfg)


if __name__ == "__main__":
    entry()
