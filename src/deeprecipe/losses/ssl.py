"""Self-supervised losses: NT-Xent (SimCLR), BYOL, Barlow Twins and MoCo's InfoNCE.

Under DDP the batch-level losses see the global batch: embeddings (NT-Xent) or the statistics of
the cross-correlation (Barlow Twins) are gathered across processes with autograd-aware
collectives, whose backward sums every process's gradient. Each process's loss is thus a term
whose gradients, averaged by DDP, equal those of the loss over the global batch computed on one
device (``tests/test_ssl_losses.py`` checks this with two processes).
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F
from torch import Tensor

# torch 2.10+ deprecates these autograd-aware collectives in favour of the private
# torch.distributed._functional_collectives; they stay here while torch >= 2.4 is supported
warnings.filterwarnings(
    "ignore",
    message=r"torch\.distributed\.nn\.functional\.\w+ is deprecated",
    category=FutureWarning,
)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_batches(x: Tensor) -> Tensor:
    """Concatenate ``x`` (B, ...) of every process in rank order -> (world * B, ...).

    Gradients flow back to each process's own rows. Without DDP it returns ``x``.
    """
    if not _distributed():
        return x
    return torch.cat(dist_fn.all_gather(x), dim=0)


def sum_across_processes(x: Tensor) -> Tensor:
    """All-reduced sum of ``x`` over processes, differentiable; ``x`` itself without DDP."""
    return dist_fn.all_reduce(x) if _distributed() else x


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.1, gather: bool = True) -> Tensor:
    """Normalized temperature-scaled cross-entropy of SimCLR (Chen et al. 2020).

    ``z1`` and ``z2`` (B, D) embed two views of the same B images. Each of the 2B embeddings is
    an anchor whose positive is the other view of its image and whose negatives are the other
    2N - 2 embeddings of the global batch (N = B times the number of processes when ``gather``
    and DDP is initialized). Returns the mean over this process's 2B anchors.
    """
    batch = z1.shape[0]
    local = F.normalize(torch.cat([z1, z2]), dim=1)  # (2B, D)
    if gather and _distributed():
        # keys grouped per process, [z1, z2] of rank 0, then of rank 1, ...
        keys = gather_batches(local)  # (2N, D)
        offset = 2 * batch * dist.get_rank()  # where this process's rows sit among the keys
    else:
        keys, offset = local, 0
    logits = local @ keys.T / temperature  # (2B, 2N)
    anchor = torch.arange(2 * batch, device=z1.device)  # (2B,)
    is_self = anchor[:, None] + offset == torch.arange(len(keys), device=z1.device)  # (2B, 2N)
    logits = logits.masked_fill(is_self, float("-inf"))  # an anchor is not its own negative
    # view 1 of image i sits at row i, view 2 at row B + i
    positive = offset + (anchor + batch) % (2 * batch)  # (2B,)
    return F.cross_entropy(logits, positive)


def byol_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """BYOL's normalized MSE ``2 - 2 cos(p, z)`` (Grill et al. 2020), mean over the batch.

    ``prediction`` (B, D) comes from the online network's predictor, ``target`` (B, D) from the
    momentum network; the caller detaches ``target``.
    """
    return (2 - 2 * F.cosine_similarity(prediction, target, dim=1)).mean()


def barlow_twins_loss(
    z1: Tensor, z2: Tensor, lambda_offdiag: float = 5e-3, gather: bool = True, eps: float = 1e-5
) -> Tensor:
    """Barlow Twins (Zbontar et al. 2021): drive the views' cross-correlation to the identity.

    ``z1`` and ``z2`` (B, D) are standardized per dimension over the global batch (mean and
    biased variance, as batch norm without affine parameters); their cross-correlation
    ``C = z1_std^T z2_std / N`` (D, D) gives ``sum_i (1 - C_ii)^2 + lambda sum_{i!=j} C_ij^2``.
    With ``gather`` under DDP the sums behind the mean, variance and C are all-reduced.
    """

    def reduce(x: Tensor) -> Tensor:
        return sum_across_processes(x) if gather else x

    count = reduce(z1.new_tensor(float(z1.shape[0])))  # () global batch size N
    both = torch.stack([z1, z2])  # (2, B, D)
    mean = reduce(both.sum(dim=1)) / count  # (2, D)
    centered = both - mean[:, None]  # (2, B, D)
    variance = reduce(centered.square().sum(dim=1)) / count  # (2, D)
    standardized = centered / torch.sqrt(variance[:, None] + eps)  # (2, B, D)
    correlation = reduce(standardized[0].T @ standardized[1]) / count  # (D, D)
    on_diagonal = (1 - correlation.diagonal()).square().sum()
    off_diagonal = correlation.square().sum() - correlation.diagonal().square().sum()
    return on_diagonal + lambda_offdiag * off_diagonal


def moco_infonce(query: Tensor, key: Tensor, queue: Tensor, temperature: float = 0.2) -> Tensor:
    """MoCo's InfoNCE (He et al. 2020): each query against its key and the queue's negatives.

    ``query`` (B, D) from the online encoder, ``key`` (B, D) from the momentum encoder (the
    caller detaches it), ``queue`` (K, D) of earlier keys, already L2-normalized. Query and key
    are normalized here. Returns the mean over the B queries.
    """
    query = F.normalize(query, dim=1)
    key = F.normalize(key, dim=1)
    positive = (query * key).sum(dim=1, keepdim=True)  # (B, 1)
    negative = query @ queue.T  # (B, K)
    logits = torch.cat([positive, negative], dim=1) / temperature  # (B, 1 + K)
    return F.cross_entropy(logits, logits.new_zeros(len(logits), dtype=torch.long))
