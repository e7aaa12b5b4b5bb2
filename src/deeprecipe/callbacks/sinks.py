"""Where the diagnostics callbacks send what they measure: scalars and images.

Scalars go straight to every logger of the trainer at the current step (not through
``LightningModule.log``, which would drop values between ``log_every_n_steps``). Images go to
the loggers that take images (W&B ``log_image``, TensorBoard ``add_image``); when none does,
they are saved as PNG files under ``plots/diag/`` in the run dir.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
from lightning.pytorch.loggers import TensorBoardLogger

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def log_scalars(trainer: L.Trainer, metrics: dict[str, float]) -> None:
    """Send ``metrics`` to every logger at the trainer's global step."""
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)


def log_image(trainer: L.Trainer, key: str, image: np.ndarray) -> Path | None:
    """Log an RGB image (H, W, 3) uint8 under ``key``; return the PNG path when saved to disk."""
    logged = False
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, image, trainer.global_step, dataformats="HWC")
            logged = True
        elif callable(getattr(logger, "log_image", None)):  # WandbLogger and look-alikes
            logger.log_image(key=key, images=[image], step=trainer.global_step)  # type: ignore[attr-defined]
            logged = True
    if logged or not trainer.is_global_zero:
        return None
    folder = Path(trainer.default_root_dir) / "plots" / "diag"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key.replace('/', '_')}_step{trainer.global_step:06d}.png"
    pyplot().imsave(path, image)
    return path


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (safe without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def new_figure(**kwargs: Any) -> tuple[Figure, Any]:
    """``plt.subplots(**kwargs)``: a figure and its axes."""
    return pyplot().subplots(**kwargs)


def figure_to_image(figure: Figure) -> np.ndarray:
    """Render and close a matplotlib figure; return its pixels (H, W, 3) uint8."""
    figure.canvas.draw()
    pixels = np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()  # type: ignore[attr-defined]
    pyplot().close(figure)
    return pixels
