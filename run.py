"""Hydra entry point: `python run.py [+experiment=NAME] [group=option ...] [-m]`."""

import hydra
from omegaconf import DictConfig

from deeprecipe.train import main


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def entry(cfg: DictConfig) -> float | None:
    return main(cfg)


if __name__ == "__main__":
    entry()
