"""Shared fixtures: composing the suite's configs, and real data loaded once per session."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

import deeprecipe.train  # noqa: F401  (registers the config resolvers)
from deeprecipe.data import FashionMNISTDataModule
from deeprecipe.data.fashion_mnist import DEBIAN_ROOT
from deeprecipe.recipe import model_report

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
# overrides that keep test output short: no progress bar
QUIET = ["trainer.enable_progress_bar=false", "~callbacks.progress_bar"]

requires_fashion = pytest.mark.skipif(
    not Path(DEBIAN_ROOT, "train-images-idx3-ubyte.gz").exists(),
    reason="Fashion-MNIST not installed (make install does it)",
)


def tiny_char_lstm(tmp_path: Path, words: int = 800) -> list[str]:
    """Overrides of a tiny ``+experiment=char_lstm`` on a seeded corpus of common words, written
    to ``tmp_path/corpus.txt``: 4 training streams of 16-step chunks, 1-layer LSTM of width 16."""
    vocabulary = "the of and to a in that it was her she not be he his as had with for you"
    rng = random.Random(0)
    text = " ".join(rng.choice(vocabulary.split(" ")) for _ in range(words))
    (tmp_path / "corpus.txt").write_text(text + "\n", encoding="utf-8")
    return [
        "+experiment=char_lstm",
        f"data.path={tmp_path / 'corpus.txt'}",
        "data.seq_len=16",
        "data.batch_size=4",
        "data.eval_batch_size=4",
        "model.hidden_size=16",
        "model.embed_dim=8",
        "model.num_layers=1",
        "method.sample_length=0",
    ]


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose ``conf/config.yaml`` with overrides, as ``run.py`` would, writing under tmp_path."""

    def _make(*overrides: str) -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(tmp_path / "run")
            cfg.hydra.runtime.cwd = str(tmp_path)
            cfg.hydra.job.num = 0
        HydraConfig.instance().set_config(cfg)
        return cfg

    yield _make
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def fashion() -> FashionMNISTDataModule:
    """The real Fashion-MNIST, set up once (small batches for fast_dev_run)."""
    if not Path(DEBIAN_ROOT, "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST not installed (make install does it)")
    datamodule = FashionMNISTDataModule(batch_size=16, eval_batch_size=64)
    datamodule.setup("fit")
    return datamodule


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: int = 240):
    """Run ``python run.py ARGS`` in ``cwd`` and return the CompletedProcess."""
    full_env = {**os.environ, "HYDRA_FULL_ERROR": "0", "WANDB_MODE": "", **(env or {})}
    full_env = {k: v for k, v in full_env.items() if v != ""}
    full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), full_env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


is_sequence_model = model_report.is_sequence_model
image_model_options = model_report.image_model_options
