"""Character-level language modelling with truncated backpropagation through time (TBPTT)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from deeprecipe.augment import Pipeline
from deeprecipe.batches import Tokens
from deeprecipe.data.base import training_position
from deeprecipe.data.text import CharVocabulary
from deeprecipe.errors import ConfigError, CorruptDataError
from deeprecipe.methods.optimization import (
    OptimizerFactory,
    SchedulerFactory,
    configure_optimization,
)
from deeprecipe.models.sequence import SequenceBackbone, State, detach_state

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


class LanguageModel(L.LightningModule):
    """Next-character prediction over streams of text, trained with truncated BPTT.

    Each batch is the next chunk of ``B`` parallel streams (:class:`deeprecipe.batches.Tokens`).
    The recurrent state left by one chunk is carried into the next one, detached, so the model
    sees an unbroken history while gradients stop at the chunk boundary; it is reset at the start
    of every epoch (training, validation and test keep separate states). Lightning 2 dropped its
    built-in TBPTT, so this is the whole of it. Gradient clipping, which recurrent nets need, is
    ``trainer.gradient_clip_val``.

    Metrics, per split: cross-entropy in nats (``loss``), bits per character (``bpc`` = loss /
    ln 2), perplexity (``ppl`` = e^loss), all averaged over every character of the epoch, and
    next-character accuracy (``acc``). After every validation epoch of training, a sample
    generated with temperature sampling is logged as text (TensorBoard, W&B) and appended to
    ``samples.txt`` in the run dir. The vocabulary is a buffer, so every checkpoint can decode
    what it generates.

    A sibling of :class:`~deeprecipe.methods.base.BaseMethod` rather than a subclass: that class
    is built around image classification (a head over pooled features, per-channel
    normalization, channels-last layout, image augmentation, class metrics), none of which
    applies to token streams; it shares the optimizer and schedule recipe through
    :func:`~deeprecipe.methods.optimization.configure_optimization`.

    Args:
        backbone: a sequence backbone built for token ids (``vocab_size`` set).
        vocab_size: ids of the vocabulary (the output width); must match the data's.
        optimizer: partial optimizer; called with parameter groups.
        scheduler: partial schedule from :mod:`deeprecipe.schedules`, stepped every iteration.
        augment: must be None or the empty pipeline (``aug=none``): image augmentation does not
            apply to text.
        decay_norm_and_bias: also apply weight decay to norm and bias parameters.
        sample_length: characters generated after each validation epoch (0: none).
        sample_temperature: softmax temperature of that sample (< 1 sharper, > 1 more random).
        sample_prime: text the sample starts from.
    """

    codepoints: Tensor  # (vocab_size,) code point of each id, -1 for <unk> and unused ids
    trained_length: Tensor  # () longest chunk trained on (0: not trained yet)

    def __init__(
        self,
        backbone: SequenceBackbone,
        vocab_size: int,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory,
        augment: nn.Module | None = None,
        decay_norm_and_bias: bool = False,
        sample_length: int = 300,
        sample_temperature: float = 0.8,
        sample_prime: str = "",
    ) -> None:
        super().__init__()
        if not isinstance(backbone, SequenceBackbone):
            raise ConfigError(
                f"method=language_model needs a sequence model, got {type(backbone).__name__}; "
                "choose model=rnn, lstm, gru or char_transformer."
            )
        if backbone.vocab_size != vocab_size:
            raise ConfigError(
                f"The model was built for vocab_size={backbone.vocab_size} but the method for "
                f"{vocab_size}; set both model.vocab_size and method.vocab_size to "
                "${data.vocab_size}."
            )
        if augment is not None and not (isinstance(augment, Pipeline) and not augment.steps):
            raise ConfigError(
                "Image augmentation does not apply to text; use aug=none with "
                "method=language_model."
            )
        if sample_length < 0 or sample_temperature <= 0:
            raise ConfigError(
                f"method.sample_length={sample_length} must be >= 0 and "
                f"method.sample_temperature={sample_temperature} > 0."
            )
        self.backbone = backbone
        self.head = nn.Linear(backbone.num_features, vocab_size)
        self.register_buffer("codepoints", torch.full((vocab_size,), -1, dtype=torch.int64))
        # A Transformer's positions past the chunks it trained on are untrained: sampling rereads
        # at most this many characters. Checkpoints from before it existed load with 0 (unknown).
        self.register_buffer("trained_length", torch.zeros((), dtype=torch.int64))
        self._register_load_state_dict_pre_hook(_default_trained_length)
        self.vocab_size = vocab_size
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.decay_norm_and_bias = decay_norm_and_bias
        self.sample_length = sample_length
        self.sample_temperature = sample_temperature
        self.sample_prime = sample_prime
        # token-weighted mean cross-entropy and next-token accuracy of each split's epoch
        self.train_loss, self.val_loss, self.test_loss = (MeanMetric() for _ in SPLITS)
        self.train_acc, self.val_acc, self.test_acc = (
            MulticlassAccuracy(vocab_size, average="micro", validate_args=False) for _ in SPLITS
        )
        self._states: dict[str, State] = {}  # carried (detached) recurrent state per split
        self._carried: dict[str, Any] | None = None  # training state of a resumed checkpoint

    def setup(self, stage: str) -> None:
        """Take the vocabulary of the datamodule, so that checkpoints carry it."""
        vocabulary = getattr(getattr(self.trainer, "datamodule", None), "vocabulary", None)
        if isinstance(vocabulary, CharVocabulary):
            if vocabulary.size != self.vocab_size:
                raise ConfigError(
                    f"The data has vocab_size={vocabulary.size} but the method was built for "
                    f"{self.vocab_size}; set method.vocab_size=${{data.vocab_size}}."
                )
            self.codepoints.copy_(vocabulary.table())

    # ---------------------------------------------------------------------------- forward
    def forward(self, x: Tensor, state: State = None) -> tuple[Tensor, State]:
        """Next-token logits (B, T, vocab_size) of token ids (B, T), and the new state."""
        features, state = self.backbone.forward_features(x, state)  # (B, T, F)
        return self.head(features), state

    def _step(self, batch: Tokens, split: str) -> Tensor:
        """Loss of one chunk, continuing the split's streams from the state the last chunk left."""
        logits, state = self(batch.x, self._states.get(split))  # (B, T, V)
        self._states[split] = detach_state(state)  # truncation: no gradient into past chunks
        logits, targets = logits.flatten(0, 1), batch.y.flatten()  # (B * T, V), (B * T,)
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()  # the loss in at least fp32 (fp64 runs keep fp64)
        loss = F.cross_entropy(logits, targets)
        getattr(self, f"{split}_loss").update(loss.detach(), targets.numel())
        getattr(self, f"{split}_acc").update(logits.detach(), targets)
        return loss

    def _log_epoch(self, split: str) -> None:
        """Log the split's epoch metrics; training logs its loss per step instead."""
        loss_metric, acc_metric = getattr(self, f"{split}_loss"), getattr(self, f"{split}_acc")
        if not loss_metric.update_called:
            return
        loss = loss_metric.compute()
        metrics = {f"{split}/bpc": loss / math.log(2), f"{split}/ppl": loss.exp()}
        metrics[f"{split}/acc"] = acc_metric.compute()
        if split != "train":
            metrics[f"{split}/loss"] = loss
        self.log_dict(metrics)
        loss_metric.reset()
        acc_metric.reset()

    # --------------------------------------------------------------------------- training
    def on_train_start(self) -> None:
        # resumed mid-epoch (Lightning then calls no on_train_epoch_start): the streams continue
        # from the state they had, as in the uninterrupted run (the loader continues after the
        # chunks already trained on)
        carried, self._carried = self._carried, None
        trainer = self._trainer
        if carried is None or trainer is None:
            return
        if carried["epoch"] == self.current_epoch and (
            0 < carried["batches_done"] < trainer.num_training_batches
        ):
            self._states["train"] = _state_to(carried["state"], self.device)

    def on_train_epoch_start(self) -> None:
        self._states.pop("train", None)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the carried training state with the position it belongs to."""
        where = training_position(self._trainer)
        state = self._states.get("train")
        if where is not None and state is not None:
            epoch, batches_done = where
            checkpoint["carried_state"] = {
                "epoch": epoch,
                "batches_done": batches_done,
                "state": _state_to(state, torch.device("cpu")),
            }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._carried = checkpoint.get("carried_state")

    def training_step(self, batch: Tokens, batch_idx: int) -> Tensor:
        if batch.x.shape[1] > int(self.trained_length):
            self.trained_length.fill_(batch.x.shape[1])
        loss = self._step(batch, "train")
        self.log("train/loss", loss, prog_bar=True, batch_size=batch.y.numel())
        return loss

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    # ----------------------------------------------------------------- validation and test
    def on_validation_epoch_start(self) -> None:
        self._states.pop("val", None)

    def validation_step(self, batch: Tokens, batch_idx: int) -> None:
        self._step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")
        fitting = self.trainer.state.fn == TrainerFn.FITTING  # not a re-validation afterwards
        if not fitting or self.trainer.sanity_checking or self.sample_length == 0:
            return
        if bool((self.codepoints >= 0).any()):  # a vocabulary to decode with
            text = self.generate(self.sample_prime, self.sample_length, self.sample_temperature)
            self._record_sample(text)

    def on_test_epoch_start(self) -> None:
        self._states.pop("test", None)

    def test_step(self, batch: Tokens, batch_idx: int) -> None:
        self._step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    # --------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def generate(self, prime: str, length: int, temperature: float = 1.0, seed: int = 0) -> str:
        """``prime`` followed by ``length`` sampled characters.

        Samples one character at a time from ``softmax(logits / temperature)`` and feeds it back:
        a recurrent model continues from its state; a Transformer rereads its last
        ``context_length`` characters, or fewer: no more than the longest chunk it trained on
        (its later positions never learned anything). ``<unk>`` and unused ids are never
        sampled. An empty prime starts after a newline. ``seed`` makes the sample reproducible
        without touching the global random state.
        """
        if temperature <= 0 or length < 0:
            raise ConfigError(f"temperature={temperature} must be > 0 and length={length} >= 0.")
        allowed = self.codepoints >= 0  # (V,)
        if not bool(allowed.any()):
            raise CorruptDataError(
                "This model has no vocabulary: it was never set up with text data. Sample from "
                "a checkpoint of a language_model run."
            )
        vocabulary = CharVocabulary.from_table(self.codepoints)
        window = self.backbone.context_length
        if window is not None and int(self.trained_length) > 0:
            window = min(window, int(self.trained_length))
        ids = vocabulary.encode(prime or "\n").to(self.device)[None]  # (1, P)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        logits, state = self(ids if window is None else ids[:, -window:])  # (1, P, V)
        sampled = []
        for _ in range(length):
            scores = (logits[0, -1].float() / temperature).masked_fill(~allowed, -math.inf)
            next_id = torch.multinomial(scores.softmax(-1), 1, generator=generator)  # (1,)
            sampled.append(next_id)
            if window is None:
                logits, state = self(next_id[None], state)  # (1, 1, V)
            else:
                ids = torch.cat([ids, next_id[None]], dim=1)[:, -window:]  # (1, <= window)
                logits, _ = self(ids)
        return prime + (vocabulary.decode(torch.cat(sampled)) if sampled else "")

    def _record_sample(self, text: str) -> None:
        header = (
            f"epoch {self.current_epoch}, step {self.global_step}, "
            f"temperature {self.sample_temperature}"
        )
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger):  # markdown: indent to keep line breaks
                logger.experiment.add_text(
                    "samples", "    " + text.replace("\n", "\n    "), self.global_step
                )
            elif isinstance(logger, WandbLogger):
                logger.log_text(
                    "samples",
                    columns=["epoch", "step", "text"],
                    data=[[str(self.current_epoch), str(self.global_step), text]],
                )
        if getattr(self.trainer, "fast_dev_run", False) or not self.trainer.is_global_zero:
            return
        path = Path(self.trainer.default_root_dir) / "samples.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as handle:
            handle.write(f"--- {header}\n{text}\n\n")

    # ------------------------------------------------------------------------- optimizers
    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        return configure_optimization(
            self, self.optimizer_factory, self.scheduler_factory, self.decay_norm_and_bias
        )


def _default_trained_length(
    state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
) -> None:
    """Load-state-dict pre-hook: a checkpoint without ``trained_length`` gets 0 (unknown)."""
    state_dict.setdefault(prefix + "trained_length", torch.zeros((), dtype=torch.int64))


def _state_to(state: State, device: torch.device) -> State:
    if state is None or isinstance(state, Tensor):
        return None if state is None else state.to(device)
    return tuple(part.to(device) for part in state)
