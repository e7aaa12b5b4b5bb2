"""MAE: masking, patchify, the masked-patch loss against direct computations; ViT; training."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from deeprecipe.errors import ConfigError
from deeprecipe.methods import MAE
from deeprecipe.methods.mae import MAEDecoder, patchify, random_masking, reconstruction_loss
from deeprecipe.models import ResNet9
from deeprecipe.models.vit import VisionTransformer

TINY_VIT = ["model.depth=2", "model.embed_dim=32", "model.num_heads=2"]


def test_masking_keeps_a_quarter_of_each_sample_and_restores_order():
    tokens = torch.randn(5, 64, 3)
    visible, mask, ids_restore = random_masking(tokens, 0.75)
    assert visible.shape == (5, 16, 3)
    assert torch.equal(mask.sum(dim=1), torch.full((5,), 48.0))
    for b in range(5):
        kept = (mask[b] == 0).nonzero()[:, 0].tolist()
        # the visible tokens are exactly the unmasked ones (in shuffled order)
        assert sorted(map(tuple, visible[b].tolist())) == sorted(
            map(tuple, tokens[b, kept].tolist())
        )
    # masks differ between samples: each draws its own permutation
    assert len({tuple(row) for row in mask.tolist()}) == 5
    # ids_restore undoes the shuffle: visible first, then the hidden ones, back in place
    shuffled_ids = ids_restore.argsort(dim=1)  # the shuffle itself
    shuffled = torch.stack([tokens[b, shuffled_ids[b]] for b in range(5)])
    assert torch.equal(shuffled[:, :16], visible)
    restored = shuffled.gather(1, ids_restore[:, :, None].expand(-1, -1, 3))
    assert torch.equal(restored, tokens)


def test_masking_follows_the_noise():
    tokens = torch.arange(8.0).view(1, 8, 1)
    noise = torch.tensor([[0.9, 0.1, 0.8, 0.2, 0.7, 0.3, 0.6, 0.4]])
    visible, mask, _ = random_masking(tokens, 0.75, noise=noise)
    assert visible.flatten().tolist() == [1.0, 3.0]  # the two smallest noise values, in order
    assert mask.tolist() == [[1, 0, 1, 0, 1, 1, 1, 1]]


def test_patchify_matches_slicing():
    images = torch.randn(2, 3, 8, 12)
    patches = patchify(images, 4)  # (2, 6, 48)
    assert patches.shape == (2, 6, 48)
    for n in range(6):
        row, col = divmod(n, 3)
        block = images[1, :, 4 * row : 4 * row + 4, 4 * col : 4 * col + 4]  # (C, p, p)
        assert torch.equal(patches[1, n], block.permute(1, 2, 0).flatten())


def reference_loss(prediction, images, mask, patch, norm_pix):
    """Per sample and masked patch, in numpy: the patch's pixels (row, col, channel), optionally
    standardized by their own mean and unbiased variance; mean of the squared errors."""
    prediction, images, mask = prediction.numpy(), images.numpy(), mask.numpy()
    batch, width = images.shape[0], images.shape[3]
    per_patch = []
    for b in range(batch):
        for n in range(mask.shape[1]):
            if mask[b, n] == 0:
                continue
            row, col = divmod(n, width // patch)
            target = images[b, :, row * patch : (row + 1) * patch, col * patch : (col + 1) * patch]
            target = target.transpose(1, 2, 0).reshape(-1)
            if norm_pix:
                target = (target - target.mean()) / np.sqrt(target.var(ddof=1) + 1e-6)
            per_patch.append(((prediction[b, n] - target) ** 2).mean())
    return float(np.mean(per_patch))


@pytest.mark.parametrize("norm_pix", [False, True])
def test_loss_counts_masked_patches_only(norm_pix):
    images = torch.randn(3, 2, 8, 8, dtype=torch.float64)
    prediction = torch.randn(3, 4, 32, dtype=torch.float64)
    mask = torch.tensor([[1, 0, 1, 1], [0, 0, 1, 0], [1, 1, 1, 0]], dtype=torch.float64)
    loss = reconstruction_loss(prediction, images, mask, 4, norm_pix)
    assert float(loss) == pytest.approx(reference_loss(prediction, images, mask, 4, norm_pix))
    changed = prediction.clone()
    changed[mask == 0] += 100.0  # predictions of visible patches do not count
    assert float(reconstruction_loss(changed, images, mask, 4, norm_pix)) == pytest.approx(
        float(loss)
    )


def test_norm_pix_targets_are_standardized_patches():
    images = torch.rand(1, 1, 4, 4) * 10 + 3
    patch = images[0, 0, :2, 2:].flatten()  # patch 1 of the 2 x 2 grid
    standardized = (patch - patch.mean()) / (patch.var() + 1e-6).sqrt()
    prediction = torch.zeros(1, 4, 4)
    prediction[0, 1] = standardized
    mask = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    assert float(reconstruction_loss(prediction, images, mask, 2, norm_pix_loss=True)) < 1e-10
    assert float(reconstruction_loss(prediction, images, mask, 2, norm_pix_loss=False)) > 1.0


def test_decoder_puts_tokens_back_in_place():
    """With the blocks, norm, positions and maps reduced to identities, the decoder's output at
    each patch is that patch's encoder token when it was visible and the mask token if not."""
    dim, grid = 4, 3
    decoder = MAEDecoder(dim, grid, dim, dim, depth=1, num_heads=1, mlp_ratio=1.0)
    decoder.blocks = nn.ModuleList()
    decoder.norm = nn.Identity()  # type: ignore[assignment]
    decoder.positions.zero_()
    with torch.no_grad():
        for linear in (decoder.embed, decoder.pred):
            linear.weight.copy_(torch.eye(dim))
            linear.bias.zero_()
    tokens = torch.randn(2, grid * grid, dim)
    visible, mask, ids_restore = random_masking(tokens, 0.6)
    encoded = torch.cat([torch.zeros(2, 1, dim), visible], dim=1)  # a class token first
    out = decoder(encoded, ids_restore).detach()
    kept = mask == 0
    assert torch.equal(out[kept], tokens[kept])
    hidden = out[~kept]  # (number hidden, dim)
    assert torch.equal(hidden, decoder.mask_token.detach().view(1, dim).expand_as(hidden))


