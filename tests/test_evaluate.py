"""Test-time augmentation, EMA (Polyak) weights, ensembles of checkpoints and snapshot ensembles."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import Tensor, nn
from torch.utils.data import DataLoader

from deeprecipe.callbacks import EMAEvaluation, SnapshotCheckpoint
from deeprecipe.errors import ConfigError
from deeprecipe.evaluate import tta_probabilities, tta_views
from deeprecipe.evaluate.ensemble import evaluate_ensemble, find_checkpoints, main
from deeprecipe.methods import Supervised
from deeprecipe.models import Backbone
from deeprecipe.schedules import constant, cosine_restarts

DIGITS = ("data=digits", "model=mlp", "model.hidden_dims=[32]", "aug=none")


def build_method(cfg):
    return instantiate(
        cfg.method,
        backbone=instantiate(cfg.model),
        optimizer=instantiate(cfg.optim),
        scheduler=instantiate(cfg.scheduler),
        augment=instantiate(cfg.aug),
    )


def quiet_trainer(**kwargs) -> L.Trainer:
    kwargs.setdefault("enable_checkpointing", False)
    return L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        **kwargs,
    )  # fmt: skip


def write_run_config(cfg, run_dir: Path) -> None:
    """What Hydra writes in a run dir: the composed config and the hydra node, apart."""
    (run_dir / ".hydra").mkdir(parents=True)
    user_keys = [key for key in cfg if key != "hydra"]
    OmegaConf.save(OmegaConf.masked_copy(cfg, user_keys), run_dir / ".hydra" / "config.yaml")
    OmegaConf.save({"hydra": {"runtime": {"cwd": str(run_dir)}}}, run_dir / ".hydra" / "hydra.yaml")


# ----------------------------------------------------------------------------------- TTA
class MirrorSymmetric(Backbone):
    """Features of x + mirror(x): the same for an image and its mirror image."""

    def __init__(self, in_chans: int, image_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_chans * image_size * image_size, 16)
        self.num_features = 16

    def forward_features(self, x: Tensor) -> Tensor:
        return self.linear((x + x.flip(-1)).flatten(1))


def digits_method(make_cfg, backbone: Backbone, tta: str) -> tuple[Supervised, object]:
    cfg = make_cfg(*DIGITS)
    method = Supervised(
        backbone,
        num_classes=10,
        in_chans=1,
        optimizer=partial(torch.optim.SGD, lr=0.1),
        scheduler=partial(constant),
        tta=tta,
    )
    return method, instantiate(cfg.data)


def test_tta_flip_on_a_flip_invariant_model_equals_plain(make_cfg):
    torch.manual_seed(0)
    method, datamodule = digits_method(make_cfg, MirrorSymmetric(1, 8), "flip")
    quiet_trainer(max_steps=5, limit_val_batches=1).fit(method, datamodule=datamodule)
    result = quiet_trainer().test(method, datamodule=datamodule, verbose=False)[0]
    assert result["test/acc_tta"] == result["test/acc"]
    x = torch.randn(6, 1, 8, 8)
    logits = method.eval()(x)
    averaged = tta_probabilities(method, x, logits, "flip", 2, torch.zeros(1, 1, 1, 1))
    assert torch.allclose(averaged, logits.softmax(dim=-1), atol=1e-6)


def test_tta_flip_crops_views_and_metrics(make_cfg):
    x = torch.ones(2, 1, 4, 4)
    views = tta_views(x, "flip_crops", 1, torch.full((1, 1, 1, 1), -3.0))
    assert len(views) == 9  # + the image itself: the ten-crop protocol
    top_left = views[1]
    assert top_left[0, 0, 0, 0] == -3.0 and top_left[0, 0, -1, -1] == 1.0
    bottom_right = views[7]
    assert bottom_right[0, 0, 0, 0] == 1.0 and bottom_right[0, 0, -1, -1] == -3.0
    torch.manual_seed(0)
    method, datamodule = digits_method(make_cfg, MirrorSymmetric(1, 8), "flip_crops")
    result = quiet_trainer(limit_test_batches=2).test(method, datamodule=datamodule)[0]
    assert 0.0 <= result["test/acc_tta"] <= 1.0 and "test/acc" in result
    with pytest.raises(ConfigError, match="method.tta='rotate'"):
        digits_method(make_cfg, MirrorSymmetric(1, 8), "rotate")


# ----------------------------------------------------------------------------------- EMA
class Counter(L.LightningModule):
    """One weight vector that SGD moves by exactly +1 per step: w_t = t after step t."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(3))

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        return -self.w.sum()  # gradient -1 for every entry

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=1.0)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(torch.zeros(64, 1), batch_size=1)


