"""Temporal order verification (Shuffle and Learn, Misra et al. 2016): is this frame tuple in order?

From each clip a tuple of frames is drawn either in temporal order or with its middle frame
swapped for one from outside the tuple's span, and a binary head on the backbone's features tells
the two apart. Telling them apart needs a model of how things move, which is what the
spatio-temporal layers of a video backbone should learn before fine-tuning on actions.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deeprecipe.batches import Labeled, Unlabeled
from deeprecipe.errors import ConfigError
from deeprecipe.methods.base import BaseMethod, OptimizerFactory, SchedulerFactory
from deeprecipe.models.base import Backbone

IN_ORDER, SHUFFLED = 1, 0  # the binary labels: class 1 = frames in temporal order
ENCODINGS = ("clip", "frames")
_SEED_STRIDE = 1_000_003  # keeps the per-batch seeds of different tuple_seed values apart


def sample_tuples(
    num_frames: int,
    count: int,
    tuple_len: int,
    min_gap: int,
    reverse: bool,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """Frame indices of ``count`` tuples into clips of ``num_frames`` frames, and their labels.

    As in Shuffle and Learn, ``tuple_len + 2`` sorted frames ``f_0 < ... < f_{n+1}`` at least
    ``min_gap`` apart are drawn; the positive is the inner ``f_1 .. f_n`` and the negative the same
    tuple with its middle frame replaced by ``f_0`` or ``f_{n+1}`` (for n = 3: ``(b, a, d)`` or
    ``(b, e, d)``). The negative then differs from the positive in one frame only, so a model
    cannot tell them apart by appearance (which frames) but only by order; and its middle frame is
    a local extremum of time, so a negative is never monotone. Half the tuples are positives.

    With ``reverse`` (the paper's convention) every tuple is played backwards with probability
    1/2 and keeps its label: a reversed positive counts as in order, because many motions look
    plausible both ways and the task is about temporal coherence, not direction. Without it,
    positives always run forwards (and only a forward tuple is "in order").

    Everything is drawn with ``generator`` on its device. Returns int64 indices
    ``(count, tuple_len)`` and labels ``(count,)`` (1: in order, 0: shuffled).
    """
    if tuple_len < 3:
        raise ConfigError(
            f"method.tuple_len={tuple_len}; a shuffled tuple needs a middle frame: use >= 3."
        )
    if min_gap < 1:
        raise ConfigError(f"method.min_gap={min_gap}; frames of a tuple must differ: use >= 1.")
    drawn = tuple_len + 2
    needed = (drawn - 1) * min_gap + 1
    if needed > num_frames:
        raise ConfigError(
            f"A tuple of {tuple_len} frames (plus the 2 outer frames of its negatives) "
            f"{min_gap} apart spans {needed} frames but the clips have {num_frames}; raise "
            "data.num_frames or lower method.tuple_len / method.min_gap."
        )
    device = generator.device
    # `drawn` distinct sorted values of range(free), spread by (min_gap - 1) after each: uniform
    # over all index sets with gaps >= min_gap
    free = num_frames - (drawn - 1) * (min_gap - 1)
    order = torch.rand(count, free, generator=generator, device=device).argsort(dim=1)
    chosen = order[:, :drawn].sort(dim=1).values  # (count, drawn)
    chosen = chosen + torch.arange(drawn, device=device) * (min_gap - 1)
    positive = chosen[:, 1:-1]  # (count, tuple_len)
    outside = torch.where(
        torch.rand(count, generator=generator, device=device) < 0.5, chosen[:, 0], chosen[:, -1]
    )
    negative = positive.clone()
    negative[:, tuple_len // 2] = outside
    labels = (torch.rand(count, generator=generator, device=device) < 0.5).long()
    indices = torch.where(labels[:, None] == IN_ORDER, positive, negative)
    # drawn either way, so that reverse changes only the playing direction, not the tuples
    flip = torch.rand(count, generator=generator, device=device) < 0.5
    if reverse:
        indices = torch.where(flip[:, None], indices.flip(1), indices)
    return indices, labels


def gather_frames(clips: Tensor, indices: Tensor) -> Tensor:
    """Clips ``(B, C, T, H, W)`` and frame indices ``(B, n)`` -> tuples ``(B, C, n, H, W)``."""
    batch, channels, _, height, width = clips.shape
    index = indices[:, None, :, None, None].expand(batch, channels, -1, height, width)
    return clips.gather(2, index)


class TemporalOrder(BaseMethod):
    """A pretext task on unlabelled video: a binary head tells in-order from shuffled tuples.

    Each training clip yields one tuple (:func:`sample_tuples`), in order or shuffled with equal
    chance. Two encodings of a tuple:

    - ``clip`` (default): the tuple is a short clip ``(B, C, n, H, W)`` through a video backbone
      (R3D / R(2+1)D small take n = 3: their stride-2 temporal convolutions shrink 3 -> 2 -> 1
      frames), whose pooled features feed the linear head. The temporal convolutions themselves
      then learn order, and transfer as ``pretrained=PATH`` to action recognition.
    - ``frames``: the paper's siamese design; each frame goes through the backbone as a 1-frame
      clip and the head reads the concatenated frame features ``(B, n F)``. It works with any
      backbone, a per-frame 2-D encoder (model=frame2d) included, whose time-averaged clip
      features could not see order at all.

    The head is BaseMethod's classifier with 2 classes (``num_classes: 2``: in order, shuffled),
    zero-initialized, so the first loss is log 2. The data carry no labels (``y_hidden`` of
    data=video_clips is the source video), so ``val/acc`` is the order accuracy on validation
    clips (chance 50%), with tuples drawn from a fixed seed per validation batch: the same
    tuples every epoch, so epochs compare. Training tuples are seeded per step from
    ``tuple_seed`` and the global step, drawn on the device. No augmentation (aug=none): the
    image augmentations take (B, C, H, W).

    Args:
        tuple_len: frames per tuple (>= 3); the clips need ``(tuple_len + 1) * min_gap + 1``
            frames (data.num_frames).
        min_gap: minimum distance in clip frames between the drawn frames (the data's stride
            spaces clip frames further apart in the video).
        reverse: play a random half of the tuples backwards, keeping their labels (see
            :func:`sample_tuples`).
        encoding: ``clip`` or ``frames`` (above).
        tuple_seed: seed of the tuple draws, independent of the run seed.
        See :class:`BaseMethod` for the rest.
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        in_chans: int,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory,
        augment: nn.Module | None = None,
        channels_last: bool = False,
        decay_norm_and_bias: bool = False,
        tuple_len: int = 3,
        min_gap: int = 1,
        reverse: bool = True,
        encoding: str = "clip",
        tuple_seed: int = 0,
    ) -> None:
        if num_classes != 2:
            raise ConfigError(
                f"method.num_classes={num_classes}; temporal order verification is binary (in "
                "order / shuffled): set method.num_classes=2 (conf/method/temporal_order.yaml)."
            )
        if encoding not in ENCODINGS:
            raise ConfigError(
                f"method.encoding={encoding!r}; choose one of {', '.join(ENCODINGS)}."
            )
        super().__init__(
            backbone,
            num_classes,
            in_chans,
            optimizer,
            scheduler,
            augment=augment,
            channels_last=channels_last,
            decay_norm_and_bias=decay_norm_and_bias,
        )
        if encoding == "frames":  # the head reads the concatenated frame features
            self.head = nn.Linear(tuple_len * backbone.num_features, num_classes)
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        self.tuple_len = tuple_len
        self.min_gap = min_gap
        self.reverse = reverse
        self.encoding = encoding
        self.tuple_seed = tuple_seed

    # ----------------------------------------------------------------------------- tuples
    def _generator(self, offset: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(
            self.tuple_seed * _SEED_STRIDE + offset
        )

    def make_tuples(
        self, clips: Tensor, generator: torch.Generator, share: tuple[int, int] = (0, 1)
    ) -> Labeled:
        """Normalized clips ``(B, C, T, H, W)`` -> a Labeled batch of tuples and order labels.

        ``share=(rank, world)``: the clips are this process's share (every world-th clip,
        from ``rank``) of a global batch of ``world * B``; the tuples are drawn for the global
        batch and the same share is kept, so the global batch's tuples do not depend on the
        number of processes (and the ranks do not repeat one label pattern).
        """
        if clips.ndim != 5:
            raise ConfigError(
                f"method=temporal_order takes video clips (B, C, T, H, W) but got shape "
                f"{tuple(clips.shape)}; use a video data config (data=video_clips)."
            )
        rank, world = share
        indices, labels = sample_tuples(
            clips.shape[2],
            world * len(clips),
            self.tuple_len,
            self.min_gap,
            self.reverse,
            generator,
        )
        indices, labels = indices[rank::world], labels[rank::world]
        return Labeled(gather_frames(clips, indices), labels)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Unlabelled uint8 clips -> normalized float clips (no augmentation: video)."""
        if isinstance(batch, Unlabeled):
            return Unlabeled(self.prepare_images(batch.x, augment=False), batch.y_hidden)
        return super().on_after_batch_transfer(batch, dataloader_idx)

    # ---------------------------------------------------------------------------- forward
    def tuple_features(self, tuples: Tensor) -> Tensor:
        """Tuples ``(B, C, n, H, W)`` -> features ``(B, F)`` (clip) or ``(B, n F)`` (frames)."""
        if self.encoding == "clip":
            return self.backbone.forward_features(tuples)
        batch, channels, frames, height, width = tuples.shape
        singles = tuples.transpose(1, 2).reshape(batch * frames, channels, 1, height, width)
        return self.backbone.forward_features(singles).view(batch, -1)  # frame-major per tuple

    def forward(self, x: Tensor) -> Tensor:
        """In-order / shuffled logits ``(B, 2)`` of normalized tuples ``(B, C, n, H, W)``."""
        return self.head(self.tuple_features(x))

    # ------------------------------------------------------------------------ steps
    def training_step(self, batch: Unlabeled, batch_idx: int) -> Tensor:
        trainer = self._trainer
        share = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        tuples = self.make_tuples(batch.x, self._generator(2 * self.global_step + 1), share)
        logits = self(tuples.x)  # (B, 2)
        loss = F.cross_entropy(logits, tuples.y)
        self.train_metrics.update(logits.detach(), tuples.y)  # train/acc, once per epoch
        self.log("train/loss", loss, prog_bar=True, batch_size=len(tuples.y))
        return loss

    def _eval_tuples(self, batch: Unlabeled, batch_idx: int) -> Labeled:
        # even offsets: apart from the (odd) training draws, and the same every epoch
        return self.make_tuples(batch.x, self._generator(2 * batch_idx))

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(
            self._eval_tuples(batch, batch_idx), self.val_metrics, self.val_acc_tta, "val/"
        )

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(
            self._eval_tuples(batch, batch_idx), self.test_metrics, self.test_acc_tta, "test/"
        )
