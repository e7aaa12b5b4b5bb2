"""DDP: data sharding, batch norm and kNN across processes, multirun jobs on several processes,
launcher presets, the linear scaling rule; end to end on 2 CPU processes (gloo).

The end-to-end comparisons of 1 and 2 processes run in float64 (``trainer.precision=64-true``):
in float32 the two runs differ by rounding (batch statistics and gradients are summed in another
order) and ReLU kinks amplify such differences to percent-level gradient differences within a
few steps (measured on the SimCLR config below), so only float64 can show that both follow the
same trajectory rather than merely similar ones.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import open_dict
from torch import nn

from conftest import CONF, QUIET, ROOT, run_cli, tiny_char_lstm
from deeprecipe.callbacks.knn import knn_accuracy, knn_predict
from deeprecipe.data import DigitsDataModule
from deeprecipe.data.base import ImageArrays
from deeprecipe.distributed import (
    AllReduceBatchNorm,
    AllReduceBatchNormSync,
    DDPStrategy,
    launches_script_copies,
    single_run_command,
)
from deeprecipe.errors import ConfigError
from deeprecipe.train import build, run

WORLD = 2
# a short supervised run on the bundled digits, in float64 (see the module docstring)
DIGITS = [
    "+experiment=digits_mlp",
    "trainer.max_epochs=2",
    "+trainer.limit_train_batches=6",
    "trainer.precision=64-true",
    *QUIET,
]
# SimCLR with batch norm in backbone (BN2d) and projector (BN1d), synchronized across the ranks,
# the kNN monitor every epoch, and a deterministic augmentation (random views differ per rank)
SIMCLR = [
    "data=digits",
    "method=simclr",
    "model=resnet9",
    "model.width=4",
    "aug=none",
    "aug._target_=ddp_helpers.AlternatingFlip",
    "optim=sgd",
    "optim.lr=0.05",
    "scheduler=cosine",
    "callbacks=ssl",
    "trainer.max_epochs=2",
    "+trainer.limit_train_batches=6",
    "trainer.precision=64-true",
    *QUIET,
]
COMPARED = ("val/acc", "test/acc", "val/loss", "test/loss", "steps")


# ------------------------------------------------------------------------------ sharding
def _digits_with_index_labels(monkeypatch) -> DigitsDataModule:
    """A datamodule whose labels are the example's index, so batches show which examples."""
    monkeypatch.setenv("PL_GLOBAL_SEED", "3")
    datamodule = DigitsDataModule(batch_size=64, eval_batch_size=50)
    images = torch.zeros(301, 1, 8, 8, dtype=torch.uint8)
    datamodule.train = ImageArrays(images, torch.arange(301))
    datamodule.val = ImageArrays(images[:101], torch.arange(101))
    return datamodule


def _labels(loader) -> list[list[int]]:
    return [batch.y.tolist() for batch in loader]


def test_global_batches_do_not_depend_on_the_number_of_processes(monkeypatch):
    datamodule = _digits_with_index_labels(monkeypatch)
    one = _labels(datamodule.train_dataloader())
    shards, val_shards = [], []
    for rank in range(WORLD):
        datamodule.trainer = SimpleNamespace(world_size=WORLD, global_rank=rank)
        loader = datamodule.train_dataloader()
        assert loader.batch_size == 32  # data.batch_size is global
        loader.sampler.set_epoch(0)
        shards.append(_labels(loader))
        val_shards.append([i for batch in _labels(datamodule.val_dataloader()) for i in batch])
    assert len(one) == 301 // 64 == len(shards[0]) == len(shards[1])
    for step, batch in enumerate(one):
        assert len(set(batch)) == 64
        # the two ranks' batches of a step together are the single process's batch
        assert sorted(shards[0][step] + shards[1][step]) == sorted(batch)
    # evaluation: disjoint shards that cover every example once (101 is odd: no padding)
    assert sorted(val_shards[0] + val_shards[1]) == list(range(101))
    datamodule.trainer = SimpleNamespace(world_size=3, global_rank=0)
    with pytest.raises(ConfigError, match="multiple of 3"):
        datamodule.train_dataloader()


# ------------------------------------------------- batch norm and kNN on two processes
def _bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 4 * 4, 5),
        nn.BatchNorm1d(5, momentum=None),
    ).double()


def _bn_data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(12, 2, 6, 6, generator=generator, dtype=torch.float64)
    weights = torch.randn(12, 5, generator=generator, dtype=torch.float64)
    return x, weights


