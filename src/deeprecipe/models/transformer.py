"""A decoder-only (GPT-style) Transformer written out: the lecture's building blocks in ~100 lines.

Written by hand rather than taken from ``nn.TransformerDecoder`` (which expects an encoder
memory) or ``nn.TransformerEncoder`` with a mask (which hides the blocks): each piece the lecture
names is visible here: sinusoidal positions, key-query-value multi-head self-attention with the
future masked out, the feed-forward network, residual connections and (pre-)layer norm. The
attention itself goes through ``F.scaled_dot_product_attention`` (fused kernels).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deeprecipe.errors import ConfigError
from deeprecipe.models.sequence import SequenceBackbone, State, input_layer


def sinusoidal_positions(length: int, dim: int) -> Tensor:
    """Vaswani et al. (2017): ``pe[p, 2i] = sin(p / 10000^(2i/dim))``, ``pe[p, 2i+1] = cos(..)``.

    Returns float ``(length, dim)``; ``dim`` must be even.
    """
    position = torch.arange(length, dtype=torch.float32)[:, None]  # (length, 1)
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(1e4) / dim))
    angles = position * frequency  # (length, dim / 2)
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)  # (length, dim)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which step ``t`` attends to steps ``<= t`` only.

    One linear map gives queries, keys and values of all heads; each head attends over its
    ``dim / num_heads`` channels; a last linear map mixes the heads.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        if dim % num_heads:
            raise ConfigError(
                f"model.d_model={dim} is not divisible by model.num_heads={num_heads}; choose "
                "a head count that divides it."
            )
        self.num_heads = num_heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:  # (B, T, D)
        batch, steps, dim = x.shape
        qkv = self.qkv(x).view(batch, steps, 3, self.num_heads, dim // self.num_heads)
        query, key, value = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, T, D / heads)
        attended = F.scaled_dot_product_attention(
            query,
            key,
            value,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=True,  # scores of future keys are -inf before the softmax
        )  # (B, heads, T, D / heads)
        return self.proj(attended.transpose(1, 2).reshape(batch, steps, dim))


class DecoderBlock(nn.Module):
    """Pre-norm block: ``x + attention(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        hidden = round(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attention = CausalSelfAttention(dim, num_heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim), nn.Dropout(dropout)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:  # (B, T, D)
        x = x + self.dropout(self.attention(self.norm1(x)))
        return x + self.mlp(self.norm2(x))


class CausalTransformer(SequenceBackbone):
    """Decoder-only Transformer: input embedding + sinusoidal positions, pre-norm causal blocks,
    final layer norm.

    Token ids are embedded into ``d_model``; float features (``input_dim``) are mapped to it
    linearly. The model has no state (``state`` must be None and None is returned): it sees at
    most ``max_len`` steps at once, and a sampler feeds it a sliding window instead.

    Args:
        vocab_size: token ids in; or
        input_dim: float features in.
        d_model: width of every block.
        num_heads: attention heads per block.
        num_layers: blocks.
        mlp_ratio: hidden width of the feed-forward networks, relative to ``d_model``.
        dropout: on the input, the attention weights and each residual branch.
        max_len: longest input (the table of positions).
    """

    positions: Tensor  # (max_len, d_model), recomputed on construction, not saved

    def __init__(
        self,
        vocab_size: int | None = None,
        input_dim: int | None = None,
        d_model: int = 128,
        num_heads: int = 4,
        num_layers: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.1,
        max_len: int = 256,
    ) -> None:
        super().__init__()
        if d_model < 2 or d_model % 2 or num_heads < 1 or num_layers < 1 or max_len < 1:
            raise ConfigError(
                f"model.d_model={d_model} (even), model.num_heads={num_heads}, "
                f"model.num_layers={num_layers}, model.max_len={max_len}: all must be positive."
            )
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"model.dropout={dropout}; it must be in [0, 1).")
        self.vocab_size = vocab_size
        self.input_dim = input_dim
        self.context_length = max_len
        self.embed = input_layer(vocab_size, input_dim, d_model, project=True)
        self.register_buffer("positions", sinusoidal_positions(max_len, d_model), persistent=False)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            DecoderBlock(d_model, num_heads, mlp_ratio, dropout) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.num_features = d_model

    def forward_features(self, x: Tensor, state: State = None) -> tuple[Tensor, State]:
        # x: (B, T) ids or (B, T, input_dim) -> features (B, T, d_model)
        self.check_input(x)
        if state is not None:
            raise ValueError("CausalTransformer has no state; pass state=None.")
        h = self.dropout(self.embed(x) + self.positions[: x.shape[1]])  # (B, T, D)
        for block in self.blocks:
            h = block(h)
        return self.norm(h), None

    def stages(self) -> list[nn.Module]:
        return [self.embed, *self.blocks, self.norm]
