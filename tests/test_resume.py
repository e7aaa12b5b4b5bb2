"""Fault tolerance: kill and resume exactly, skip finished multirun jobs, atomic checkpoints.

The reference of every resume test is an *uninterrupted* run of the same config and seed: a
resumed run must reach identical final metrics (deterministic mode, CPU). In-process tests
interrupt with an exception after N steps; the slow CLI tests SIGKILL `python run.py` and run the
very same command again.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

import deeprecipe.train as train
from conftest import CONF, QUIET, ROOT, run_cli, tiny_char_lstm
from deeprecipe import resume
from deeprecipe.checkpoint_io import AtomicCheckpointIO, atomic_torch_save
from deeprecipe.errors import CheckpointError
from deeprecipe.loggers import wandb as wandb_logger
from deeprecipe.sweep_summary import summarize
from kill_helpers import Interrupted, RaiseAfterSteps

# 3 epochs of 20 steps on the digits, with random augmentation and dropout (so that the random
# stream matters), and a step checkpoint every 7 steps (so that a kill at step 30 resumes from
# the middle of epoch 1, step 28)
BASE = [
    "+experiment=digits_mlp",
    "trainer.deterministic=true",
    "aug=standard",
    "aug.crop.padding=1",
    "model.dropout=0.2",
    *QUIET,
]
OVERRIDES = [*BASE, "trainer.max_epochs=3", "callbacks.step_checkpoint.every_n_train_steps=7"]
COMPARED_PREFIXES = ("val/", "test/")


def final_numbers(metrics: dict) -> dict:
    keys = [k for k in metrics if k.startswith(COMPARED_PREFIXES)] + ["epochs", "steps"]
    return {k: metrics[k] for k in keys}


def compose_attempt(
    run_dir: Path, overrides: list[str], sweep_dir: Path | None = None, job: int = 0
) -> DictConfig:
    """The config `python run.py OVERRIDES` would give a run (or multirun job) in `run_dir`,
    with the `.hydra/overrides.yaml` Hydra records there."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.runtime.cwd = str(run_dir.parent)
        cfg.hydra.run.dir = str(run_dir)
        cfg.hydra.job.num = job
        if sweep_dir is not None:
            cfg.hydra.mode = "MULTIRUN"
            cfg.hydra.sweep.dir = str(sweep_dir)
    HydraConfig.instance().set_config(cfg)
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
    time.sleep(0.01)  # attempts are ordered by the time their overrides were recorded
    return cfg


