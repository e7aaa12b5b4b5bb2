"""Self-training in rounds: pseudo-labels from the teacher, the union the student trains on, the
student's loss, and the round driver end to end (per-round metrics, resuming an attempt)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from hydra.utils import instantiate
from omegaconf import open_dict
from torch import Tensor, nn

from conftest import QUIET, ROOT
from deeprecipe.batches import Labeled, PseudoLabeled
from deeprecipe.data import SelfTrainingDigitsDataModule
from deeprecipe.data.self_training import PseudoLabels, save_pseudo_labels
from deeprecipe.errors import ConfigError, CorruptDataError
from deeprecipe.methods import SelfTraining
from deeprecipe.self_training import (
    PSEUDO_FILE,
    SelfTrainingSettings,
    load_method,
    round_config,
    run_rounds,
    select_pseudo_labels,
    teacher_probabilities,
)

# digits through the suite's configs, as self-training data with 5 labels per class
DIGITS = [
    "+experiment=self_training_fashion",
    "data=digits",
    "data._target_=deeprecipe.data.SelfTrainingDigitsDataModule",
    "data.labels_per_class=5",
    "+data.pseudo_labels=null",
    "+data.min_epoch_size=0",
    "data.batch_size=32",
    "model=mlp",
    "model.hidden_dims=[32]",
    "aug=none",
    "trainer.max_epochs=1",
    "trainer.precision=32-true",
    "trainer.log_every_n_steps=1",
    *QUIET,
]

# digits' 1,797 images less the test (20%: 359) and validation (10% of the rest: 143) splits
# and the 50 labelled ones
N_UNLABELED = 1797 - 359 - 143 - 50


# ----------------------------------------------------------------------------- labelling
class HalfMeans(nn.Module):
    """A toy backbone: the mean of the left and of the right half of the image."""

    num_features = 2

    def forward_features(self, x: Tensor) -> Tensor:
        half = x.shape[-1] // 2
        return torch.stack(
            [x[..., :half].mean(dim=(1, 2, 3)), x[..., half:].mean(dim=(1, 2, 3))], 1
        )


class Mirror(nn.Module):
    """An augmentation that changes what :class:`HalfMeans` sees: the teacher must not use it."""

    def forward(self, x: Tensor) -> Tensor:
        return x.flip(-1)


def toy_teacher() -> SelfTraining:
    method = SelfTraining(
        HalfMeans(),  # type: ignore[arg-type]
        num_classes=3,
        in_chans=1,
        optimizer=partial(torch.optim.SGD, lr=0.1),
        scheduler=None,  # type: ignore[arg-type]
        augment=Mirror(),
        head_dropout=0.5,  # student noise: off in eval mode, where the teacher labels
    )
    method.normalize.set_stats((0.5,), (0.25,))
    with torch.no_grad():
        method.head.weight.copy_(torch.tensor([[4.0, 0.0], [0.0, 4.0], [-2.0, -2.0]]))
        method.head.bias.copy_(torch.tensor([0.0, 0.5, 1.0]))
    return method


def test_pseudo_labels_come_from_the_teacher():
    images = torch.randint(0, 256, (20, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    images = images.to(torch.uint8)
    probabilities = teacher_probabilities(toy_teacher(), images, batch_size=7)
    # by hand: normalize, half means, the linear head, softmax
    x = (images.double() / 255 - 0.5) / 0.25
    left, right = x[..., :2].mean(dim=(1, 2, 3)), x[..., 2:].mean(dim=(1, 2, 3))
    logits = torch.stack([4 * left, 4 * right + 0.5, -2 * left - 2 * right + 1.0], dim=1)
    expected = torch.softmax(logits, dim=1)
    assert torch.allclose(probabilities.double(), expected, atol=1e-5)
    labels = select_pseudo_labels(probabilities, threshold=0.6)
    kept = [i for i in range(20) if expected[i].max() >= 0.6]
    assert labels.indices.tolist() == kept
    assert torch.equal(labels.targets.argmax(dim=1), expected[kept].argmax(dim=1))


def test_select_pseudo_labels_by_hand():
    probabilities = torch.tensor([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25], [0.1, 0.1, 0.8]])
    hard = select_pseudo_labels(probabilities, threshold=0.5)
    assert hard.indices.tolist() == [0, 2]
    assert hard.targets.tolist() == [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    everything = select_pseudo_labels(probabilities)
    assert everything.indices.tolist() == [0, 1, 2]
    assert everything.targets.argmax(dim=1).tolist() == [0, 0, 2]
    soft = select_pseudo_labels(probabilities, threshold=0.5, soft=True, temperature=0.5)
    squared = probabilities[[0, 2]] ** 2  # T = 0.5: p^2, renormalized
    assert torch.allclose(soft.targets, squared / squared.sum(dim=1, keepdim=True))
    plain = select_pseudo_labels(probabilities, soft=True)
    assert torch.allclose(plain.targets, probabilities)


# ---------------------------------------------------------------------------------- data
def digits(**kwargs) -> SelfTrainingDigitsDataModule:
    data = SelfTrainingDigitsDataModule(labels_per_class=5, batch_size=16, **kwargs)
    data.setup("fit")
    return data


def test_union_is_labelled_plus_kept_pseudo_labels(tmp_path):
    base = digits()
    assert base.labeled is not None and base.unlabeled is not None and base.train is not None
    assert torch.bincount(base.labeled.labels, minlength=10).tolist() == [5] * 10
    assert len(base.train) == 50 and not base.train.is_pseudo.any()
    indices = torch.tensor([3, 10, 11, 500])
    targets = torch.eye(10)[[1, 2, 3, 4]]
    targets[3] = torch.full((10,), 0.1)  # a soft one
    path = tmp_path / PSEUDO_FILE
    save_pseudo_labels(path, PseudoLabels(indices, targets), base)
    union = digits(pseudo_labels=str(path))
    assert union.train is not None and union.unlabeled is not None
    assert len(union.train) == 50 + 4 and int(union.train.is_pseudo.sum()) == 4
    pseudo = union.train.is_pseudo
    assert torch.equal(union.train.images[pseudo], base.unlabeled.images[indices])
    assert torch.equal(union.train.targets[pseudo], targets)
    assert torch.equal(union.train.labels[pseudo], base.unlabeled.labels[indices])  # hidden
    assert torch.equal(union.train.images[~pseudo], base.labeled.images)
    assert torch.equal(union.train.targets[~pseudo].argmax(dim=1), base.labeled.labels)
    batch = next(iter(union.train_dataloader()))
    assert isinstance(batch, PseudoLabeled) and batch.target.shape == (16, 10)
    assert isinstance(next(iter(union.val_dataloader())), Labeled)
    tiled = digits(pseudo_labels=str(path), min_epoch_size=500)
    assert tiled.train is not None and len(tiled.train) == 10 * 54  # whole copies


def test_pseudo_label_files_are_checked(tmp_path):
    base = digits()
    path = tmp_path / PSEUDO_FILE
    save_pseudo_labels(path, PseudoLabels(torch.tensor([0, 1]), torch.eye(10)[:2]), base)
    with pytest.raises(ConfigError, match="was made for"):
        SelfTrainingDigitsDataModule(labels_per_class=6, pseudo_labels=str(path)).setup("fit")
    save_pseudo_labels(path, PseudoLabels(torch.tensor([0, 0]), torch.eye(10)[:2]), base)
    with pytest.raises(CorruptDataError, match="distinct indices"):
        digits(pseudo_labels=str(path))
    path.write_bytes(b"not a torch file")
    with pytest.raises(CorruptDataError, match="cannot be read"):
        digits(pseudo_labels=str(path))


# -------------------------------------------------------------------------------- method
def test_student_loss_weights_pseudo_labels(make_cfg):
    cfg = make_cfg(*DIGITS, "method.pseudo_weight=0.5")
    method = instantiate(
        cfg.method,
        backbone=instantiate(cfg.model),
        optimizer=instantiate(cfg.optim),
        scheduler=instantiate(cfg.scheduler),
        augment=None,
    )
    nn.init.normal_(method.head.weight)
    method.eval()  # no dropout: the same logits in the step and in the reference
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1, 8, 8, generator=generator)
    target = torch.tensor(
        [[1.0] + [0.0] * 9, [0.0, 1.0] + [0.0] * 8, [0.1] * 10, [0.5] * 2 + [0] * 8]
    )
    is_pseudo = torch.tensor([False, False, True, True])
    with warnings.catch_warnings():  # self.log outside a trainer
        warnings.simplefilter("ignore")
        loss = method.training_step(PseudoLabeled(x, target, torch.arange(4), is_pseudo), 0)
    log_p = torch.log_softmax(method(x).double(), dim=1)
    ce = [-(target[i].double() * log_p[i]).sum() for i in range(4)]
    expected = (ce[0] + ce[1] + 0.5 * ce[2] + 0.5 * ce[3]) / 3.0
    assert torch.allclose(loss.double(), expected, atol=1e-5)


def test_student_fast_dev_run(make_cfg, tmp_path):
    cfg = make_cfg(*DIGITS, "method.head_dropout=0.3")
    base = digits()
    path = tmp_path / PSEUDO_FILE
    save_pseudo_labels(
        path, PseudoLabels(torch.arange(200), torch.eye(10)[torch.arange(200) % 10]), base
    )
    with open_dict(cfg):
        cfg.data.pseudo_labels = str(path)
    method = instantiate(
        cfg.method,
        backbone=instantiate(cfg.model),
        optimizer=instantiate(cfg.optim),
        scheduler=instantiate(cfg.scheduler),
        augment=instantiate(cfg.aug),
    )
    trainer = L.Trainer(accelerator="cpu", fast_dev_run=2, logger=False, enable_progress_bar=False)
    before = [p.detach().clone() for p in method.parameters()]
    trainer.fit(method, datamodule=instantiate(cfg.data))
    assert any(not torch.equal(b, a) for b, a in zip(before, method.parameters(), strict=True))
    metrics = trainer.callback_metrics
    assert 0.0 < metrics["train/pseudo_share"].item() < 1.0
    assert 0.0 <= metrics["train/pseudo_acc"].item() <= 1.0
    assert 0.0 <= metrics["val/acc"].item() <= 1.0


# -------------------------------------------------------------------------------- driver
def test_settings_are_checked(make_cfg):
    assert (
        SelfTrainingSettings.from_config(make_cfg("+experiment=self_training_fashion")).rounds == 3
    )
    with pytest.raises(ConfigError, match="experiment=self_training_fashion"):
        SelfTrainingSettings.from_config(make_cfg())
    for override, match in (
        ("self_training.student=warm", "fresh"),
        ("self_training.threshold=1.5", "threshold"),
        ("self_training.rounds=-1", "rounds"),
        ("+self_training.epochs=3", "Unknown self_training keys"),
    ):
        with pytest.raises(ConfigError, match=match):
            SelfTrainingSettings.from_config(
                make_cfg("+experiment=self_training_fashion", override)
            )
    with pytest.raises(ConfigError, match="one process"):
        run_rounds(make_cfg(*DIGITS, "trainer=ddp_cpu"))
    with pytest.raises(ConfigError, match="data=fashion_mnist_self_training"):
        run_rounds(make_cfg("+experiment=self_training_fashion", "data=fashion_mnist"))


def test_two_rounds_end_to_end(make_cfg):
    cfg = make_cfg(*DIGITS, "self_training.rounds=2", "self_training.threshold=0.0")
    metrics = run_rounds(cfg)
    run_dir = Path(cfg.paths.output_dir)
    rows = metrics["rounds"]
    assert [row["round"] for row in rows] == [0, 1, 2]
    for index in range(3):
        recorded = json.loads((run_dir / f"round_{index}" / "metrics.json").read_text())
        assert recorded["round"] == index and rows[index]["test/acc"] == recorded["test/acc"]
        assert metrics[f"round{index}/test/acc"] == recorded["test/acc"]
    assert metrics["test/acc"] == rows[2]["test/acc"]  # the last student's
    assert rows[0]["pseudo/mask_rate"] is None
    for row in rows[1:]:  # threshold 0 keeps every unlabelled image
        assert row["pseudo/mask_rate"] == 1.0 and row["pseudo/kept"] == N_UNLABELED
        assert row["pseudo/acc"] == pytest.approx(row["pseudo/teacher_acc"])
        assert metrics[f"round{row['round']}/pseudo/acc"] == row["pseudo/acc"]
    assert "| round |" in (run_dir / "rounds.md").read_text()
    assert json.loads((run_dir / "metrics.json").read_text())["rounds"] == rows

    # round 1's labels are round 0's best checkpoint labelling the unlabelled split
    round_cfg = round_config(cfg, run_dir / "round_1", None, None)
    teacher = load_method(round_cfg, Path(rows[0]["best_ckpt"]))
    data = instantiate(round_cfg.data)
    data.setup("fit")
    expected = teacher_probabilities(teacher, data.unlabeled.images, 64).argmax(dim=1)
    saved = torch.load(run_dir / "round_1" / PSEUDO_FILE, weights_only=True)
    assert torch.equal(saved["indices"], torch.arange(len(expected)))
    assert torch.equal(saved["targets"].argmax(dim=1), expected)
    accuracy = (expected == data.unlabeled.labels).double().mean().item()
    assert rows[1]["pseudo/acc"] == pytest.approx(accuracy)
    # and the student trained on the union: 50 labelled + every unlabelled image
    with open_dict(round_cfg):
        round_cfg.data.pseudo_labels = str(run_dir / "round_1" / PSEUDO_FILE)
    union = instantiate(round_cfg.data)
    union.setup("fit")
    assert len(union.train) == 50 + N_UNLABELED


def test_rerun_continues_an_interrupted_attempt(make_cfg, tmp_path):
    cfg = make_cfg(*DIGITS, "self_training.rounds=1")
    first = tmp_path / "runs" / "self_training_fashion" / "first"
    second = first.with_name("second")

    def attempt(folder: Path) -> dict:
        with open_dict(cfg):
            cfg.paths.output_dir = str(folder)
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "overrides.yaml").write_text(
            yaml.safe_dump(list(cfg.hydra.overrides.task))
        )
        return run_rounds(cfg)

    attempt(first)
    # cut off during round 1: after its labels and last checkpoint, before its metrics
    (first / "metrics.json").unlink()
    (first / "round_1" / "metrics.json").unlink()
    metrics = attempt(second)
    assert (second / "resumed_from.txt").read_text().strip() == str(first)
    best = Path(json.loads((first / "round_0" / "metrics.json").read_text())["best_ckpt"])
    carried = second / "round_0" / "checkpoints" / best.name
    assert os.stat(carried).st_ino == os.stat(best).st_ino  # taken over, not trained again
    assert (second / "round_1" / "resumed_from.txt").is_file()  # resumed from its last.ckpt
    assert [row["round"] for row in metrics["rounds"]] == [0, 1]
    assert metrics["rounds"][1]["pseudo/kept"] is not None


@pytest.mark.slow
def test_cli_runs_the_rounds(tmp_path):
    """``python -m deeprecipe.self_training``: the rounds end to end, and a clear error without
    the self-training settings."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    command = [sys.executable, "-m", "deeprecipe.self_training", f"paths.log_dir={tmp_path}"]
    digits = [o for o in DIGITS if o != "trainer.precision=32-true"]
    run_py = [sys.executable, str(ROOT / "run.py"), f"paths.log_dir={tmp_path}"]
    result = subprocess.run(  # run.py hands a self-training config over to the round driver
        [*run_py, *digits, "self_training.rounds=1", "data.min_epoch_size=300"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs" / "self_training_fashion").iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [row["round"] for row in metrics["rounds"]] == [0, 1]
    assert (run_dir / "round_1" / PSEUDO_FILE).is_file()
    result = subprocess.run(
        [*command, *QUIET], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 1
    assert "ConfigError" in result.stderr and "+experiment=self_training_fashion" in result.stderr


def test_teacher_checkpoint_follows_eval_checkpoint(tmp_path):
    """The next round's teacher is the round's best checkpoint, or its last with
    eval_checkpoint=last (the weights the round's reported metrics then come from)."""
    from deeprecipe import resume
    from deeprecipe.self_training import teacher_checkpoint

    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    best = checkpoints / "best-epoch003.ckpt"
    last = tmp_path / resume.LAST_CHECKPOINT
    best.write_bytes(b"b")
    last.write_bytes(b"l")
    metrics = {"best_ckpt": str(best)}
    assert teacher_checkpoint(metrics, tmp_path) == best
    assert teacher_checkpoint(metrics, tmp_path, "both") == best
    assert teacher_checkpoint(metrics, tmp_path, "last") == last
    assert teacher_checkpoint({}, tmp_path) == last
