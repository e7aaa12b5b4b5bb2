"""Speed switches on this machine: precision, ``compile`` and channels-last, in training samples/s.

Each configuration trains the default run (or the model and data given as overrides) through the
suite's own ``build`` (Lightning Trainer, default callbacks, no progress bar) for a fixed number
of steps after a warm-up (which also absorbs ``torch.compile``'s compilation), in a fresh
interpreter, on the default accelerator (the GPU where there is one). Rounds alternate the
configurations, because a machine's speed drifts; the table gives the median samples/s over
rounds and the ratio to the first configuration (fp32, eager, channels-last). The defaults of
the suite follow from these numbers (see experiments/bench/README.md).

Usage: ``python -m deeprecipe.bench.switches [--steps 50] [--warmup 15] [--rounds 2]
[--only NAME ...] [--out DIR] [--quick] [OVERRIDE ...]``; results go to
``experiments/bench/switches[-TAG].json`` and ``.md`` (``--tag`` names a variant, e.g. the
model). ``--quick`` (3 steps, 1 round, fp32 configurations only, temporary output) only checks
that the benchmark runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra import compose, initialize_config_dir

from deeprecipe.bench.ddp import StepTimer, cpu_name
from deeprecipe.bench.overhead import OUT, ROOT
from deeprecipe.train import build

# name -> overrides; the first is the reference
CONFIGS: dict[str, list[str]] = {
    "fp32": ["trainer.precision=32-true", "compile=false", "method.channels_last=true"],
    "fp32 NCHW": ["trainer.precision=32-true", "compile=false", "method.channels_last=false"],
    "bf16-mixed": ["trainer.precision=bf16-mixed", "compile=false", "method.channels_last=true"],
    "16-mixed": ["trainer.precision=16-mixed", "compile=false", "method.channels_last=true"],
    "fp32 compile": ["trainer.precision=32-true", "compile=true", "method.channels_last=true"],
    "bf16-mixed compile": [
        "trainer.precision=bf16-mixed",
        "compile=true",
        "method.channels_last=true",
    ],
}
QUICK = ("fp32", "fp32 NCHW")


def device_name() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    return cpu_name()


def worker(name: str, steps: int, warmup: int, overrides: list[str], result: Path) -> None:
    """Train ``warmup + steps`` steps with configuration ``name``; write its samples/s."""
    with tempfile.TemporaryDirectory() as tmp:
        base = [
            f"paths.output_dir={tmp}",
            f"paths.root_dir={ROOT}",
            "run_name=bench",
            "trainer.enable_progress_bar=false",
            "~callbacks.progress_bar",
        ]
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=[*base, *overrides, *CONFIGS[name]])
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
        step_s = statistics.median(timer.seconds)
        record = {
            "config": name,
            "step_ms_median": round(step_s * 1000, 3),
            "samples_per_s": round(cfg.data.batch_size / step_s, 1),
            "batch": cfg.data.batch_size,
            "precision": str(trainer.precision),
            "accelerator": type(trainer.accelerator).__name__,
            "model": cfg.model._target_.rsplit(".", 1)[-1],
            "model_args": {k: str(v) for k, v in cfg.model.items() if k != "_target_"},
        }
        result.write_text(json.dumps(record) + "\n")


def measure(
    names: list[str], steps: int, warmup: int, rounds: int, overrides: list[str]
) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    failed: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(rounds):
            for name in names:
                if name in failed:
                    continue
                result = Path(tmp, f"{round_index}_{names.index(name)}.json")
                command = [sys.executable, "-m", "deeprecipe.bench.switches", "--worker", name]
                command += ["--steps", str(steps), "--warmup", str(warmup)]
                command += ["--result", str(result), *overrides]
                done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
                if done.returncode != 0:  # e.g. 16-mixed on a CPU: recorded, not fatal
                    failed[name] = done.stderr.strip().splitlines()[-1][:300]
                    continue
                runs[name].append(json.loads(result.read_text()))
    medians = {
        name: statistics.median(r["samples_per_s"] for r in records)
        for name, records in runs.items()
        if records
    }
    reference = medians.get(names[0])
    return {
        "what": "training samples/s through the suite's Trainer per speed switch; median over "
        "alternating rounds, each configuration in a fresh process",
        "command": "python -m deeprecipe.bench.switches "
        + " ".join([f"--steps {steps} --warmup {warmup} --rounds {rounds}", *overrides]),
        "device": device_name(),
        "torch": torch.__version__,
        "lightning": L.__version__,
        "runs": runs,
        "samples_per_s": medians,
        "vs_first": {n: round(v / reference, 3) for n, v in medians.items()} if reference else {},
        "failed": failed,
    }


def markdown(result: dict[str, Any]) -> str:
    first = next(iter(r[0] for r in result["runs"].values() if r), None)
    what = f"{first['model']} {first['model_args']}, batch {first['batch']}" if first else ""
    lines = [
        f"Command: `{result['command']}` on {result['device']}, torch {result['torch']}, "
        f"lightning {result['lightning']}; {what}.",
        "",
        "| configuration | samples/s (median of rounds) | vs first row |",
        "|---|---|---|",
    ]
    for name, value in result["samples_per_s"].items():
        lines.append(f"| {name} | {value} | {result['vs_first'].get(name, '')} |")
    for name, why in result["failed"].items():
        lines.append(f"| {name} | failed: {why} | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", nargs="*", choices=sorted(CONFIGS), default=None)
    parser.add_argument("--tag", default="", help="suffix of the output files")
    parser.add_argument("--quick", action="store_true", help="3 steps, 1 round: a smoke test")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--worker", choices=sorted(CONFIGS), help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    if args.worker is not None:
        worker(args.worker, args.steps, args.warmup, args.overrides, args.result)
        return
    names = list(args.only or CONFIGS)
    if args.quick:
        args.steps, args.warmup, args.rounds = 3, 1, 1
        names = [n for n in names if n in QUICK] or list(QUICK)
    out = args.out or (Path(tempfile.mkdtemp(prefix="bench_switches_")) if args.quick else OUT)
    result = measure(names, args.steps, args.warmup, args.rounds, args.overrides)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"switches-{args.tag}" if args.tag else "switches"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    (out / f"{stem}.md").write_text(table)
    print(table)
    print(f"Results: {out / (stem + '.json')}")


if __name__ == "__main__":
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(tempfile.gettempdir(), "inductor")))
    main()
