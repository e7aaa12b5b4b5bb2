"""Augmentation throughput: batched on the device against per image in DataLoader workers.

For the ``strong`` and ``simclr`` presets, on batches of 256 real Fashion-MNIST images
(1 x 28 x 28, and the same images padded to 32 x 32 and repeated to 3 channels, so colour ops
have work to do):

- **batched**: the preset's :class:`deeprecipe.augment.Pipeline` on a whole uint8 batch in the
  training process (uint8 -> float, then every op with per-image random parameters), as
  ``BaseMethod.on_after_batch_transfer`` runs it;
- **per image**: the same operations as torchvision v2 transforms, applied image by image in a
  DataLoader with ``num_workers`` worker processes (all cores by default), the usual way.

Images per second for each; the batched path must be at least 5x faster. Results go to
``experiments/bench/augment.json`` and ``experiments/bench/augment.md``.

Usage: ``python -m deeprecipe.bench.augment [--batches 20] [--workers N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from deeprecipe.bench.overhead import OUT, ROOT, device_name
from deeprecipe.data.fashion_mnist import DEBIAN_ROOT, load_split

BATCH = 256


def per_image_transform(preset: str, size: int) -> v2.Compose:
    """torchvision v2 equivalents of the preset's operations and parameters (conf/aug/)."""
    if preset == "strong":
        ops: list[Any] = [
            v2.RandomCrop(size, padding=2),
            v2.RandomHorizontalFlip(),
            v2.RandAugment(num_ops=2, magnitude=9),
            v2.ToDtype(torch.float32, scale=True),
            v2.RandomErasing(p=0.25, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0),
        ]
    elif preset == "simclr":
        ops = [
            v2.RandomResizedCrop(size, scale=(0.2, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            v2.RandomGrayscale(p=0.2),
            v2.RandomApply([v2.GaussianBlur(3, sigma=(0.1, 2.0))], p=0.5),
            v2.ToDtype(torch.float32, scale=True),
        ]
    else:
        raise ValueError(f"no per-image equivalent written for preset {preset!r}")
    return v2.Compose(ops)


class TransformedImages(Dataset):
    """uint8 (C, H, W) images transformed one at a time, as a classic dataset does."""

    def __init__(self, images: torch.Tensor, transform: v2.Compose) -> None:
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(self.images[index])


def load_images(channels: int) -> torch.Tensor:
    """Real Fashion-MNIST training images as uint8 (N, C, H, W): 1x28x28 or 3x32x32."""
    images = load_split(Path(DEBIAN_ROOT), "train").images[:20_000]  # (N, 1, 28, 28)
    if channels == 3:
        images = F.pad(images, (2, 2, 2, 2)).repeat(1, 3, 1, 1)  # (N, 3, 32, 32)
    return images


def batched_rate(pipeline: torch.nn.Module, images: torch.Tensor, batches: int) -> float:
    times = []
    for index in range(batches + 2):
        start = time.perf_counter()
        batch = images[index * BATCH : (index + 1) * BATCH]
        pipeline(batch.float().div_(255))
        if index >= 2:  # warm-up
            times.append(time.perf_counter() - start)
    return BATCH / statistics.median(times)


def per_image_rate(
    transform: v2.Compose, images: torch.Tensor, batches: int, workers: int
) -> float:
    loader = DataLoader(
        TransformedImages(images, transform),
        batch_size=BATCH,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    iterator = iter(loader)
    for _ in range(2):  # warm-up: start the workers
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * BATCH / (time.perf_counter() - start)


def measure(batches: int, workers: int) -> dict[str, Any]:
    torch.manual_seed(0)
    rows: list[dict[str, Any]] = []
    for channels, size in ((1, 28), (3, 32)):
        images = load_images(channels)
        for preset in ("strong", "simclr"):
            with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
                cfg = compose("config", overrides=[f"aug={preset}"])
            pipeline = instantiate(cfg.aug)
            batched = batched_rate(pipeline, images, batches)
            per_image = per_image_rate(per_image_transform(preset, size), images, batches, workers)
            rows.append(
                {
                    "preset": preset,
                    "images": f"{channels}x{size}x{size}",
                    "batched_images_per_s": round(batched, 1),
                    "per_image_images_per_s": round(per_image, 1),
                    "speedup": round(batched / per_image, 2),
                }
            )
    return {
        "what": "augmentation throughput, batch 256: preset Pipeline batched in the training "
        "process vs torchvision v2 per image in DataLoader workers",
        "command": "python -m deeprecipe.bench.augment",
        "device": device_name(),
        "per_image_workers": workers,
        "torch": torch.__version__,
        "rows": rows,
        "target_speedup_min": 5.0,
        "pass": all(row["speedup"] >= 5.0 for row in rows),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    result = measure(args.batches, args.workers)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "augment.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"Command: `{result['command']}` on {result['device']}; per-image path with "
        f"{args.workers} DataLoader workers.",
        "",
        "| preset | images | batched (images/s) | per image (images/s) | speedup (>= 5) |",
        "|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['preset']} | {row['images']} | {row['batched_images_per_s']} | "
            f"{row['per_image_images_per_s']} | {row['speedup']}x |"
        )
    (args.out / "augment.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
