"""Masked autoencoder (He et al. 2022): reconstruct the pixels of randomly masked image patches.

The ViT encoder sees only the visible patches (25% by default), which makes pretraining cheap
and the task hard enough to need semantics; a small decoder fills in mask tokens and predicts
the pixels of every patch, and the loss counts the masked patches only.
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from deeprecipe.batches import Labeled
from deeprecipe.errors import ConfigError
from deeprecipe.methods.base import BaseMethod, OptimizerFactory, SchedulerFactory
from deeprecipe.methods.ssl_parts import online_probe_loss
from deeprecipe.models.base import Backbone
from deeprecipe.models.vit import VisionTransformer, init_transformer_weights, sincos_positions


def random_masking(
    tokens: Tensor, mask_ratio: float, noise: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Keep a random ``1 - mask_ratio`` of each sample's tokens, independently per sample.

    Sorting uniform noise gives each sample a random permutation of its ``N`` tokens; the first
    ``int(N * (1 - mask_ratio))`` of it are kept, in that shuffled order.

    Args:
        tokens: (B, N, D).
        mask_ratio: fraction of tokens to hide.
        noise: (B, N) sort keys; uniform random when None (tests pass their own).

    Returns:
        ``visible`` (B, n_keep, D); ``mask`` (B, N), 1 where a token is hidden and 0 where kept,
        in the original token order; ``ids_restore`` (B, N), the permutation that puts the
        shuffled sequence (kept tokens first) back into the original order.
    """
    batch, length, dim = tokens.shape
    keep = max(1, int(length * (1 - mask_ratio)))
    if noise is None:
        noise = torch.rand(batch, length, device=tokens.device)
    ids_shuffle = noise.argsort(dim=1)  # (B, N) ascending noise: kept first
    ids_restore = ids_shuffle.argsort(dim=1)  # (B, N) inverse permutation
    ids_keep = ids_shuffle[:, :keep]  # (B, n_keep)
    visible = tokens.gather(1, ids_keep[:, :, None].expand(-1, -1, dim))
    mask = torch.ones(batch, length, device=tokens.device)
    mask[:, :keep] = 0
    mask = mask.gather(1, ids_restore)  # (B, N) back in the original order
    return visible, mask, ids_restore


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """(B, C, H, W) -> (B, N, patch_size**2 * C): row-major patches, pixels ordered (row, col,
    channel) within each patch, the order in which the decoder predicts them."""
    batch, chans, height, width = images.shape
    rows, cols = height // patch_size, width // patch_size
    x = images.reshape(batch, chans, rows, patch_size, cols, patch_size)
    x = x.permute(0, 2, 4, 3, 5, 1)  # (B, rows, cols, p, p, C)
    return x.reshape(batch, rows * cols, patch_size * patch_size * chans)


def reconstruction_loss(
    prediction: Tensor, images: Tensor, mask: Tensor, patch_size: int, norm_pix_loss: bool
) -> Tensor:
    """Mean squared error of the predicted pixels on the masked patches only.

    Args:
        prediction: (B, N, p * p * C) decoder output for every patch.
        images: (B, C, H, W) the encoder's (normalized) input.
        mask: (B, N) 1 on masked patches.
        patch_size: side ``p`` of a patch.
        norm_pix_loss: standardize each target patch by its own mean and (unbiased) variance,
            which MAE found to give better representations (sharper edges, not mean brightness).
    """
    target = patchify(images, patch_size)  # (B, N, p * p * C)
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
    per_patch = (prediction - target).square().mean(dim=-1)  # (B, N)
    return (per_patch * mask).sum() / mask.sum()


