"""kNN monitor: classify validation images by their nearest training images in feature space."""

from __future__ import annotations

from collections.abc import Iterable

import lightning as L
import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor
from torch.utils.data import DataLoader
from torchmetrics.utilities.distributed import gather_all_tensors

from deeprecipe.batches import Labeled
from deeprecipe.distributed import is_distributed
from deeprecipe.errors import ConfigError
from deeprecipe.methods.base import BaseMethod


def knn_predict(
    features: Tensor,
    bank_features: Tensor,
    bank_labels: Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
) -> Tensor:
    """Weighted kNN vote of InstDisc (Wu et al. 2018) -> predicted labels (Q,).

    Queries ``features`` (Q, D) and the bank ``bank_features`` (N, D) are compared by cosine
    similarity; each of a query's ``k`` most similar bank items votes for its label
    ``bank_labels`` (N,) with weight ``exp(similarity / temperature)``. Queries are processed
    ``chunk_size`` at a time so that the (chunk, N) similarity matrix stays small.
    """
    bank = F.normalize(bank_features, dim=1)  # (N, D)
    k = min(k, len(bank))
    predictions = []
    for queries in F.normalize(features, dim=1).split(chunk_size):  # (chunk, D)
        similarity, index = (queries @ bank.T).topk(k, dim=1)  # (chunk, k) each
        weights = (similarity / temperature).exp()  # (chunk, k)
        votes = F.one_hot(bank_labels[index], num_classes).to(weights.dtype)  # (chunk, k, C)
        scores = (weights[:, :, None] * votes).sum(dim=1)  # (chunk, C)
        predictions.append(scores.argmax(dim=1))
    return torch.cat(predictions)


def knn_accuracy(
    features: Tensor,
    labels: Tensor,
    bank_features: Tensor,
    bank_labels: Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
) -> Tensor:
    """kNN accuracy () of the queries against the bank, over all processes under DDP.

    Each process passes its own shard of queries ``features`` (Q_r, D) with ``labels`` (Q_r,)
    and of the bank (N_r, D), (N_r,); shards may differ in size. The bank shards are gathered,
    so every query votes among the neighbours of the whole bank, and the counts of correct
    queries are summed, so the result is that of one process holding all the data.
    """
    if is_distributed():
        bank_features = torch.cat(gather_all_tensors(bank_features.contiguous()))  # (N, D)
        bank_labels = torch.cat(gather_all_tensors(bank_labels.contiguous()))  # (N,)
    predicted = knn_predict(features, bank_features, bank_labels, num_classes, k, temperature)
    counts = torch.stack([(predicted == labels).sum(), labels.new_tensor(len(labels))]).float()
    if is_distributed():
        dist.all_reduce(counts)  # (correct, total) of all processes
    return counts[0] / counts[1].clamp_min(1)


def shard_loader(loader: Iterable[Labeled], world_size: int, rank: int) -> Iterable[Labeled]:
    """The whole dataset of ``loader`` in order, unaugmented, this process's 1/world share.

    Shards do not overlap and cover every item once (no padding, no ``drop_last``), whatever
    sampler the loader itself uses (the training loader shuffles and drops its last batch).
    """
    if not isinstance(loader, DataLoader):
        raise ConfigError(
            "callbacks.knn needs a datamodule whose train and val dataloaders are plain "
            f"DataLoaders (got {type(loader).__name__}); drop callbacks.knn for this data."
        )
    shards = None
    if world_size > 1:
        shards = UnrepeatedDistributedSampler(loader.dataset, world_size, rank, shuffle=False)
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=shards,
        collate_fn=loader.collate_fn,
        num_workers=loader.num_workers,
        pin_memory=loader.pin_memory,
    )


class KNNMonitor(L.Callback):
    """Log ``val/knn_acc``: kNN accuracy of the backbone's features, training split as the bank.

    Needs no training of its own, so it measures a self-supervised representation during
    pretraining without labels entering the loss. Every ``every_n_epochs`` validation epochs the
    backbone embeds the datamodule's training split (its training loader, unaugmented) and its
    validation split with the norm layers in eval mode (running statistics, not those of the
    batch); the modes are restored afterwards. The cost is one forward pass over both splits.
    Under DDP each process embeds its share of both splits and :func:`knn_accuracy` gathers the
    bank, so the accuracy is that of one process, at 1/world of the cost.

    Args:
        every_n_epochs: run after every n-th validation epoch of training (never in the sanity
            check); a stand-alone validation (``trainer.validate``, as in a run's final
            evaluation, or a linear probe's) always runs it.
        k: neighbours that vote (InstDisc: 200).
        temperature: sharpness of the similarity weights (InstDisc: 0.1).
    """

    def __init__(self, every_n_epochs: int = 1, k: int = 200, temperature: float = 0.1) -> None:
        if every_n_epochs < 1:
            raise ConfigError(f"callbacks.knn.every_n_epochs={every_n_epochs}; it must be >= 1.")
        if k < 1:
            raise ConfigError(f"callbacks.knn.k={k}; it must be >= 1.")
        if temperature <= 0:
            raise ConfigError(f"callbacks.knn.temperature={temperature}; it must be > 0.")
        self.every_n_epochs = every_n_epochs
        self.k = k
        self.temperature = temperature

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        fitting = trainer.state.fn == TrainerFn.FITTING
        if fitting and (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        if not isinstance(pl_module, BaseMethod):
            raise ConfigError("callbacks.knn needs a method with a backbone (a BaseMethod).")
        datamodule = trainer.datamodule  # type: ignore[attr-defined]
        world, rank = trainer.world_size, trainer.global_rank
        with trainer.precision_plugin.forward_context():
            train = shard_loader(datamodule.train_dataloader(), world, rank)
            bank_features, bank_labels = self.embed(pl_module, train)
            val = shard_loader(datamodule.val_dataloader(), world, rank)
            features, labels = self.embed(pl_module, val)
        accuracy = knn_accuracy(
            features,
            labels,
            bank_features,
            bank_labels,
            pl_module.num_classes,
            self.k,
            self.temperature,
        )
        # the same global value on every rank: sync_dist only keeps Lightning from warning
        pl_module.log("val/knn_acc", accuracy, sync_dist=True)

    @torch.no_grad()
    def embed(self, method: BaseMethod, batches: Iterable[Labeled]) -> tuple[Tensor, Tensor]:
        """Backbone features (N, F) and labels (N,) of every batch, norm layers in eval mode."""
        modes = {module: module.training for module in method.backbone.modules()}
        method.backbone.eval()
        features, labels = [], []
        try:
            for batch in batches:
                x = method.prepare_images(batch.x.to(method.device), augment=False)  # (B, C, H, W)
                features.append(method.backbone.forward_features(x).float())  # (B, F)
                labels.append(batch.y.to(method.device))
        finally:
            for module, mode in modes.items():
                module.training = mode
        return torch.cat(features), torch.cat(labels)
