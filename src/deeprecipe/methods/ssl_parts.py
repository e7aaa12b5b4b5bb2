"""Pieces shared by the self-supervised methods: views, projection MLPs, the online probe.

They are functions rather than a second base class, so each method stays one file over
:class:`~deeprecipe.methods.base.BaseMethod`.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from deeprecipe.batches import Labeled, Views
from deeprecipe.errors import ConfigError
from deeprecipe.methods.base import BaseMethod


def check_augment(augment: nn.Module | None, method: str) -> None:
    """Views of one image must differ, or matching them teaches the network nothing."""
    if augment is None:
        raise ConfigError(
            f"method={method} compares augmented views of each image and needs an augmentation; "
            "set aug=simclr (or another aug option)."
        )


def augmented_views(method: BaseMethod, batch: Labeled, num_views: int = 2) -> Views:
    """A ``Labeled`` uint8 batch -> ``Views`` of ``num_views`` independent augmentations of it."""
    views = tuple(method.prepare_images(batch.x, augment=True) for _ in range(num_views))
    return Views(views, batch.y)


def mlp(
    in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2, last_norm: bool = False
) -> nn.Sequential:
    """``num_layers`` linear layers with batch norm and ReLU between them (projector/predictor).

    ``last_norm`` adds an affine-free batch norm after the last layer (Barlow Twins, SimSiam).
    """
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(num_layers - 1):
        layers += [nn.Linear(width, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU()]
        width = hidden_dim
    layers.append(nn.Linear(width, out_dim, bias=not last_norm))
    if last_norm:
        layers.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*layers)


def online_probe_loss(method: BaseMethod, features: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of the method's linear head on detached features (B, F).

    The head learns to read the labels off the representation without shaping it, so
    ``val/acc`` tracks the representation during pretraining at the cost of one linear layer.
    Training accuracy accumulates in ``method.train_metrics`` (logged once per epoch).
    """
    logits = method.head(features.detach())  # (B, num_classes)
    method.train_metrics.update(logits.detach(), labels)
    return F.cross_entropy(logits, labels)