class MAEDecoder(nn.Module):
    """Lightweight decoder: mask tokens fill the hidden places, its own fixed positions, a few
    transformer blocks, and a linear map to each patch's pixels."""

    positions: Tensor

    def __init__(
        self,
        encoder_dim: int,
        grid_size: int,
        patch_pixels: int,
        dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
    ) -> None:
        super().__init__()
        if depth < 1 or num_heads < 1 or dim % num_heads:
            raise ConfigError(
                f"method.decoder_depth={depth}, method.decoder_heads={num_heads}, "
                f"method.decoder_dim={dim}: positive, and the heads must divide the width."
            )
        self.embed = nn.Linear(encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("positions", sincos_positions(grid_size, dim), persistent=False)
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, mlp_ratio, qkv_bias=True) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pred = nn.Linear(dim, patch_pixels)
        init_transformer_weights(self)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, encoded: Tensor, ids_restore: Tensor) -> Tensor:
        # encoded (B, 1 + n_keep, E), ids_restore (B, N) -> pixels (B, N, p * p * C)
        x = self.embed(encoded)  # (B, 1 + n_keep, D)
        batch, length = ids_restore.shape
        fill = self.mask_token.expand(batch, length + 1 - x.shape[1], -1)  # (B, N - n_keep, D)
        shuffled = torch.cat([x[:, 1:], fill], dim=1)  # (B, N, D) kept first, as in masking
        patches = shuffled.gather(1, ids_restore[:, :, None].expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1], patches + self.positions], dim=1)  # (B, 1 + N, D)
        for block in self.blocks:
            x = block(x)
        return self.pred(self.norm(x))[:, 1:]  # the class token predicts nothing


class MAE(BaseMethod):
    """Masked-autoencoder pretraining of the in-house ViT (``model=mae_vit``), plus online probe.

    The online linear probe reads the pooled encoder output of the visible patches (it costs no
    extra forward pass); validation evaluates it on all patches, so ``val/acc`` is a slight
    underestimate early on. The kNN monitor (``callbacks=ssl``) and ``mae_linear`` use all
    patches throughout.

    Args:
        mask_ratio: fraction of patches hidden from the encoder (MAE: 0.75).
        decoder_dim: width of the decoder (divisible by 4 and by ``decoder_heads``).
        decoder_depth: decoder blocks (MAE: 8 at width 512 for ViT-L; small here).
        decoder_heads: attention heads per decoder block.
        decoder_mlp_ratio: hidden width of the decoder MLPs relative to ``decoder_dim``.
        norm_pix_loss: reconstruct per-patch standardized pixels (see
            :func:`reconstruction_loss`).
        See :class:`BaseMethod` for the rest; ``augment`` is applied before masking.
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        in_chans: int,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory,
        augment: nn.Module | None = None,
        mask_ratio: float = 0.75,
        decoder_dim: int = 64,
        decoder_depth: int = 2,
        decoder_heads: int = 4,
        decoder_mlp_ratio: float = 4.0,
        norm_pix_loss: bool = True,
        channels_last: bool = False,
        decay_norm_and_bias: bool = False,
    ) -> None:
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
        if not isinstance(backbone, VisionTransformer):
            raise ConfigError(
                f"method=mae masks the patch tokens of the in-house ViT; got "
                f"{type(backbone).__name__}. Set model=mae_vit."
            )
        if not 0.0 < mask_ratio < 1.0:
            raise ConfigError(f"method.mask_ratio={mask_ratio}; it must be in (0, 1), e.g. 0.75.")
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.patch_size = backbone.patch_size
        self.decoder = MAEDecoder(
            backbone.num_features,
            backbone.patch_embed.grid_size,
            backbone.patch_size**2 * in_chans,
            decoder_dim,
            decoder_depth,
            decoder_heads,
            decoder_mlp_ratio,
        )

    def training_step(self, batch: Labeled, batch_idx: int) -> Tensor:
        encoder = self.backbone
        assert isinstance(encoder, VisionTransformer)  # checked in __init__; narrows the type
        tokens = encoder.embed(batch.x)  # (B, N, D)
        visible, mask, ids_restore = random_masking(tokens, self.mask_ratio)
        encoded = encoder.encode(visible)  # (B, 1 + n_keep, D)
        prediction = self.decoder(encoded, ids_restore)  # (B, N, p * p * C)
        loss = reconstruction_loss(prediction, batch.x, mask, self.patch_size, self.norm_pix_loss)
        probe_loss = online_probe_loss(self, encoder.pool(encoded), batch.y)
        batch_size = len(batch.y)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log(
            "train/probe_loss",
            probe_loss,
            on_step=False,
            on_epoch=True,
            batch_size=batch_size,
            sync_dist=True,
        )
        return loss + probe_loss