def test_ema_matches_the_closed_form():
    steps, decay = 20, 0.9
    callback = EMAEvaluation(decay=decay)
    quiet_trainer(max_steps=steps, callbacks=[callback]).fit(Counter())
    # ema_1 = w_1 = 1 (the first step copies); ema_t = decay ema_{t-1} + (1 - decay) t
    expected = decay ** (steps - 1) + sum(
        (1 - decay) * decay ** (steps - t) * t for t in range(2, steps + 1)
    )
    assert callback.updates == steps
    assert torch.allclose(callback.module.w, torch.full((3,), expected), rtol=1e-5)
    with pytest.raises(ConfigError, match="decay=1.0"):
        EMAEvaluation(decay=1.0)


def test_ema_is_evaluated_next_to_raw_weights_and_restored_from_checkpoints(make_cfg, tmp_path):
    cfg = make_cfg(*DIGITS)
    method, datamodule = build_method(cfg), instantiate(cfg.data)
    callback = EMAEvaluation(decay=0.5)
    trainer = quiet_trainer(max_steps=6, limit_val_batches=2, callbacks=[callback])
    trainer.fit(method, datamodule=datamodule)
    validated = trainer.validate(method, datamodule=datamodule, verbose=False)[0]
    assert {"val/acc", "val/acc_ema"} <= set(validated)
    raw = list(method.parameters())
    averaged = list(callback.module.parameters())
    assert not all(torch.equal(r, a) for r, a in zip(raw, averaged, strict=True))
    result = trainer.test(method, datamodule=datamodule, verbose=False)[0]
    # reference: the EMA copy's accuracy on the test split, computed directly
    callback.module.eval()
    correct = total = 0
    with torch.no_grad():
        for batch in datamodule.test_dataloader():
            x = method.prepare_images(batch.x, augment=False)
            correct += (callback.module(x).argmax(dim=-1) == batch.y).sum().item()
            total += len(batch.y)
    assert result["test/acc_ema"] == pytest.approx(correct / total)
    checkpoint = tmp_path / "ema.ckpt"
    trainer.save_checkpoint(checkpoint)
    reloaded = EMAEvaluation(decay=0.5)
    fresh = quiet_trainer(callbacks=[reloaded])
    restored = fresh.test(build_method(cfg), datamodule, ckpt_path=checkpoint, verbose=False)[0]
    assert all(
        torch.equal(r, a) for r, a in zip(reloaded.module.parameters(), averaged, strict=True)
    )
    assert restored["test/acc_ema"] == pytest.approx(result["test/acc_ema"])
    assert restored["test/acc"] == pytest.approx(result["test/acc"])


# ----------------------------------------------------------------------------- ensembles
def test_ensemble_of_two_copies_equals_the_single_model(make_cfg, tmp_path):
    cfg = make_cfg(*DIGITS)
    method, datamodule = build_method(cfg), instantiate(cfg.data)
    trainer = quiet_trainer(max_steps=8, limit_val_batches=0)
    trainer.fit(method, datamodule=datamodule)
    single = trainer.test(method, datamodule=datamodule, verbose=False)[0]["test/acc"]
    run_dir = tmp_path / "logs" / "run"
    write_run_config(cfg, run_dir)
    checkpoint = run_dir / "checkpoints" / "best-epoch000.ckpt"
    trainer.save_checkpoint(checkpoint)
    assert find_checkpoints(run_dir) == [checkpoint]
    result = evaluate_ensemble([checkpoint, checkpoint], device="cpu")
    member, ensemble = result["members"][0], result["ensemble"]
    assert member["acc"] == pytest.approx(single)
    assert ensemble["size"] == 2
    assert ensemble["acc"] == member["acc"] == result["members"][1]["acc"]
    assert ensemble["nll"] == pytest.approx(member["nll"])
    output = tmp_path / "ensemble.json"
    printed = main([str(run_dir), str(checkpoint), "--output", str(output), "--device", "cpu"])
    assert json.loads(output.read_text()) == printed
    assert printed["ensemble"]["acc"] == pytest.approx(single)