def run_interrupted(cfg: DictConfig, steps: int, monkeypatch) -> None:
    build = train.build

    def build_with_interrupt(cfg, extra_callbacks=(), **kwargs):
        return build(cfg, extra_callbacks=(*extra_callbacks, RaiseAfterSteps(steps)), **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(train, "build", build_with_interrupt)
        with pytest.raises(Interrupted):
            train.run(cfg)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[dict, Path]:
    """An uninterrupted run (its metrics and run dir), outside every resume test's search."""
    run_dir = tmp_path_factory.mktemp("reference") / "runs" / "ref"
    metrics = train.run(compose_attempt(run_dir, OVERRIDES))
    GlobalHydra.instance().clear()
    return metrics, run_dir


def test_language_model_resumed_mid_epoch_continues_its_streams(tmp_path, monkeypatch):
    """Truncated BPTT: the resumed run trains on the chunks it had not reached, from the
    recurrent state it had (saved in the checkpoint), to the uninterrupted run's metrics."""
    overrides = [
        *tiny_char_lstm(tmp_path),
        "trainer.max_epochs=2",
        "trainer.deterministic=true",
        "callbacks.step_checkpoint.every_n_train_steps=5",
        *QUIET,
    ]
    reference = train.run(compose_attempt(tmp_path / "ref" / "runs" / "char_lstm" / "r", overrides))
    steps = reference["steps"]
    assert steps % 2 == 0 and steps // 2 > 12  # two epochs; the kill below is inside epoch 0
    runs = tmp_path / "runs" / "char_lstm"
    first, second = runs / "2026-01-01_00-00-00", runs / "2026-01-01_00-00-01"
    run_interrupted(compose_attempt(first, overrides), 12, monkeypatch)
    saved = torch.load(first / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 10
    assert saved["carried_state"]["batches_done"] == 10  # the LSTM's (h, c) after chunk 10
    metrics = train.run(compose_attempt(second, overrides))
    assert metrics["resumed_from"].endswith("last.ckpt")
    assert final_numbers(metrics) == final_numbers(reference)
    GlobalHydra.instance().clear()


@pytest.mark.parametrize(
    ("kill_at", "resumed_step", "extra"),
    [
        (30, 28, []),  # mid-epoch, from the step checkpoint
        (25, 20, ["callbacks.step_checkpoint.every_n_train_steps=1000"]),  # from an epoch end
    ],
)
def test_interrupted_run_resumes_to_identical_metrics(
    reference, tmp_path, monkeypatch, kill_at, resumed_step, extra
):
    overrides = OVERRIDES if not extra else [*OVERRIDES[:-1], *extra]
    runs = tmp_path / "runs" / "digits_mlp"
    first, second = runs / "2026-01-01_00-00-00", runs / "2026-01-01_00-00-01"
    run_interrupted(compose_attempt(first, overrides), kill_at, monkeypatch)
    last = first / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == resumed_step
    assert not (first / "metrics.json").exists()
    before = {p.name: p.read_bytes() for p in (first / "checkpoints").iterdir()}

    metrics = train.run(compose_attempt(second, overrides))  # resume: auto finds `first`

    assert metrics["resumed_from"] == str(last.resolve())
    assert final_numbers(metrics) == final_numbers(reference[0])
    assert json.loads((second / "metrics.json").read_text())["steps"] == 60
    # the resumed run trained only the remaining steps
    curves = json.loads((second / "plots" / "learning_curves.json").read_text())
    assert len(curves["loss"]) == 60 - resumed_step
    # the interrupted attempt is left as it was; its best checkpoint was linked, not moved
    assert {p.name: p.read_bytes() for p in (first / "checkpoints").iterdir()} == before
    assert Path(metrics["best_ckpt"]).parent == (second / "checkpoints").resolve()
    GlobalHydra.instance().clear()


def test_multirun_rerun_skips_finished_and_resumes_interrupted(tmp_path, monkeypatch):
    overrides = [*BASE, "trainer.max_epochs=2"]
    root = tmp_path / "multiruns" / "digits_mlp"
    old, new = root / "2026-01-01_00-00-00", root / "2026-01-01_01-00-00"
    jobs = [[*overrides, "seed=0"], [*overrides, "seed=1"]]
    finished = train.main(compose_attempt(old / "0", jobs[0], old, 0))
    run_interrupted(compose_attempt(old / "1", jobs[1], old, 1), 25, monkeypatch)

    objective = train.main(compose_attempt(new / "0", jobs[0], new, 0))
    assert objective == finished  # what the sweeper sees for the skipped job
    assert (new / "0" / "skipped.txt").read_text().strip() == str((old / "0").resolve())
    assert not (new / "0" / "checkpoints").exists()  # not retrained
    train.main(compose_attempt(new / "1", jobs[1], new, 1))
    resumed = json.loads((new / "1" / "metrics.json").read_text())
    assert resumed["resumed_from"] == str((old / "1" / "checkpoints" / "last.ckpt").resolve())

    summarize(new)
    rows = (new / "summary.csv").read_text().splitlines()
    assert len(rows) == 3 and all(",ok," in row for row in rows[1:])
    recorded = json.loads((old / "0" / "metrics.json").read_text())
    assert f"{recorded['val/acc']}" in rows[1]
    assert "Skipped, finished by an earlier sweep" in (new / "summary.md").read_text()
    GlobalHydra.instance().clear()


# ------------------------------------------------------------- finding the earlier attempt
def fake_attempt(run_dir: Path, overrides: list[str], *files: str) -> Path:
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    for name in files:
        path = run_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text('{"val/acc": 0.5}' if name.endswith(".json") else "x")
    time.sleep(0.01)
    return run_dir


@pytest.mark.parametrize(
    ("files", "multirun", "ckpt_path", "expected"),
    [
        (["metrics.json", "checkpoints/last.ckpt"], False, None, "fresh"),  # rerun = new run
        (["metrics.json", "checkpoints/last.ckpt"], True, None, "skip"),
        (["metrics.json", "checkpoints/last.ckpt"], False, "last", "resume"),
        (["checkpoints/last.ckpt"], False, None, "resume"),
        (["checkpoints/last.ckpt"], True, None, "resume"),
        (["error.txt", "checkpoints/last.ckpt"], True, None, "fresh"),
        ([], False, None, "fresh"),
    ],
)
def test_plan_follows_the_earlier_attempt(tmp_path, files, multirun, ckpt_path, expected):
    overrides = ["+experiment=digits_mlp", "seed=3"]
    root = tmp_path / ("multiruns" if multirun else "runs")
    earlier = root / "a" / "0" if multirun else root / "a"
    fake_attempt(earlier, overrides, *files)
    current = root / "b" / "0" if multirun else root / "b"
    cfg = compose_attempt(
        current,
        [*overrides, f"ckpt_path={ckpt_path}"] if ckpt_path else overrides,
        current.parent if multirun else None,
    )
    plan = resume.plan_resume(cfg)
    kind = "skip" if plan.skip else "resume" if plan.checkpoint else "fresh"
    assert kind == expected
    if kind != "fresh":
        assert plan.source_dir == earlier.resolve()
    GlobalHydra.instance().clear()


def test_plan_ignores_other_overrides_and_prefers_the_newest(tmp_path):
    runs = tmp_path / "runs"
    fake_attempt(runs / "a", ["seed=1"], "checkpoints/last.ckpt")  # another command
    older = fake_attempt(runs / "b", ["seed=2", "resume=auto"], "checkpoints/last.ckpt")
    newer = fake_attempt(runs / "c", ["seed=2"], "checkpoints/last.ckpt")
    fake_attempt(runs / "d", ["seed=2"])  # killed before its first checkpoint: passed over
    cfg = compose_attempt(runs / "e", ["seed=2", "hydra.job.chdir=false"])
    assert resume.plan_resume(cfg).source_dir == newer.resolve() != older.resolve()
    with open_dict(cfg):
        cfg.resume = "never"
    assert resume.plan_resume(cfg).checkpoint is None
    GlobalHydra.instance().clear()


def test_plan_passes_over_an_attempt_whose_config_files_changed(tmp_path):
    runs = tmp_path / "runs"
    overrides = ["+experiment=digits_mlp", "seed=4"]
    same = fake_attempt(runs / "a", overrides, "checkpoints/last.ckpt")
    changed = fake_attempt(runs / "b", overrides, "checkpoints/last.ckpt")  # the newest
    cfg = compose_attempt(runs / "c", overrides)
    saved = OmegaConf.to_container(cfg, resolve=False)
    saved.pop("hydra")
    saved["resume"] = "never"  # how to start, and where: not what is trained
    saved["paths"] = {"output_dir": "/elsewhere"}
    (same / ".hydra" / "config.yaml").write_text(yaml.safe_dump(saved))
    saved["model"] = {**saved["model"], "hidden_dims": [4096]}  # the experiment file was edited
    (changed / ".hydra" / "config.yaml").write_text(yaml.safe_dump(saved))
    assert resume.plan_resume(cfg).source_dir == same.resolve()
    GlobalHydra.instance().clear()


def test_ckpt_path_last_without_an_attempt_is_a_clear_error(tmp_path):
    cfg = compose_attempt(tmp_path / "runs" / "x", ["seed=5", "ckpt_path=last"])
    with pytest.raises(CheckpointError, match="ckpt_path=last.*no earlier attempt"):
        resume.plan_resume(cfg)
    GlobalHydra.instance().clear()


# ------------------------------------------------------------------------ checkpoint files
class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("disk full")


def test_atomic_save_leaves_the_old_file_and_no_temp_on_failure(tmp_path):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"step": 1}, path)
    old = path.read_bytes()
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_torch_save({"step": 2, "bad": Unpicklable()}, path)
    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    atomic_torch_save({"step": 3}, path)
    assert torch.load(path, weights_only=True) == {"step": 3}


