"""DDP scaling on this machine: training samples per second on 1 process and on 2 DDP processes.

Both configurations train the default run's model and data (ResNet-9 width 16 on Fashion-MNIST,
crop + flip on the device) with the same global batch (``data.batch_size``, split over the
processes under DDP) for a fixed number of steps after a warm-up, through the suite's own
``build`` (Lightning Trainer, default callbacks and logger, no progress bar):

- **1 process**: ``trainer=cpu`` with ``--cores`` threads (default: all cores);
- **2 processes**: ``trainer=ddp_cpu`` (gloo) with ``--cores`` / 2 threads each,

so both use the same cores (threads are set through ``OMP_NUM_THREADS`` of each worker).

Each configuration runs in a fresh interpreter (``--worker N``); under DDP Lightning starts rank 1
by re-executing that worker command. Rounds alternate the two configurations, because this
machine's speed drifts within minutes; the verdict is the ratio of the median samples/s over
rounds. Throughput is the global batch over the median step time (batch start to batch start,
as :mod:`deeprecipe.bench.overhead` measures it), timed on rank 0. Results go to
``experiments/bench/ddp.json`` and ``experiments/bench/ddp.md``.

Usage: ``python -m deeprecipe.bench.ddp [--steps 30] [--warmup 5] [--rounds 3] [--cores N]
[--quick] [OVERRIDE ...]``; ``--quick`` (3 steps, 1 round, output to a temporary folder unless
``--out``) only checks that the benchmark runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra import compose, initialize_config_dir

from deeprecipe.bench.overhead import OUT, ROOT
from deeprecipe.train import build

TRAINERS = {1: "trainer=cpu", 2: "trainer=ddp_cpu"}


class StepTimer(L.Callback):
    """Times from one batch start to the next, after ``warmup`` steps."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.seconds: list[float] = []
        self._last: float | None = None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        now = time.perf_counter()
        if self._last is not None and trainer.global_step > self.warmup:
            self.seconds.append(now - self._last)
        self._last = now


def cpu_name() -> str:
    """The CPU's model name and core count, e.g. ``AMD EPYC 7B13, 2 cores``."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def worker(processes: int, steps: int, warmup: int, overrides: list[str], result: Path) -> None:
    """Train ``warmup + steps`` steps on ``processes`` processes; rank 0 writes ``result``."""
    with tempfile.TemporaryDirectory() as tmp:
        base = [
            f"paths.output_dir={tmp}",
            f"paths.root_dir={ROOT}",
            "run_name=bench",
            TRAINERS[processes],
            "trainer.enable_progress_bar=false",
            "~callbacks.progress_bar",
        ]
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=base + overrides)
        L.seed_everything(cfg.seed)
        timer = StepTimer(warmup)
        datamodule, method, trainer = build(
            cfg,
            extra_callbacks=(timer,),
            max_steps=warmup + steps + 1,
            max_epochs=-1,
            limit_val_batches=0,
            num_sanity_val_steps=0,
        )
        trainer.fit(method, datamodule=datamodule)
        if trainer.is_global_zero:
            step_s = statistics.median(timer.seconds)
            record = {
                "processes": trainer.world_size,
                "threads_per_process": torch.get_num_threads(),
                "global_batch": cfg.data.batch_size,
                "steps_timed": len(timer.seconds),
                "step_ms_median": round(step_s * 1000, 2),
                "samples_per_s": round(cfg.data.batch_size / step_s, 1),
                "precision": str(trainer.precision),
                "model": cfg.model._target_.rsplit(".", 1)[-1],
                "model_args": {k: v for k, v in cfg.model.items() if k != "_target_"},
                "data": cfg.data._target_.rsplit(".", 1)[-1],
            }
            result.write_text(json.dumps(record) + "\n")


def scaling(
    steps: int, warmup: int, rounds: int, cores: int, overrides: list[str]
) -> dict[str, Any]:
    """Alternate 1- and 2-process workers for ``rounds`` rounds; summarize their throughput."""
    runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(rounds):
            for processes in (1, 2):
                result = Path(tmp, f"round{round_index}_{processes}.json")
                command = [sys.executable, "-m", "deeprecipe.bench.ddp", "--worker"]
                command += [str(processes), "--steps", str(steps), "--warmup", str(warmup)]
                command += ["--result", str(result), *overrides]
                threads = str(max(1, cores // processes))
                env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
                subprocess.run(command, cwd=ROOT, env=env, check=True)
                runs[processes].append(json.loads(result.read_text()))
    one, two = (statistics.median(r["samples_per_s"] for r in runs[p]) for p in (1, 2))
    return {
        "what": "training samples/s of the default run (global batch, suite's Trainer) on 1 "
        "process vs 2 DDP processes (gloo) of this CPU; median over alternating rounds",
        "command": "python -m deeprecipe.bench.ddp "
        + " ".join(
            [f"--steps {steps} --warmup {warmup} --rounds {rounds} --cores {cores}", *overrides]
        ),
        "device": cpu_name(),
        "torch": torch.__version__,
        "lightning": L.__version__,
        "rounds": rounds,
        "runs": runs,
        "samples_per_s": {"1": one, "2": two},
        "speedup": round(two / one, 3),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="threads in all")
    parser.add_argument("--quick", action="store_true", help="3 steps, 1 round: a smoke test")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--worker", type=int, choices=sorted(TRAINERS), help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    if args.worker is not None:
        worker(args.worker, args.steps, args.warmup, args.overrides, args.result)
        return
    if args.quick:
        args.steps, args.warmup, args.rounds = 3, 1, 1
    out = args.out or (Path(tempfile.mkdtemp(prefix="bench_ddp_")) if args.quick else OUT)
    result = scaling(args.steps, args.warmup, args.rounds, args.cores, args.overrides)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ddp.json").write_text(json.dumps(result, indent=2) + "\n")
    first = result["runs"][1][0]
    threads = {p: result["runs"][p][0]["threads_per_process"] for p in (1, 2)}
    lines = [
        f"Command: `{result['command']}` on {result['device']}, torch {result['torch']}, "
        f"lightning {result['lightning']}; {first['model']} {first['model_args']}, "
        f"{first['data']}, global batch {first['global_batch']}, {first['precision']}.",
        "",
        "| processes | threads each | samples/s (median of rounds) | speedup |",
        "|---|---|---|---|",
        f"| 1 | {threads[1]} | {result['samples_per_s']['1']} | 1.0 |",
        f"| 2 (DDP, gloo) | {threads[2]} | {result['samples_per_s']['2']} | {result['speedup']} |",
    ]
    (out / "ddp.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"Results: {out / 'ddp.json'}")


if __name__ == "__main__":
    main()
