"""A small Vision Transformer whose forward splits into patch embedding and encoding, for MAE.

``model=vit`` (timm) is the plain ViT classifier backbone. Masked image modelling (He et al.
2022) must encode only the *visible* patches of each image, which timm's ``forward_features``
offers no way to do short of the method reaching into timm's modules. This backbone therefore
exposes the two steps as its documented interface: :meth:`VisionTransformer.embed` (patches ->
position-coded tokens) and :meth:`VisionTransformer.encode` (any subset of tokens -> class token
+ contextualized tokens), and :meth:`VisionTransformer.pool`. ``forward_features`` is the three
in a row over all patches, so linear probes and fine-tuning use it like any other backbone.

The transformer blocks are timm's (pre-norm multi-head attention + MLP) and the positions timm's
fixed 2-D sine-cosine table (as in MAE); only the wiring is written here.
"""

from __future__ import annotations

import torch
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from deeprecipe.errors import ConfigError
from deeprecipe.models.base import Backbone
from deeprecipe.models.resnet import drop_path_rates


def sincos_positions(grid_size: int, dim: int) -> Tensor:
    """Fixed 2-D sine-cosine positions of a ``grid_size`` x ``grid_size`` grid: (1, N, dim).

    Token ``n`` is the patch in row ``n // grid_size`` and column ``n % grid_size`` (the order in
    which :meth:`PatchEmbedding.forward` flattens the patch grid).
    """
    if dim % 4:
        raise ConfigError(f"Embedding width {dim}: 2-D sin-cos positions need a multiple of 4.")
    return build_sincos2d_pos_embed([grid_size, grid_size], dim)[None]  # (1, N, dim)


class PatchEmbedding(nn.Module):
    """Non-overlapping ``patch_size`` squares -> linear tokens plus fixed positions.

    It also holds the learned class token, so that freezing this first stage freezes every
    parameter that comes before the blocks.
    """

    positions: Tensor

    def __init__(self, image_size: int, patch_size: int, in_chans: int, dim: int) -> None:
        super().__init__()
        self.image_size = image_size
        self.grid_size = image_size // patch_size
        self.proj = nn.Conv2d(in_chans, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        # fixed, recomputed on construction: not saved in checkpoints
        self.register_buffer("positions", sincos_positions(self.grid_size, dim), persistent=False)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, N, D)
        if x.shape[-2:] != (self.image_size, self.image_size):
            raise ConfigError(
                f"The ViT was built for {self.image_size}x{self.image_size} images but got "
                f"{tuple(x.shape[-2:])}; set model.image_size=${{data.image_size}}."
            )
        tokens = self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D), row-major patch order
        return tokens + self.positions


class VisionTransformer(Backbone):
    """ViT with a class token, fixed 2-D sin-cos positions, timm blocks and a final layer norm.

    Sized for 28/32-pixel images: 4x4 patches give 7x7 or 8x8 tokens.

    Args:
        image_size: side of the (square) input images; a multiple of ``patch_size``.
        in_chans: input channels.
        patch_size: side of the square patches.
        embed_dim: token width (divisible by 4 and by ``num_heads``).
        depth: transformer blocks.
        num_heads: attention heads per block.
        mlp_ratio: hidden width of each block's MLP relative to ``embed_dim``.
        drop_path_rate: stochastic depth of the last block, reached linearly from the first.
        global_pool: ``avg``, the mean of the patch tokens (MAE's fine-tuning choice), or
            ``cls``, the class token, as the pooled feature vector.
    """

    def __init__(
        self,
        image_size: int = 28,
        in_chans: int = 1,
        patch_size: int = 4,
        embed_dim: int = 128,
        depth: int = 6,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        if patch_size < 1 or image_size % patch_size:
            raise ConfigError(
                f"model.image_size={image_size} is not a multiple of model.patch_size="
                f"{patch_size}; choose a patch size that divides the image side (4 for 28 or 32)."
            )
        if depth < 1 or num_heads < 1 or embed_dim % num_heads:
            raise ConfigError(
                f"model.depth={depth}, model.num_heads={num_heads}, model.embed_dim={embed_dim}: "
                "depth and heads must be positive and the heads must divide embed_dim."
            )
        if global_pool not in ("avg", "cls"):
            raise ConfigError(f"model.global_pool={global_pool!r}; choose avg or cls.")
        self.patch_size = patch_size
        self.global_pool = global_pool
        self.patch_embed = PatchEmbedding(image_size, patch_size, in_chans, embed_dim)
        self.num_patches = self.patch_embed.grid_size**2
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, drop_path=rate)
            for rate in drop_path_rates(drop_path_rate, depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.num_features = embed_dim
        init_transformer_weights(self)
        nn.init.normal_(self.patch_embed.cls_token, std=0.02)

    def embed(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, N, D)
        """Position-coded patch tokens, in row-major patch order (no class token)."""
        return self.patch_embed(x)

    def encode(self, tokens: Tensor) -> Tensor:  # (B, n, D) -> (B, 1 + n, D)
        """Prepend the class token and run the blocks and the final norm over any subset of
        the tokens of :meth:`embed` (MAE passes the visible ones)."""
        cls = self.patch_embed.cls_token.expand(len(tokens), -1, -1)  # (B, 1, D)
        x = torch.cat([cls, tokens], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def pool(self, encoded: Tensor) -> Tensor:  # (B, 1 + n, D) -> (B, D)
        """The feature vector of an :meth:`encode` output: mean patch token or class token."""
        return encoded[:, 1:].mean(dim=1) if self.global_pool == "avg" else encoded[:, 0]

    def forward_features(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, embed_dim)
        return self.pool(self.encode(self.embed(x)))

    def stages(self) -> list[nn.Module]:
        return [self.patch_embed, *self.blocks, self.norm]


def init_transformer_weights(module: nn.Module) -> None:
    """MAE's initialization: Xavier-uniform linear maps (the patch projection as one too), zero
    biases, unit layer norms."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.LayerNorm):
            nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)
        elif isinstance(layer, PatchEmbedding):
            nn.init.xavier_uniform_(layer.proj.weight.view(len(layer.proj.weight), -1))
            if layer.proj.bias is not None:
                nn.init.zeros_(layer.proj.bias)
