"""Validation of augmentation arguments: a bad value raises :class:`ConfigError` naming its key."""

from __future__ import annotations

from collections.abc import Sequence

from deeprecipe.errors import ConfigError


def check_probability(owner: str, key: str, value: float) -> float:
    """``value`` as a float if it lies in [0, 1]; else a ConfigError naming ``key``."""
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{owner} {key}={value}; it must be in [0, 1].")
    return float(value)


def check_interval(
    owner: str, key: str, value: Sequence[float], low: float, high: float
) -> tuple[float, float]:
    """A ``[min, max]`` pair with ``low <= min <= max <= high``, as a tuple of floats."""
    if len(value) != 2 or not low <= value[0] <= value[1] <= high:
        raise ConfigError(
            f"{owner} {key}={list(value)}; it must be [min, max] with "
            f"{low} <= min <= max <= {high}."
        )
    return float(value[0]), float(value[1])