def test_trainer_writes_checkpoints_atomically(tmp_path):
    cfg = compose_attempt(tmp_path / "run", ["+experiment=digits_mlp", *QUIET])
    _, _, trainer = train.build(cfg)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    GlobalHydra.instance().clear()


def corrupt_copies(checkpoint: Path, folder: Path) -> dict[str, tuple[Path, str]]:
    """Broken variants of a real checkpoint, with the words their error must contain."""
    folder.mkdir()
    data = checkpoint.read_bytes()
    cases = {
        "truncated": (data[: len(data) // 2], "truncated or corrupt"),
        "random": (bytes(range(256)) * 64, "truncated or corrupt"),
        "empty": (b"", "truncated or corrupt"),
    }
    out = {name: (folder / f"{name}.ckpt", words) for name, (_, words) in cases.items()}
    for name, (payload, _) in cases.items():
        out[name][0].write_bytes(payload)
    state = torch.load(checkpoint, weights_only=True)
    torch.save(state["state_dict"], folder / "plain.ckpt")
    out["plain"] = (folder / "plain.ckpt", "plain model state_dict")
    torch.save({"state_dict": state["state_dict"]}, folder / "weights.ckpt")
    out["weights"] = (folder / "weights.ckpt", "no training state")
    other = dict(state)
    other["state_dict"] = {k: v[..., :3] if v.ndim else v for k, v in state["state_dict"].items()}
    torch.save(other, folder / "other_model.ckpt")
    out["other_model"] = (folder / "other_model.ckpt", "another model or method")
    torch.save({**state, "note": Path("x")}, folder / "pickled.ckpt")
    out["pickled"] = (folder / "pickled.ckpt", "Only if you trust the file")
    return out


def test_corrupt_or_foreign_checkpoint_is_named_before_training(reference, tmp_path):
    best = Path(reference[0]["best_ckpt"])
    for name, (path, words) in corrupt_copies(best, tmp_path / "bad").items():
        run_dir = tmp_path / "runs" / name
        cfg = compose_attempt(run_dir, [*OVERRIDES, f"ckpt_path={path}"])
        with pytest.raises(CheckpointError, match=words) as raised:
            train.run(cfg)
        assert str(path) in str(raised.value), name
        assert not (run_dir / "checkpoints").exists() and not (run_dir / "metrics.json").exists()
    GlobalHydra.instance().clear()


def test_corrupt_pretrained_checkpoint_is_named(reference, tmp_path):
    from deeprecipe.models import MLP
    from deeprecipe.transfer import load_backbone_weights

    data = Path(reference[0]["best_ckpt"]).read_bytes()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match=r"pretrained=.*truncated.ckpt.*truncated or corrupt"):
        load_backbone_weights(MLP(in_chans=1, image_size=8, hidden_dims=[128]), truncated)


# ---------------------------------------------------------------------------------- W&B
def test_wandb_run_id_is_reused_by_the_resumed_attempt(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    first = wandb_logger("deeprecipe", "x", save_dir=str(tmp_path / "a"))
    run_id = first._wandb_init["id"]
    assert (tmp_path / "a" / "wandb_id.txt").read_text().strip() == run_id
    resume.carry_state_files(tmp_path / "a", tmp_path / "b")
    again = wandb_logger("deeprecipe", "x", save_dir=str(tmp_path / "b"))
    assert again._wandb_init["id"] == run_id and again._wandb_init["resume"] == "allow"
    other = wandb_logger("deeprecipe", "x", save_dir=str(tmp_path / "c"))
    assert other._wandb_init["id"] != run_id


# ------------------------------------------------------------------ the real thing (CLI)
def cli_command(log_dir: Path) -> list[str]:
    return [
        f"paths.log_dir={log_dir}",
        *OVERRIDES,
        "logger=wandb",
        "+callbacks.killer._target_=kill_helpers.KillAfterSteps",
    ]


def start_cli(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    full_env = {**os.environ, "HYDRA_FULL_ERROR": "0", "WANDB_MODE": "offline", **env}
    full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), full_env.get("PYTHONPATH", "")])
    return subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), *args],
        cwd=cwd,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_sigkill_then_same_command_matches_uninterrupted_run(tmp_path):
    (tmp_path / "ref").mkdir()
    (tmp_path / "job").mkdir()
    # the reference and the run that gets killed after 30 steps, side by side
    reference = start_cli(cli_command(tmp_path / "ref" / "logs"), tmp_path / "ref", {})
    killed = start_cli(
        cli_command(tmp_path / "job" / "logs"), tmp_path / "job", {"KILL_AFTER_STEPS": "30"}
    )
    assert killed.wait(timeout=300) == -9, killed.communicate()[1][-3000:]
    assert reference.wait(timeout=300) == 0, reference.communicate()[1][-3000:]
    rerun = run_cli(
        *cli_command(tmp_path / "job" / "logs"),
        cwd=tmp_path / "job",
        env={"WANDB_MODE": "offline"},
        timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "Resuming the interrupted attempt" in rerun.stderr

    runs = sorted((tmp_path / "job" / "logs" / "runs" / "digits_mlp").iterdir())
    assert len(runs) == 2 and not (runs[0] / "metrics.json").exists()
    resumed = json.loads((runs[1] / "metrics.json").read_text())
    (ref_dir,) = (tmp_path / "ref" / "logs" / "runs" / "digits_mlp").iterdir()
    expected = json.loads((ref_dir / "metrics.json").read_text())
    assert final_numbers(resumed) == final_numbers(expected)
    assert resumed["resumed_from"].endswith("checkpoints/last.ckpt")
    # W&B: both attempts logged (offline) to the same run id
    run_id = (runs[0] / "wandb_id.txt").read_text().strip()
    assert (runs[1] / "wandb_id.txt").read_text().strip() == run_id
    for run_dir in runs:
        assert list((run_dir / "wandb").glob(f"offline-run-*-{run_id}")), run_dir


@pytest.mark.slow
def test_killed_multirun_rerun_skips_finished_jobs(tmp_path):
    args = [
        "-m",
        f"paths.log_dir={tmp_path}",
        *BASE,
        "trainer.max_epochs=2",
        "callbacks.step_checkpoint.every_n_train_steps=7",
        "seed=0,1,2",
        "+callbacks.killer._target_=kill_helpers.KillAfterSteps",
    ]
    killed = start_cli(args, tmp_path, {"KILL_AFTER_STEPS": "30", "KILL_JOB": "1"})
    assert killed.wait(timeout=300) == -9, killed.communicate()[1][-3000:]
    first = tmp_path / "multiruns" / "digits_mlp"
    (old,) = first.iterdir()
    assert (old / "0" / "metrics.json").is_file() and not (old / "2").exists()
    shutil.copy(old / "0" / "metrics.json", tmp_path / "job0.json")

    rerun = run_cli(*args, cwd=tmp_path, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "Skipping job 0: finished in" in rerun.stderr
    (new,) = [p for p in first.iterdir() if p != old]
    assert (new / "0" / "skipped.txt").is_file() and not (new / "0" / "checkpoints").exists()
    assert json.loads((new / "1" / "metrics.json").read_text())["resumed_from"]
    assert "resumed_from" not in json.loads((new / "2" / "metrics.json").read_text())
    rows = (new / "summary.csv").read_text().splitlines()
    assert len(rows) == 4 and all(",ok," in row for row in rows[1:])
    assert json.loads((tmp_path / "job0.json").read_text()) == json.loads(
        (new / "0" / "metrics.json").read_text()
    )


# ------------------------------------------------- schedule of a run resumed with other settings
class FirstRate(L.Callback):
    """The learning rate of the first batch trained."""

    rate: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.rate is None:
            self.rate = trainer.optimizers[0].param_groups[0]["lr"]


def _fit(make_cfg, *overrides, ckpt_path=None):
    first_rate = FirstRate()
    datamodule, method, trainer = train.build(
        make_cfg("+experiment=digits_mlp", "scheduler=cosine", *QUIET, *overrides),
        (first_rate,),
        limit_val_batches=0,
    )
    trainer.fit(method, datamodule=datamodule, ckpt_path=ckpt_path)
    trainer.first_rate = first_rate.rate
    return trainer


def test_resume_with_a_longer_run_names_the_old_schedule(make_cfg, tmp_path, caplog):
    """A finished 2-epoch run resumed with max_epochs=4 keeps its old cosine (rate 0 from its
    end on) unless resume_schedule=config; either way the difference is warned about."""
    first = _fit(make_cfg, "trainer.max_epochs=2")
    steps = first.global_step
    old_decay = first.lr_scheduler_configs[0].scheduler.lr_lambdas[0].decay_steps
    path = tmp_path / "two_epochs.ckpt"
    first.save_checkpoint(path)
    with caplog.at_level("WARNING", logger="deeprecipe.resume"):
        kept = _fit(make_cfg, "trainer.max_epochs=4", ckpt_path=str(path))
    assert "lr_lambdas.0.decay_steps" in caplog.text and "resume_schedule=config" in caplog.text
    assert kept.lr_scheduler_configs[0].scheduler.lr_lambdas[0].decay_steps == old_decay
    assert kept.first_rate == pytest.approx(0.0)  # the old cosine had ended
    caplog.clear()
    with caplog.at_level("WARNING", logger="deeprecipe.resume"):
        new = _fit(make_cfg, "trainer.max_epochs=4", "resume_schedule=config", ckpt_path=str(path))
    assert "in place of the checkpoint's" in caplog.text
    schedule = new.lr_scheduler_configs[0].scheduler
    assert schedule.lr_lambdas[0].decay_steps == old_decay + steps  # the run is `steps` longer
    assert new.global_step == schedule.last_epoch == 2 * steps
    # the first resumed batch trains at the configured cosine's rate for its step
    base = schedule.base_lrs[0]
    assert (
        new.first_rate == pytest.approx(base * schedule.lr_lambdas[0](steps)) and new.first_rate > 0
    )
    caplog.clear()
    with caplog.at_level("WARNING", logger="deeprecipe.resume"):
        _fit(make_cfg, "trainer.max_epochs=2", ckpt_path=str(path))  # same settings: quiet
    assert "differ" not in caplog.text


def test_resume_schedule_value_is_checked(make_cfg):
    with pytest.raises(train.ConfigError, match="resume_schedule='exact'"):
        train.build(make_cfg("+experiment=digits_mlp", "resume_schedule=exact"))
