"""Hydra entry point: `python run.py [+experiment=NAME] [group=option ...] [-m]`."""

import warnings
from pathlib import Path

import hydra
from omegaconf import DictConfig

from deeprecipe.distributed import run_task
from deeprecipe.train import main

# DDP jobs of a multirun rerun this script as single runs (see deeprecipe.distributed.run_task)
SCRIPT = Path(__file__).resolve()

# conf/hydra/launcher/{submitit_slurm,joblib}.yaml keep the names of the plugins' own configs, so
# Hydra also checks them against those schemas, and says so on every run
warnings.filterwarnings("ignore", message=".*is validated against ConfigStore schema.*")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def entry(cfg: DictConfig) -> float | None:
    return run_task(cfg, main, SCRIPT)


if __name__ == "__main__":
    entry()
