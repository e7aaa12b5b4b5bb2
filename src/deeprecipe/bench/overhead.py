"""The suite's training-step overhead over a plain PyTorch loop.

Both loops train the same model (a copy with the same initial weights), with the same optimizer,
schedule, augmentation and batches, in one process, interleaved in blocks so that machine load
drifts affect both alike:

- **suite**: the default run as ``python run.py`` builds it (Lightning Trainer, the default
  callbacks and loggers, metrics, progress bar), timed between consecutive batch starts;
- **plain**: a hand-written loop (fetch, to device, uint8 to float, augment, normalize,
  forward, loss, backward, optimizer and scheduler step).

The verdict is the median, over adjacent pairs of blocks, of the ratio of their mean step times
(machine speed drifts by up to 20% within minutes here, so only adjacent blocks compare); it must
be at most 1.03. The ratio of the two overall medians is reported too. Results go to
``experiments/bench/overhead.json`` and a Markdown line in ``experiments/bench/overhead.md``.

Usage: ``python -m deeprecipe.bench.overhead [--blocks 60] [--block-steps 2] [OVERRIDE ...]``; the
overrides are Hydra overrides of the default config (e.g. ``model=resnet18``).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from deeprecipe.methods.base import BaseMethod
from deeprecipe.methods.optimization import parameter_groups
from deeprecipe.train import build

ROOT = Path(__file__).resolve().parents[3]
OUT = ROOT / "experiments" / "bench"


class PlainLoop:
    """The hand-written reference: the same work as the suite's step, nothing else."""

    def __init__(self, method: BaseMethod, loader: torch.utils.data.DataLoader, precision: str):
        self.backbone = copy.deepcopy(method.backbone)
        self.head = copy.deepcopy(method.head)
        self.augment = method.augment
        self.mean, self.std = method.normalize.mean.clone(), method.normalize.std.clone()
        self.channels_last = method.channels_last
        modules = torch.nn.ModuleList([self.backbone, self.head]).train()
        weight_decay = getattr(method.optimizer_factory, "keywords", {}).get("weight_decay", 0.0)
        self.optimizer = method.optimizer_factory(
            parameter_groups(modules, weight_decay, method.decay_norm_and_bias)
        )
        self.scheduler = method.scheduler_factory(
            self.optimizer, total_steps=10**6, steps_per_epoch=len(loader)
        )
        self.loader = loader
        self.batches = iter(loader)
        self.device = method.device
        self.autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if precision.startswith("bf16")
            else nullcontext()
        )

    def step(self) -> float:
        start = time.perf_counter()
        try:
            batch = next(self.batches)
        except StopIteration:
            self.batches = iter(self.loader)
            batch = next(self.batches)
        x = batch.x.to(self.device, non_blocking=True).float().div_(255)
        y = batch.y.to(self.device, non_blocking=True)
        x = self.augment(x) if self.augment is not None else x
        x = (x - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.autocast:
            loss = F.cross_entropy(self.head(self.backbone.forward_features(x)), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()  # a no-op on the CPU; keeps GPU timings honest
        return time.perf_counter() - start


class Interleave(L.Callback):
    """Times the suite's steps and, every ``block_steps`` batches, runs a block of plain steps."""

    def __init__(self, block_steps: int, warmup_steps: int) -> None:
        self.datamodule: L.LightningDataModule | None = None  # set once built
        self.block_steps = block_steps
        self.warmup_steps = warmup_steps
        self.suite: list[float] = []
        self.plain: list[float] = []
        self.block_ratios: list[float] = []  # suite / plain mean step time of adjacent blocks
        self._suite_block: list[float] = []
        self._plain_block: list[float] = []
        self.loop: PlainLoop | None = None
        self._last: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert isinstance(pl_module, BaseMethod) and self.datamodule is not None
        loader = self.datamodule.train_dataloader()  # its own loader over the same data
        self.loop = PlainLoop(pl_module, loader, str(trainer.precision))

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        now = time.perf_counter()
        step = trainer.global_step
        if self._last is not None and step > self.warmup_steps:
            self.suite.append(now - self._last)
            self._suite_block.append(now - self._last)
        if step >= self.warmup_steps and step % self.block_steps == 0:
            assert self.loop is not None
            if self._plain_block and self._suite_block:
                self.block_ratios.append(
                    statistics.mean(self._suite_block) / statistics.mean(self._plain_block)
                )
            self._plain_block = [self.loop.step() for _ in range(self.block_steps)]
            self._suite_block = []
            if step > 0:
                self.plain += self._plain_block
        self._last = time.perf_counter()


def overhead(blocks: int, block_steps: int, overrides: list[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        base = [f"paths.output_dir={tmp}", f"paths.root_dir={ROOT}", "run_name=bench"]
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=base + overrides)
        L.seed_everything(cfg.seed)
        warmup = 3
        timer = Interleave(block_steps, warmup)
        total = warmup + (blocks + 1) * block_steps
        datamodule, method, trainer = build(
            cfg,
            extra_callbacks=(timer,),
            max_steps=total,
            max_epochs=-1,
            limit_val_batches=0,
            num_sanity_val_steps=0,
        )
        timer.datamodule = datamodule
        trainer.fit(method, datamodule=datamodule)
    suite_ms = statistics.median(timer.suite) * 1000
    plain_ms = statistics.median(timer.plain) * 1000
    batch_size = cfg.data.batch_size
    return {
        "what": "median training-step time: suite (Lightning, default callbacks and loggers) "
        "vs a plain PyTorch loop, same model and batches, interleaved in one process",
        "command": "python -m deeprecipe.bench.overhead " + " ".join(overrides),
        "model": cfg.model._target_.rsplit(".", 1)[-1],
        "model_args": {k: v for k, v in cfg.model.items() if k != "_target_"},
        "data": cfg.data._target_.rsplit(".", 1)[-1],
        "batch_size": batch_size,
        "precision": str(trainer.precision),
        "device": device_name(),
        "torch": torch.__version__,
        "lightning": L.__version__,
        "steps_each": {"suite": len(timer.suite), "plain": len(timer.plain)},
        "suite_step_ms_mean": round(statistics.mean(timer.suite) * 1000, 2),
        "plain_step_ms_mean": round(statistics.mean(timer.plain) * 1000, 2),
        "suite_step_ms": round(suite_ms, 2),
        "plain_step_ms": round(plain_ms, 2),
        "suite_samples_per_s": round(batch_size / suite_ms * 1000, 1),
        "plain_samples_per_s": round(batch_size / plain_ms * 1000, 1),
        "ratio_of_medians": round(suite_ms / plain_ms, 4),
        # machine speed drifts by 20% here within minutes: the verdict uses adjacent blocks
        "ratio": round(statistics.median(timer.block_ratios), 4),
        "blocks": len(timer.block_ratios),
        "target_ratio_max": 1.03,
    }


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--blocks", type=int, default=60)
    parser.add_argument("--block-steps", type=int, default=2)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    result = overhead(args.blocks, args.block_steps, args.overrides)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    verdict = "PASS" if result["ratio"] <= result["target_ratio_max"] else "FAIL"
    line = (
        f"| overhead | {result['model']} {result['model_args']} bs {result['batch_size']} "
        f"{result['precision']} | {result['device']} | suite {result['suite_step_ms']} ms "
        f"({result['suite_samples_per_s']}/s) | plain {result['plain_step_ms']} ms "
        f"({result['plain_samples_per_s']}/s) | ratio {result['ratio']} (<= 1.03: {verdict}) |"
    )
    header = "| bench | config | device | suite | plain | ratio |\n|---|---|---|---|---|---|\n"
    (args.out / "overhead.md").write_text(
        f"Command: `{result['command']}`\n\n" + header + line + "\n"
    )
    print(line)


if __name__ == "__main__":
    main()
