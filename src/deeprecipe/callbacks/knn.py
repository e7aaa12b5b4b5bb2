"""kNN monitor: classify validation images by their nearest training images in feature space."""

from __future__ import annotations

from collections.abc import Iterable

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from deeprecipe.batches import Labeled
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


class KNNMonitor(L.Callback):
    """Log ``val/knn_acc``: kNN accuracy of the backbone's features, training split as the bank.

    Needs no training of its own, so it measures a self-supervised representation during
    pretraining without labels entering the loss. Every ``every_n_epochs`` validation epochs the
    backbone embeds the datamodule's training split (its training loader, unaugmented) and its
    validation split with the norm layers in eval mode (running statistics, not those of the
    batch); the modes are restored afterwards. The cost is one forward pass over both splits.

    Args:
        every_n_epochs: run after every n-th validation epoch (and never in the sanity check).
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
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        if not isinstance(pl_module, BaseMethod):
            raise ConfigError("callbacks.knn needs a method with a backbone (a BaseMethod).")
        datamodule = trainer.datamodule  # type: ignore[attr-defined]
        with trainer.precision_plugin.forward_context():
            bank_features, bank_labels = self.embed(pl_module, datamodule.train_dataloader())
            features, labels = self.embed(pl_module, datamodule.val_dataloader())
        predicted = knn_predict(
            features, bank_features, bank_labels, pl_module.num_classes, self.k, self.temperature
        )
        accuracy = (predicted == labels).float().mean()
        pl_module.log("val/knn_acc", accuracy, batch_size=len(labels))

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
