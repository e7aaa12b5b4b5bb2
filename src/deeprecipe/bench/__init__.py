"""`make bench`: speed measurements written to experiments/bench/ (JSON + Markdown).

- :mod:`deeprecipe.bench.overhead`: the suite's training step against a plain PyTorch loop;
- :mod:`deeprecipe.bench.augment`: batched on-device augmentation against per-image
  torchvision v2 transforms in DataLoader workers;
- :mod:`deeprecipe.bench.ddp`: training throughput on 1 process against 2 DDP processes.

``python -m deeprecipe.bench`` runs them all.
"""