# --------------------------------------------------------------------------- ViT, method
def test_vit_meets_the_backbone_contract():
    vit = VisionTransformer(
        image_size=32, in_chans=3, patch_size=4, embed_dim=32, depth=2, num_heads=2
    )
    x = torch.randn(2, 3, 32, 32)
    assert vit.num_patches == 64
    assert vit.forward_features(x).shape == (2, 32)
    # forward_features = mean of the encoded patch tokens of all patches
    encoded = vit.encode(vit.embed(x))  # (2, 65, 32)
    assert torch.allclose(vit.forward_features(x), encoded[:, 1:].mean(dim=1))
    assert len(vit.stages()) == 4
    with pytest.raises(ConfigError, match="model.image_size"):
        vit(torch.randn(1, 3, 28, 28))
    with pytest.raises(ConfigError, match="multiple of model.patch_size"):
        VisionTransformer(image_size=30, patch_size=4)


def build(cfg):
    return instantiate(
        cfg.method,
        backbone=instantiate(cfg.model),
        optimizer=instantiate(cfg.optim),
        scheduler=instantiate(cfg.scheduler),
        augment=instantiate(cfg.aug),
    )


def test_mae_fast_dev_run(make_cfg, fashion):
    cfg = make_cfg("+experiment=mae_pretrain", *TINY_VIT, "method.decoder_dim=16")
    method = build(cfg)
    assert isinstance(method, MAE) and isinstance(method.backbone, VisionTransformer)
    encoder = [p.detach().clone() for p in method.backbone.parameters()]
    decoder = [p.detach().clone() for p in method.decoder.parameters()]
    L.Trainer(
        accelerator="cpu",
        fast_dev_run=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    ).fit(method, datamodule=fashion)
    assert torch.isfinite(method.trainer.callback_metrics["train/loss"])
    assert all(
        not torch.equal(b, p) for b, p in zip(encoder, method.backbone.parameters(), strict=True)
    )
    assert all(
        not torch.equal(b, p) for b, p in zip(decoder, method.decoder.parameters(), strict=True)
    )


def test_mae_needs_the_in_house_vit():
    with pytest.raises(ConfigError, match="model=mae_vit"):
        MAE(ResNet9(1, 8), 10, 1, None, None)  # type: ignore[arg-type]
    vit = VisionTransformer(28, 1, embed_dim=32, depth=1, num_heads=2)
    with pytest.raises(ConfigError, match="mask_ratio=1.0"):
        MAE(vit, 10, 1, None, None, mask_ratio=1.0)  # type: ignore[arg-type]


def test_method_config_selects_the_vit_and_its_views(make_cfg):
    cfg = make_cfg("method=mae")
    assert cfg.model._target_.endswith("VisionTransformer")
    assert cfg.model.image_size == cfg.data.image_size
    assert set(cfg.aug) == {"_target_", "crop", "flip"}