def test_snapshot_callback_writes_one_checkpoint_per_cycle(make_cfg, tmp_path):
    cfg = make_cfg(*DIGITS, "scheduler=cosine_restarts", "scheduler.cycles=3")
    method, datamodule = build_method(cfg), instantiate(cfg.data)
    run_dir = tmp_path / "run"
    write_run_config(cfg, run_dir)
    snapshots = SnapshotCheckpoint(dirpath=str(run_dir / "snapshots"))
    quiet_trainer(max_steps=12, limit_val_batches=0, callbacks=[snapshots]).fit(
        method, datamodule=datamodule
    )
    written = sorted(path.name for path in (run_dir / "snapshots").iterdir())
    assert written == ["snapshot-00.ckpt", "snapshot-01.ckpt", "snapshot-02.ckpt"]
    assert torch.load(run_dir / "snapshots" / written[0], weights_only=True)["global_step"] == 4
    result = evaluate_ensemble(find_checkpoints(run_dir / "snapshots"), device="cpu")
    assert result["ensemble"]["size"] == 3 and 0.0 <= result["ensemble"]["acc"] <= 1.0
    wrong = SnapshotCheckpoint(dirpath=str(tmp_path / "other"))
    with pytest.raises(ConfigError, match="scheduler=cosine_restarts"):
        quiet_trainer(max_steps=2, callbacks=[wrong]).fit(
            build_method(make_cfg(*DIGITS)), datamodule=datamodule
        )


def test_cosine_restarts_schedule():
    optimizer = torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=1.0)
    schedule = cosine_restarts(optimizer, total_steps=12, steps_per_epoch=4, cycles=3)
    factor = schedule.lr_lambdas[0]
    assert [factor(step) for step in (0, 4, 8)] == [1.0, 1.0, 1.0]  # each cycle restarts
    assert [round(factor(step), 4) for step in range(4)] == [1.0, 0.8536, 0.5, 0.1464]
    assert [factor.cycle_ended(n) for n in range(13)] == [None] * 4 + [0] + [None] * 3 + [1] + [
        None
    ] * 3 + [2]
    with pytest.raises(ConfigError, match="scheduler.cycles=20"):
        cosine_restarts(optimizer, total_steps=12, steps_per_epoch=4, cycles=20)


def test_cli_run_writes_plain_tta_and_ema_accuracies(tmp_path):
    """One `run.py` with TTA and EMA on: metrics.json holds all three accuracies of val and test."""
    import json

    from conftest import QUIET, run_cli

    result = run_cli(
        f"paths.log_dir={tmp_path}/logs",
        "data=digits",
        "model=mlp",
        "aug=crop",
        "callbacks=ema",
        "method.tta=flip_crops",
        "scheduler=constant",
        "trainer.max_epochs=2",
        *QUIET,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (metrics_file,) = (tmp_path / "logs").rglob("metrics.json")
    metrics = json.loads(metrics_file.read_text())
    for split in ("val", "test"):
        for name in ("acc", "acc_tta", "acc_ema"):
            assert 0.0 <= metrics[f"{split}/{name}"] <= 1.0, (split, name, metrics)
    # after 2 epochs the three differ; equal values would mean one copies another
    assert len({metrics["test/acc"], metrics["test/acc_tta"], metrics["test/acc_ema"]}) > 1, metrics
