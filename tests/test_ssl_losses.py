"""Self-supervised losses against explicit textbook references, and DDP against one process."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from deeprecipe.losses import barlow_twins_loss, byol_loss, moco_infonce, nt_xent


def nt_xent_reference(z1, z2, temperature):
    """SimCLR's Algorithm 1 one anchor at a time: -log(e^{s(i,p)/t} / sum_{k!=i} e^{s(i,k)/t})."""
    z = torch.cat([z1, z2])
    n = len(z1)
    total = 0.0
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        sims = [F.cosine_similarity(z[i], z[k], dim=0) / temperature for k in range(2 * n)]
        denominator = sum(math.exp(sims[k]) for k in range(2 * n) if k != i)
        total += -math.log(math.exp(sims[positive]) / denominator)
    return total / (2 * n)


def barlow_twins_reference(z1, z2, lambda_offdiag):
    """The paper's pseudo-code with torch's BatchNorm1d and explicit sums over i, j."""
    norm = torch.nn.BatchNorm1d(z1.shape[1], affine=False)  # training mode: batch statistics
    c = norm(z1).T @ norm(z2) / len(z1)
    loss = 0.0
    for i in range(c.shape[0]):
        for j in range(c.shape[1]):
            loss += (1 - c[i, j]) ** 2 if i == j else lambda_offdiag * c[i, j] ** 2
    return loss


def test_nt_xent_matches_reference():
    torch.manual_seed(0)
    z1, z2 = torch.randn(6, 5), torch.randn(6, 5)
    for temperature in (0.1, 0.5):
        expected = nt_xent_reference(z1, z2, temperature)
        assert nt_xent(z1, z2, temperature).item() == pytest.approx(expected, rel=1e-5)


def test_nt_xent_is_low_for_matching_views():
    torch.manual_seed(0)
    z = torch.randn(8, 16)
    assert nt_xent(z, z, 0.1) < nt_xent(z, torch.randn(8, 16), 0.1)


def test_byol_loss_is_normalized_mse():
    torch.manual_seed(0)
    p, z = torch.randn(7, 4), torch.randn(7, 4)
    expected = torch.stack(
        [((p[i] / p[i].norm() - z[i] / z[i].norm()) ** 2).sum() for i in range(7)]
    ).mean()
    assert torch.allclose(byol_loss(p, z), expected, atol=1e-6)
    assert byol_loss(p, 3 * p).item() == pytest.approx(0.0, abs=1e-6)


def test_barlow_twins_matches_reference():
    torch.manual_seed(0)
    z1, z2 = torch.randn(10, 6), torch.randn(10, 6)
    expected = barlow_twins_reference(z1, z2, 5e-3)
    assert torch.allclose(barlow_twins_loss(z1, z2, 5e-3), expected, atol=1e-5)


def test_moco_infonce_matches_reference():
    torch.manual_seed(0)
    q, k = torch.randn(5, 8), torch.randn(5, 8)
    queue = F.normalize(torch.randn(11, 8), dim=1)
    temperature = 0.2
    total = 0.0
    for i in range(5):
        qi, ki = q[i] / q[i].norm(), k[i] / k[i].norm()
        positive = math.exp(float(qi @ ki) / temperature)
        negatives = sum(math.exp(float(qi @ queue[j]) / temperature) for j in range(11))
        total += -math.log(positive / (positive + negatives))
    assert moco_infonce(q, k, queue, temperature).item() == pytest.approx(total / 5, rel=1e-5)


# ----------------------------------------------------------------------- two processes (DDP)
WORLD, PER_RANK, DIM = 2, 4, 6


def global_batch():
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(WORLD * PER_RANK, DIM, generator=generator) for _ in range(2)]


def losses_and_grads(z1, z2):
    """{name: (loss, grad of z1, grad of z2)} for each gathered loss."""
    out = {}
    for name, loss_fn in (
        ("nt_xent", lambda a, b: nt_xent(a, b, 0.2)),
        ("barlow", barlow_twins_loss),
    ):
        a, b = z1.detach().clone().requires_grad_(), z2.detach().clone().requires_grad_()
        loss = loss_fn(a, b)
        loss.backward()
        out[name] = (loss.detach(), a.grad, b.grad)
    return out


def _worker(rank: int, store: str, folder: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        z1, z2 = (z[rows] for z in global_batch())
        torch.save(losses_and_grads(z1, z2), Path(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_gathered_losses_equal_single_process_over_global_batch(tmp_path):
    """The per-process losses, as DDP averages their gradients, equal one global-batch loss.

    NT-Xent: each process's loss is the mean over its anchors, so the global loss is their mean.
    Barlow Twins: every process computes the global loss. In both, the collectives' backward sums
    the processes' gradients, so each process holds WORLD times its rows' global gradient, and
    DDP's average over processes of the parameter gradients gives the global gradient.
    """
    mp.spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    single = losses_and_grads(*global_batch())
    for name in ("nt_xent", "barlow"):
        loss, grad1, grad2 = single[name]
        assert torch.allclose(torch.stack([r[name][0] for r in ranks]).mean(), loss, atol=1e-6)
        for rank, result in enumerate(ranks):
            rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
            assert torch.allclose(result[name][1] / WORLD, grad1[rows], atol=1e-6), name
            assert torch.allclose(result[name][2] / WORLD, grad2[rows], atol=1e-6), name
