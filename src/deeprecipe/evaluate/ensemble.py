"""Model ensembles after training: average the predicted class probabilities of N checkpoints.

    python -m deeprecipe.evaluate.ensemble logs/multiruns/NAME/DATE        # every job of a sweep
    python -m deeprecipe.evaluate.ensemble RUN_DIR/snapshots               # a snapshot ensemble
    python -m deeprecipe.evaluate.ensemble RUN_A RUN_B x.ckpt --output ensemble.json

Each argument is a checkpoint, a run dir (its best checkpoint), a folder of checkpoints (all of
them, e.g. the snapshots of ``callbacks=snapshots``) or a multirun dir (the best checkpoint of
every job that did not fail). Each member is rebuilt from the ``.hydra/config.yaml`` of the run
dir that holds its checkpoint, so members may differ in model, method or recipe; all are
evaluated on the test split, which must be the same for all. Prints each member's and the
ensemble's test accuracy and negative log-likelihood and writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from deeprecipe.checkpoint_io import load_checkpoint
from deeprecipe.errors import CheckpointError, ConfigError, DataNotFoundError
from deeprecipe.methods.base import BaseMethod
from deeprecipe.train import user_error

log = logging.getLogger(__name__)

CONFIG = Path(".hydra", "config.yaml")


def is_run_dir(folder: Path) -> bool:
    return (folder / CONFIG).is_file()


def best_checkpoint(run_dir: Path) -> Path:
    """The run's best checkpoint: ``best_ckpt`` of its metrics.json, else checkpoints/best*."""
    metrics = run_dir / "metrics.json"
    if metrics.is_file():
        recorded = json.loads(metrics.read_text()).get("best_ckpt")
        if recorded and Path(recorded).is_file():
            return Path(recorded)
    found = sorted((run_dir / "checkpoints").glob("best*.ckpt"))
    if len(found) != 1:
        raise DataNotFoundError(
            f"{run_dir} has {len(found)} best*.ckpt checkpoints in checkpoints/ and no usable "
            "best_ckpt in metrics.json; pass the checkpoint file to use instead."
        )
    return found[0]


