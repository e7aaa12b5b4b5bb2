"""End to end through `python run.py`, as a user runs it (subprocesses)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from conftest import QUIET, requires_fashion, run_cli

TINY = [
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=8",
    "+trainer.limit_val_batches=2",
    "+trainer.limit_test_batches=2",
    *QUIET,
]


def only(paths: list[Path]) -> Path:
    assert len(paths) == 1, paths
    return paths[0]


@requires_fashion
def test_default_run_writes_metrics_plot_and_offline_wandb(tmp_path):
    env = {"HOME": str(tmp_path), "WANDB_API_KEY": "", "WANDB_MODE": ""}
    result = run_cli(f"paths.log_dir={tmp_path}/logs", "logger=wandb", *TINY, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = only(
        list((tmp_path / "logs" / "runs" / "supervised_resnet9_fashion_mnist").iterdir())
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in (
        "val/acc",
        "val/loss",
        "test/acc",
        "test/acc_top5",
        "wall_time_s",
        "train/throughput",
        "params",
        "best_ckpt",
        "seed",
        "git_sha",
    ):
        assert key in metrics, key
    assert 0.0 <= metrics["test/acc"] <= 1.0 and metrics["train/throughput"] > 0
    assert metrics["params"] > 100_000 and metrics["seed"] == 0
    assert Path(metrics["best_ckpt"]).is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "plots" / "learning_curves.png").stat().st_size > 10_000
    curves = json.loads((run_dir / "plots" / "learning_curves.json").read_text())
    assert len(curves["loss"]) == 8  # one point per training step
    assert [row["epoch"] for row in curves["epochs"]] == [0.0]
    assert {"train/acc", "val/acc"} <= set(curves["epochs"][0])
    assert (run_dir / "csv" / "metrics.csv").is_file()
    assert list((run_dir / "wandb").glob("offline-run-*")), "W&B did not fall back to offline"


def test_experiment_override(tmp_path):
    result = run_cli(
        f"paths.log_dir={tmp_path}",
        "+experiment=digits_mlp",
        "trainer.max_epochs=2",
        *QUIET,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = only(list((tmp_path / "runs" / "digits_mlp").iterdir()))
    config = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    assert config["model"]["hidden_dims"] == [128]
    assert json.loads((run_dir / "metrics.json").read_text())["test/acc"] > 0.5
    curves = json.loads((run_dir / "plots" / "learning_curves.json").read_text())
    assert [row["epoch"] for row in curves["epochs"]] == [0.0, 1.0]


def test_multirun_writes_summary_with_seed_mean_std(tmp_path):
    result = run_cli(
        "-m",
        f"paths.log_dir={tmp_path}",
        "+experiment=digits_mlp",
        "trainer.max_epochs=1",
        "seed=0,1",
        *QUIET,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sweep_dir = only(list((tmp_path / "multiruns" / "digits_mlp").iterdir()))
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()) == [
        "0",
        "1",
    ]
    lines = (sweep_dir / "summary.csv").read_text().splitlines()
    assert lines[0].startswith("job,seed,status,val/")
    assert len(lines) == 3 and all(",ok," in line for line in lines[1:])
    markdown = (sweep_dir / "summary.md").read_text()
    assert "Mean ± std over seeds" in markdown and " ± " in markdown.split("Mean ± std")[1]


def test_multirun_job_crash_is_reported_when_it_happens(tmp_path):
    # a TypeError from inside a constructor is not a user error we know: Hydra holds it until the
    # sweep ends, so the job's own log and error.txt must name it at once
    result = run_cli(
        "-m",
        f"paths.log_dir={tmp_path}",
        "+experiment=digits_mlp",
        "+method.bogus_option=1",
        "seed=0,1",
        *QUIET,
        cwd=tmp_path,
    )
    assert result.returncode != 0
    sweep_dir = only(list((tmp_path / "multiruns" / "digits_mlp").iterdir()))
    for job in ("0", "1"):
        error = (sweep_dir / job / "error.txt").read_text()
        assert "Traceback" in error and "bogus_option" in error
    assert result.stderr.count("This job failed") + result.stdout.count("This job failed") == 2


def test_optuna_random_sweep(tmp_path):
    result = run_cli(
        "-m",
        f"paths.log_dir={tmp_path}",
        "+experiment=digits_mlp",
        "+sweep=random_lr_wd",
        "hydra.sweeper.n_trials=2",
        "trainer.max_epochs=1",
        "logger=wandb",
        *QUIET,
        cwd=tmp_path,
        env={"WANDB_MODE": "offline", "HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sweep_dir = only(list((tmp_path / "multiruns" / "digits_mlp").iterdir()))
    rows = (sweep_dir / "summary.csv").read_text().splitlines()
    assert rows[0].startswith("job,optim.lr,optim.weight_decay,status") and len(rows) == 3
    # the same table as a W&B table, in an offline run of the sweep's group
    (table_file,) = (sweep_dir / "wandb").glob("offline-run-*/files/media/table/sweep/*.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == rows[0].split(",")
    assert [row[0] for row in table["data"]] == [0, 1]
    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert 0.0 < best["best_value"] <= 1.0
    for job in ("0", "1"):
        lr = float(
            yaml.safe_load((sweep_dir / job / ".hydra" / "overrides.yaml").read_text())[0].split(
                "="
            )[1]
        )
        assert 1e-4 <= lr <= 1e-1


def test_unknown_option_lists_valid_ones(tmp_path):
    result = run_cli("model=resnet5", cwd=tmp_path)
    assert result.returncode != 0
    assert "Could not find 'model/resnet5'" in result.stderr
    assert "Available options in 'model'" in result.stderr and "resnet9" in result.stderr


def test_missing_dataset_names_the_fix(tmp_path):
    result = run_cli(
        f"paths.log_dir={tmp_path}", f"data.root={tmp_path}/nowhere", *QUIET, cwd=tmp_path
    )
    assert result.returncode == 1
    assert (
        "DataNotFoundError" in result.stderr
        and "apt-get install dataset-fashion-mnist" in result.stderr
    )
    assert "Traceback" not in result.stderr


def test_nan_loss_stops_and_keeps_checkpoints(tmp_path):
    result = run_cli(
        f"paths.log_dir={tmp_path}",
        "+experiment=digits_mlp",
        "trainer.max_epochs=3",
        "+callbacks.poison._target_=nan_helpers.PoisonWeightsAt",
        "+callbacks.poison.step=30",
        *QUIET,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "became NaN at step 30" in result.stderr and "Lower the learning rate" in result.stderr
    run_dir = only(list((tmp_path / "runs" / "digits_mlp").iterdir()))
    assert not (run_dir / "metrics.json").exists()
    saved = list((run_dir / "checkpoints").glob("best-*.ckpt"))
    assert saved, "the checkpoint of the finished epoch was lost"
    state = torch.load(saved[0], map_location="cpu", weights_only=False)["state_dict"]
    assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())
    assert (run_dir / "plots" / "learning_curves.png").is_file()


def test_negative_learning_rate_rejected_before_training(tmp_path):
    result = run_cli(
        f"paths.log_dir={tmp_path}", "+experiment=digits_mlp", "optim.lr=-0.1", *QUIET, cwd=tmp_path
    )
    assert result.returncode == 1
    assert "optim.lr=-0.1" in result.stderr and "Traceback" not in result.stderr


def test_config_error_inside_a_constructor_is_clean(tmp_path):
    # Hydra wraps exceptions raised by targets; the user still gets our message alone
    result = run_cli(
        f"paths.log_dir={tmp_path}", "+experiment=digits_mlp", "data.batch_size=0", cwd=tmp_path
    )
    assert result.returncode == 1
    assert "data.batch_size=0" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
@requires_fashion
def test_default_recipe_learns_in_one_short_epoch(tmp_path):
    """`make test-full` only: 100 steps of the default recipe already clear 80% test accuracy."""
    result = run_cli(
        f"paths.log_dir={tmp_path}",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=100",
        *QUIET,
        cwd=tmp_path,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = only(list((tmp_path / "runs" / "supervised_resnet9_fashion_mnist").iterdir()))
    assert json.loads((run_dir / "metrics.json").read_text())["test/acc"] > 0.8