def _bn_step(net: nn.Module, x: torch.Tensor, weights: torch.Tensor) -> dict[str, torch.Tensor]:
    """One training forward/backward of a weighted sum of the outputs (a sum over examples, so
    the ranks' losses add up to the global one)."""
    x = x.clone().requires_grad_()
    (net(x) * weights).sum().backward()
    result = {"x_grad": x.grad}
    result.update({f"grad:{name}": p.grad for name, p in net.named_parameters()})
    result.update({f"buffer:{name}": b for name, b in net.named_buffers()})
    return result


def _knn_data() -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(2)
    bank, bank_labels = torch.randn(37, 6, generator=generator), torch.randint(0, 4, (37,))
    query, labels = torch.randn(23, 6, generator=generator), torch.randint(0, 4, (23,))
    return bank, bank_labels, query, labels


def _worker(rank: int, store: str, folder: str) -> None:
    torch.set_num_threads(1)  # a forked child must not use the parent's thread pool
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        net = AllReduceBatchNormSync().apply(_bn_net()).train()
        x, weights = _bn_data()
        result = _bn_step(net, x[rank::WORLD], weights[rank::WORLD])
        for key in [k for k in result if k.startswith("grad:")]:
            dist.all_reduce(result[key])  # summed over ranks: the gradient of the summed loss
        bank, bank_labels, query, labels = _knn_data()
        result["knn_acc"] = knn_accuracy(  # uneven shards of bank and queries
            query[rank::WORLD],
            labels[rank::WORLD],
            bank[rank::WORLD],
            bank_labels[rank::WORLD],
            4,
            5,
        )
        reverted = AllReduceBatchNormSync().revert(net)
        result["reverted"] = [type(m).__name__ for m in reverted if "Norm" in type(m).__name__]
        torch.save(result, Path(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_batch_norm_and_knn_across_processes_equal_one_process(tmp_path):
    """Two gloo processes: AllReduceBatchNorm gives batch norm over the global batch (outputs'
    input gradients, summed parameter gradients, running statistics), and the kNN accuracy of
    sharded queries against a sharded bank is that of one process with all of the data."""
    # forked, not spawned: the children inherit the imported stack instead of importing it again
    mp.start_processes(
        _worker,
        args=(str(tmp_path / "store"), str(tmp_path)),
        nprocs=WORLD,
        join=True,
        start_method="fork",
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    x, weights = _bn_data()
    single = _bn_step(_bn_net().train(), x, weights)  # torch's BatchNorm, one process
    for rank, result in enumerate(ranks):
        assert torch.allclose(result["x_grad"], single["x_grad"][rank::WORLD], atol=1e-10)
        for key in single:
            if key != "x_grad":
                assert torch.allclose(result[key].double(), single[key].double(), atol=1e-10), key
        assert result["reverted"] == ["BatchNorm2d", "BatchNorm1d"]
    bank, bank_labels, query, labels = _knn_data()
    expected = (knn_predict(query, bank, bank_labels, 4, 5) == labels).float().mean()
    for result in ranks:
        assert torch.isclose(result["knn_acc"], expected)
        assert not torch.isclose(result["knn_acc"], torch.tensor(0.0))


def test_all_reduce_batch_norm_is_plain_batch_norm_outside_ddp():
    net = AllReduceBatchNormSync().apply(_bn_net()).train()
    assert isinstance(net[1], AllReduceBatchNorm) and isinstance(net[5], AllReduceBatchNorm)
    x, weights = _bn_data()
    converted, plain = _bn_step(net, x, weights), _bn_step(_bn_net().train(), x, weights)
    assert all(torch.equal(converted[key], plain[key]) for key in plain)


# ----------------------------------------------------- multirun jobs and trainer presets
@pytest.fixture
def multirun_job(tmp_path):
    """HydraConfig of job 1 of a multirun, as a sweeper sets it, and the composed config."""

    def _make(*overrides: str, hydra_overrides: tuple[str, ...] = ()):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.mode = RunMode.MULTIRUN
            cfg.hydra.runtime.output_dir = str(tmp_path / "sweep" / "1")
            cfg.hydra.runtime.cwd = str(tmp_path)
            cfg.hydra.overrides.task = list(overrides)
            cfg.hydra.overrides.hydra = ["hydra.mode=MULTIRUN", *hydra_overrides]
        HydraConfig.instance().set_config(cfg)
        return cfg

    yield _make
    GlobalHydra.instance().clear()


def test_a_ddp_job_of_a_multirun_reruns_as_a_single_run_in_its_dir(multirun_job, tmp_path):
    overrides = ("optim.lr=0.02", "trainer=ddp_cpu", "+experiment=digits_mlp")
    cfg = multirun_job(
        *overrides, hydra_overrides=("hydra.sweeper.n_trials=2", "hydra.job.chdir=false")
    )
    command = single_run_command(ROOT / "run.py")
    assert command[1] == str(ROOT / "run.py") and "-m" not in command
    assert f"--config-path={CONF}" in command and "--config-name=config" in command
    assert command[command.index("--config-name=config") + 1 :][: len(overrides)] == list(overrides)
    assert f"hydra.run.dir='{tmp_path / 'sweep' / '1'}'" in command
    assert "hydra.output_subdir=null" in command and "hydra.job.chdir=false" in command
    assert not any(part.startswith(("hydra.sweeper", "hydra.mode")) for part in command)
    assert launches_script_copies(cfg.trainer)  # Lightning would re-execute sys.argv


def test_only_script_relaunching_trainers_rerun(multirun_job, monkeypatch):
    assert not launches_script_copies(multirun_job("+experiment=digits_mlp").trainer)
    # ranks that SLURM starts (submitit's tasks) run the job themselves
    for name, value in {
        "SLURM_NTASKS": "2",
        "SLURM_NTASKS_PER_NODE": "2",
        "SLURM_JOB_NAME": "run",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_JOB_ID": "7",
    }.items():
        monkeypatch.setenv(name, value)
    assert not launches_script_copies(multirun_job("trainer=ddp_cpu").trainer)


def test_trainer_presets_and_launchers_compose():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        ddp_cpu = compose("config", overrides=["trainer=ddp_cpu"])
        ddp = compose("config", overrides=["trainer=ddp", "trainer.sync_batchnorm=true"])
        slurm = compose(
            "config",
            overrides=["hydra/launcher=submitit_slurm", "hydra.launcher.gpus_per_node=4"],
            return_hydra_config=True,
        )
        joblib = compose("config", overrides=["hydra/launcher=joblib"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    assert ddp_cpu.trainer.devices == 2 and ddp_cpu.trainer.accelerator == "cpu"
    assert ddp_cpu.trainer.strategy.process_group_backend == "gloo"
    assert ddp.trainer.accelerator == "gpu" and ddp.trainer.sync_batchnorm is True
    assert ddp.trainer.strategy._target_ == ddp_cpu.trainer.strategy._target_
    launcher = slurm.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.tasks_per_node == 4  # one task (a DDP rank) per GPU
    assert launcher.max_num_timeout > 0  # requeued on timeout and preemption
    assert joblib.hydra.launcher._target_.endswith("joblib_launcher.JoblibLauncher")
    assert joblib.hydra.launcher.n_jobs >= 1


def test_ddp_cpu_preset_builds_our_strategy(make_cfg):
    trainer = build(make_cfg("+experiment=digits_mlp", "trainer=ddp_cpu", *QUIET))[2]
    assert isinstance(trainer.strategy, DDPStrategy) and trainer.num_devices == 2


# ------------------------------------------------------------------- linear scaling rule
@pytest.mark.parametrize("scale", [False, True])
def test_linear_scaling_rule_scales_the_base_learning_rate(make_cfg, scale):
    overrides = ["+experiment=digits_mlp", "data.batch_size=64", *QUIET]
    if scale:
        overrides += ["+optim.scale_lr=true", "+optim.base_batch_size=32"]
    cfg = make_cfg(*overrides)
    datamodule, method, trainer = build(
        cfg, max_steps=1, limit_val_batches=0, num_sanity_val_steps=0
    )
    trainer.fit(method, datamodule=datamodule)
    base_lr = trainer.optimizers[0].param_groups[0]["initial_lr"]
    assert math.isclose(base_lr, 3e-3 * (64 / 32 if scale else 1.0))


# ------------------------------------------------------------ end to end: 1 vs 2 processes
def _losses(folder: Path) -> dict[int, dict]:
    return {
        int(p.stem.removeprefix("loss_rank")): json.loads(p.read_text())
        for p in folder.glob("loss_rank*.json")
    }


def _compare_one_and_two_processes(make_cfg, tmp_path: Path, overrides: list[str]) -> None:
    log = "+callbacks.loss_log._target_=ddp_helpers.StepLossLog"
    single = run(make_cfg(*overrides, log, f"+callbacks.loss_log.folder={tmp_path / 'one'}"))
    result = run_cli(
        *overrides,
        "trainer=ddp_cpu",
        "trainer.sync_batchnorm=true",
        log,
        f"+callbacks.loss_log.folder={tmp_path / 'two'}",
        f"hydra.run.dir={tmp_path / 'ddp'}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert sorted(two) == [0, 1] and two[0]["world_size"] == 2
    # the global loss of a step is the mean of the ranks' losses (equal shards)
    mean = [(a + b) / 2 for a, b in zip(two[0]["losses"], two[1]["losses"], strict=True)]
    reference = one[0]["losses"]
    assert len(mean) == len(reference) == 12
    assert max(abs(a - b) for a, b in zip(mean, reference, strict=True)) < 1e-9
    assert two[0]["losses"] != two[1]["losses"]  # the ranks did see different images
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    for key in COMPARED + tuple(k for k in single if k.startswith("val/knn")):
        assert math.isclose(metrics[key], single[key], rel_tol=1e-6), key


@pytest.mark.slow
def test_two_processes_train_supervised_as_one_process_on_the_global_batch(make_cfg, tmp_path):
    _compare_one_and_two_processes(make_cfg, tmp_path, DIGITS)


@pytest.mark.slow
def test_two_processes_train_simclr_as_one_process_on_the_global_batch(make_cfg, tmp_path):
    """Negatives gathered from both ranks, batch norm synchronized, kNN bank gathered."""
    _compare_one_and_two_processes(make_cfg, tmp_path, SIMCLR)


@pytest.mark.slow
def test_two_processes_train_a_char_lstm_as_one_process_on_the_global_streams(make_cfg, tmp_path):
    """Each rank carries half of the streams (and their state); the chunks stay in order."""
    text = [
        *tiny_char_lstm(tmp_path),
        "trainer.max_epochs=2",
        "+trainer.limit_train_batches=6",
        "trainer.precision=64-true",
        *QUIET,
    ]
    _compare_one_and_two_processes(make_cfg, tmp_path, text)


# ------------------------------------------------------------- end to end: sweeps with DDP
def _job_dirs(log_dir: Path) -> list[Path]:
    sweeps = list((log_dir / "multiruns" / "digits_mlp").iterdir())
    assert len(sweeps) == 1, sweeps  # child ranks started no sweep of their own
    return sorted((p for p in sweeps[0].iterdir() if p.name.isdigit()), key=lambda p: p.name)


def _check_ddp_jobs(log_dir: Path) -> list[float]:
    """Each job dir trained once on 2 ranks with the job's learning rate; returns the rates."""
    assert not (log_dir / "runs").exists()  # no rank fell back to a single-run dir
    rates = []
    for job in _job_dirs(log_dir):
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        lr = float(next(o for o in overrides if o.startswith("optim.lr=")).split("=")[1])
        ranks = _losses(job / "losses")
        assert sorted(ranks) == [0, 1], job
        assert all(math.isclose(r["base_lr"], lr) and r["world_size"] == 2 for r in ranks.values())
        assert (job / "metrics.json").is_file() and (job / "train_ddp_process_1.log").is_file()
        rates.append(lr)
    return rates


SWEEP = [
    "+experiment=digits_mlp",
    "trainer=ddp_cpu",
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=4",
    "+callbacks.loss_log._target_=ddp_helpers.StepLossLog",
    "+callbacks.loss_log.folder=${paths.output_dir}/losses",
    *QUIET,
]


@pytest.mark.slow
def test_multirun_with_ddp_runs_each_job_once_on_two_ranks(tmp_path):
    result = run_cli(
        "-m", f"paths.log_dir={tmp_path}", "optim.lr=0.01,0.02", *SWEEP, cwd=tmp_path, timeout=400
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert _check_ddp_jobs(tmp_path) == [0.01, 0.02]
    sweep_dir = _job_dirs(tmp_path)[0].parent
    rows = (sweep_dir / "summary.csv").read_text().splitlines()
    assert len(rows) == 3 and all(",ok," in row for row in rows[1:])


@pytest.mark.slow
def test_optuna_sweep_with_ddp_gives_each_trial_its_sampled_values(tmp_path):
    result = run_cli(
        "-m",
        f"paths.log_dir={tmp_path}",
        "+sweep=random_lr_wd",
        "hydra.sweeper.n_trials=2",
        *SWEEP,
        cwd=tmp_path,
        timeout=400,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rates = _check_ddp_jobs(tmp_path)
    assert len(rates) == 2 and rates[0] != rates[1]
    best = yaml.safe_load((_job_dirs(tmp_path)[0].parent / "optimization_results.yaml").read_text())
    assert 0.0 < best["best_value"] <= 1.0


@pytest.mark.slow
def test_joblib_launcher_runs_two_jobs_in_parallel(tmp_path):
    result = run_cli(
        "-m",
        f"paths.log_dir={tmp_path}",
        "hydra/launcher=joblib",
        "+experiment=digits_mlp",
        "trainer.max_epochs=1",
        "seed=0,1",
        *QUIET,
        cwd=tmp_path,
        env={"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")},
        timeout=400,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = _job_dirs(tmp_path)
    assert [p.name for p in jobs] == ["0", "1"]
    assert all((job / "metrics.json").is_file() for job in jobs)