def find_checkpoints(path: Path) -> list[Path]:
    """The checkpoints an argument names (see the module docstring)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataNotFoundError(f"{path} does not exist.")
    if is_run_dir(path):
        return [best_checkpoint(path)]
    checkpoints = sorted(path.glob("*.ckpt"))
    if checkpoints:
        return checkpoints
    jobs = sorted(
        (job for job in path.iterdir() if is_run_dir(job)),
        key=lambda job: (not job.name.isdigit(), int(job.name) if job.name.isdigit() else 0),
    )
    failed = [job for job in jobs if (job / "error.txt").exists()]
    for job in failed:
        log.warning(
            "skipping %s: the job failed (%s)", job, (job / "error.txt").read_text().strip()
        )
    checkpoints = [best_checkpoint(job) for job in jobs if job not in failed]
    if not checkpoints:
        raise DataNotFoundError(
            f"{path} holds no checkpoint, run dir (with {CONFIG}) or multirun job dirs."
        )
    return checkpoints


def run_config(checkpoint: Path) -> DictConfig:
    """The composed config of the run that wrote ``checkpoint`` (nearest ``.hydra`` above it).

    ``${hydra:...}`` interpolations resolve only inside a Hydra app, so the paths that use them
    get the run's values: the working directory it started in and its run dir.
    """
    for folder in checkpoint.resolve().parents:
        if is_run_dir(folder):
            cfg = OmegaConf.load(folder / CONFIG)
            assert isinstance(cfg, DictConfig)
            if "paths" in cfg:
                hydra_file = folder / ".hydra" / "hydra.yaml"
                if hydra_file.is_file():
                    cfg.paths.root_dir = OmegaConf.load(hydra_file).hydra.runtime.cwd
                cfg.paths.output_dir = str(folder)
            return cfg
    raise DataNotFoundError(
        f"No run dir with {CONFIG} above {checkpoint}; the ensemble rebuilds each model from the "
        "config of the run that trained it."
    )


def load_member(checkpoint: Path, cfg: DictConfig) -> BaseMethod:
    """The method of ``cfg`` with the weights of ``checkpoint``, in eval mode on the CPU."""
    method = instantiate(
        cfg.method,
        backbone=instantiate(cfg.model),
        optimizer=instantiate(cfg.optim),
        scheduler=instantiate(cfg.scheduler),
        augment=instantiate(cfg.aug),
    )
    if not isinstance(method, BaseMethod):
        raise ConfigError(f"{checkpoint}: method {cfg.method._target_} is not a classifier.")
    state = load_checkpoint(checkpoint, "checkpoint")  # CheckpointError when corrupt
    if not isinstance(state, dict) or not isinstance(state.get("state_dict"), dict):
        raise CheckpointError(f"{checkpoint} is not a Lightning checkpoint of this suite.")
    method.load_state_dict(state["state_dict"])
    return method.eval()


@torch.inference_mode()
def predict(method: BaseMethod, loader: Any, device: torch.device) -> tuple[Tensor, Tensor]:
    """Class probabilities (N, K) and labels (N,) over a loader of ``Labeled`` batches."""
    method.to(device)
    probabilities, labels = [], []
    for batch in loader:
        x = method.prepare_images(batch.x.to(device), augment=False)  # (B, C, H, W)
        probabilities.append(method(x).float().softmax(dim=-1).cpu())  # (B, K)
        labels.append(batch.y)
    method.cpu()
    return torch.cat(probabilities), torch.cat(labels)


def scores(probabilities: Tensor, labels: Tensor) -> dict[str, float]:
    """Accuracy and mean negative log-likelihood of probabilities (N, K) for labels (N,)."""
    accuracy = (probabilities.argmax(dim=-1) == labels).float().mean().item()
    nll = F.nll_loss(probabilities.clamp_min(1e-12).log(), labels).item()
    return {"acc": accuracy, "nll": nll}


def evaluate_ensemble(checkpoints: Sequence[Path], device: str | None = None) -> dict[str, Any]:
    """Each member's and the ensemble's test scores; the ensemble averages probabilities."""
    if not checkpoints:
        raise ConfigError("The ensemble needs at least one checkpoint.")
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    loaders: dict[str, Any] = {}  # one test loader per distinct data config
    reference: Tensor | None = None
    total: Tensor | None = None
    members: list[dict[str, Any]] = []
    for checkpoint in checkpoints:
        cfg = run_config(checkpoint)
        data_key = json.dumps(OmegaConf.to_container(cfg.data, resolve=True), sort_keys=True)
        if data_key not in loaders:
            datamodule = instantiate(cfg.data)
            datamodule.setup("test")
            loaders[data_key] = datamodule.test_dataloader()
        probabilities, labels = predict(load_member(checkpoint, cfg), loaders[data_key], target)
        if reference is None:
            reference = labels
        elif not torch.equal(reference, labels):
            raise ConfigError(
                f"{checkpoint} was trained on data whose test split differs from the first "
                "member's; ensemble only models evaluated on the same test set."
            )
        total = probabilities if total is None else total + probabilities
        members.append({"checkpoint": str(checkpoint), **scores(probabilities, labels)})
    assert total is not None and reference is not None
    ensemble = scores(total / len(members), reference)
    return {
        "split": "test",
        "samples": len(reference),
        "members": members,
        "mean_member_acc": math.fsum(m["acc"] for m in members) / len(members),
        "ensemble": {"size": len(members), **ensemble},
    }


def report(result: dict[str, Any]) -> str:
    """A plain-text table of :func:`evaluate_ensemble`'s result."""
    lines = [f"{'member':>8}  {'acc':>7}  {'nll':>7}  checkpoint"]
    for index, member in enumerate(result["members"]):
        lines.append(
            f"{index:>8}  {member['acc']:7.4f}  {member['nll']:7.4f}  {member['checkpoint']}"
        )
    ensemble = result["ensemble"]
    lines.append(
        f"{'ensemble':>8}  {ensemble['acc']:7.4f}  {ensemble['nll']:7.4f}  "
        f"({ensemble['size']} members, mean member acc {result['mean_member_acc']:.4f}, "
        f"{result['samples']} test samples)"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m deeprecipe.evaluate.ensemble",
        description="Average the predicted probabilities of checkpoints on the test split.",
    )
    parser.add_argument(
        "paths", nargs="+", type=Path, help="checkpoints, run dirs, checkpoint folders, multiruns"
    )
    parser.add_argument("--output", type=Path, default=Path("ensemble.json"), help="JSON result")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if present)")
    args = parser.parse_args(argv)
    checkpoints = [checkpoint for path in args.paths for checkpoint in find_checkpoints(path)]
    result = evaluate_ensemble(checkpoints, args.device)
    print(report(result))
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {args.output}")
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        main()
    except Exception as raised:
        error = user_error(raised)
        if error is None:
            raise
        raise SystemExit(f"{type(error).__name__}: {error}") from None
