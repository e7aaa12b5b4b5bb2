"""What the ``coarse`` and ``refine`` steps share: a sweep preset, its launch, its best job.

A step writes its sweep as a preset in the style of ``conf/sweep/*.yaml`` (``preset.yaml``, the
named preset with the values the step chose) and launches it as the user would:
``python run.py -m +sweep=NAME [overrides] [values] hydra.sweep.dir=OUT/sweep`` (values given on
the command line replace the preset's sweeper params). The sweep writes its usual summary table;
the step reads the jobs back and reports the best.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from deeprecipe.recipe.common import CONF, ROOT, StepResult, override_key
from deeprecipe.sweep_summary import read_jobs


@dataclass
class SweepPlan:
    """A sweep preset (``conf/sweep/PRESET.yaml``), the values that replace its sweeper params
    (and its ``hydra.*`` sweeper settings such as ``hydra.sweeper.n_trials``), the user's
    overrides and where the sweep writes."""

    preset: str
    params: dict[str, str]
    overrides: list[str]
    sweep_dir: Path

    def command(self) -> list[str]:
        """``python run.py -m ...``; the user's overrides of swept keys give way to the sweep."""
        kept = [item for item in self.overrides if override_key(item) not in self.params]
        values = [f"{key}={value}" for key, value in self.params.items()]
        return [
            sys.executable,
            str(ROOT / "run.py"),
            "-m",
            f"+sweep={self.preset}",
            *kept,
            *values,
            f"hydra.sweep.dir={self.sweep_dir}",
        ]

    def shell_command(self) -> str:
        """:meth:`command` for a shell, with ``python`` for this interpreter."""
        return shlex.join(["python", *self.command()[1:]])

    def preset_yaml(self) -> str:
        """The preset with this plan's values, ready to copy into ``conf/sweep/``."""
        preset = OmegaConf.load(CONF / "sweep" / f"{self.preset}.yaml")
        for key, value in self.params.items():
            if key.startswith("hydra."):  # a sweeper setting, not a swept value
                OmegaConf.update(preset, key, yaml.safe_load(value))
            else:
                preset.hydra.sweeper.params[key] = yaml.safe_load(value)
        return "# @package _global_\n" + OmegaConf.to_yaml(preset)


def write_and_launch(plan: SweepPlan, out_dir: Path, launch: bool) -> int | None:
    """Write ``preset.yaml`` and ``command.sh`` into ``out_dir``; run the sweep when ``launch``
    (its output streams to this terminal) and return its exit status."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "preset.yaml").write_text(plan.preset_yaml())
    (out_dir / "command.sh").write_text(plan.shell_command() + "\n")
    if not launch:
        return None
    return subprocess.run(plan.command(), check=False).returncode


def ranked_jobs(sweep_dir: Path, objective: str, maximize: bool = True) -> list[dict[str, Any]]:
    """Finished jobs of a sweep, best ``objective`` first (highest, or lowest unless
    ``maximize``: ``objective_mode=min``, e.g. a loss or bits per char)."""
    if not sweep_dir.is_dir():
        return []
    finished = [
        job
        for job in read_jobs(sweep_dir)
        if job["status"] == "ok" and isinstance(job["metrics"].get(objective), int | float)
    ]
    return sorted(finished, key=lambda job: job["metrics"][objective], reverse=maximize)


def maximizes(cfg: DictConfig) -> bool:
    """Whether the run's ``objective`` is better higher (``objective_mode``, default max)."""
    return str(cfg.get("objective_mode", "max")) == "max"


def sweep_result(
    step: str,
    plan: SweepPlan,
    cfg: DictConfig,
    status: int | None,
    describe: str,
    show: Sequence[str] = ("optim.lr", "optim.weight_decay"),
) -> StepResult:
    """The step's result: the plan when not launched, else the best jobs of the sweep."""
    objective = str(cfg.objective)
    values: dict[str, Any] = {
        "sweep_dir": str(plan.sweep_dir),
        "command": plan.shell_command(),
        "params": plan.params,
        "objective": objective,
        "best": None,
    }
    details = [f"{describe}.", "", "```bash", plan.shell_command(), "```"]
    if status is None:
        text = f"preset written ({describe}); launch it with: {plan.shell_command()}"
        return StepResult(step, None, text, details, values)
    jobs = ranked_jobs(plan.sweep_dir, objective, maximizes(cfg))
    if not jobs:
        text = f"no job of the sweep finished (exit status {status}); see {plan.sweep_dir}"
        return StepResult(step, False, text, details, values)
    best = jobs[0]
    values["best"] = {
        "job": best["job"],
        "overrides": best["overrides"],
        objective: best["metrics"][objective],
    }
    setting = " ".join(f"{key}={best['overrides'].get(key)}" for key in show)
    text = (
        f"best {objective} {best['metrics'][objective]:.4f} at {setting} "
        f"({len(jobs)} finished jobs; summary in {plan.sweep_dir / 'summary.md'})"
    )
    details += ["", f"| job | {' | '.join(show)} | {objective} |", "|---" * (len(show) + 2) + "|"]
    for job in jobs[:5]:
        cells = " | ".join(str(job["overrides"].get(key, "")) for key in show)
        details.append(f"| {job['job']} | {cells} | {job['metrics'][objective]:.4f} |")
    return StepResult(step, True, text, details, values)
