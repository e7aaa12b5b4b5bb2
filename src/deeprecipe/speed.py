"""Speed defaults chosen by what the hardware does fast (measured in ``make bench``)."""

from __future__ import annotations

import functools

import torch


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 matrix instructions (AVX512-BF16 or AMX).

    Without them, oneDNN emulates bf16 and autocast makes convolutions ~10x slower (measured on an
    AVX2-only EPYC: ResNet-9 width 16 fell from 1,240 to 100 images/s).
    """
    try:
        with open("/proc/cpuinfo") as handle:
            flags = handle.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def fastest_precision() -> str:
    """Lightning precision string that trains fastest here without hurting accuracy."""
    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_fast_bf16() else "32-true"
