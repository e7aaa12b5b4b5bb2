"""The sequence backbone contract, parallel to the image one in :mod:`deeprecipe.models.base`.

A sequence backbone is a plain ``nn.Module`` without an output head:

- input ``x``: token ids ``(B, T)`` when built with ``vocab_size`` (the embedding is inside), or
  float features ``(B, T, input_dim)`` when built with ``input_dim``; exactly one is set;
- ``num_features``: width of the per-step features;
- ``forward_features(x, state=None) -> (features (B, T, num_features), new_state)``: ``state``
  is what the previous call returned (a recurrent model's hidden state, ``None`` for models
  without one), so a long sequence can be fed chunk by chunk; ``forward`` is the same;
- ``context_length``: the longest ``T`` it takes at once, ``None`` when unbounded (recurrent);
- ``stages() -> list[nn.Module]``: input-to-output stages, as for image backbones.

:class:`SequenceClassifierBackbone` turns any of them into an image backbone (many-to-one).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from deeprecipe.errors import ConfigError
from deeprecipe.models.base import Backbone

# a recurrent model's hidden state: h (layers, B, H), or (h, c) for an LSTM; None before the first
# chunk and for models without state
State = Tensor | tuple[Tensor, ...] | None


def detach_state(state: State) -> State:
    """The same state cut from the graph: gradients stop at the chunk boundary (truncated BPTT)."""
    if state is None:
        return None
    if isinstance(state, Tensor):
        return state.detach()
    return tuple(part.detach() for part in state)


def input_layer(
    vocab_size: int | None, input_dim: int | None, embed_dim: int, project: bool
) -> nn.Module:
    """Embedding of token ids into ``embed_dim``; for float features a linear map to
    ``embed_dim`` when ``project``, else the identity (the features go in as they are).

    Raises :class:`ConfigError` unless exactly one of ``vocab_size`` and ``input_dim`` is set.
    """
    if (vocab_size is None) == (input_dim is None):
        raise ConfigError(
            f"model.vocab_size={vocab_size}, model.input_dim={input_dim}: set exactly one, "
            "vocab_size for token ids (language models) or input_dim for float features."
        )
    if vocab_size is not None:
        if vocab_size < 2:
            raise ConfigError(f"model.vocab_size={vocab_size}; it must be at least 2.")
        return nn.Embedding(vocab_size, embed_dim)
    assert input_dim is not None
    if input_dim < 1:
        raise ConfigError(f"model.input_dim={input_dim}; it must be positive.")
    return nn.Linear(input_dim, embed_dim) if project else nn.Identity()


class SequenceBackbone(nn.Module):
    """Base class of the sequence backbones; see the module docstring for the contract."""

    num_features: int
    vocab_size: int | None
    input_dim: int | None
    context_length: int | None

    def forward_features(self, x: Tensor, state: State = None) -> tuple[Tensor, State]:
        raise NotImplementedError

    def forward(self, x: Tensor, state: State = None) -> tuple[Tensor, State]:
        return self.forward_features(x, state)

    def stages(self) -> list[nn.Module]:
        raise NotImplementedError

    def check_input(self, x: Tensor) -> None:
        """:class:`ConfigError` when ``x`` does not match how the model was built."""
        if self.vocab_size is not None and (x.ndim != 2 or x.is_floating_point()):
            raise ConfigError(
                f"{type(self).__name__} was built for token ids (B, T) (model.vocab_size="
                f"{self.vocab_size}) but got {x.dtype} {tuple(x.shape)}; for float features set "
                "model.input_dim instead."
            )
        if self.input_dim is not None and (x.ndim != 3 or x.shape[-1] != self.input_dim):
            raise ConfigError(
                f"{type(self).__name__} was built for features (B, T, {self.input_dim}) "
                f"(model.input_dim) but got {tuple(x.shape)}; fix model.input_dim."
            )
        if self.context_length is not None and x.shape[1] > self.context_length:
            raise ConfigError(
                f"{type(self).__name__} takes at most {self.context_length} steps "
                f"(model.max_len) but got {x.shape[1]}; raise model.max_len or lower "
                "data.seq_len."
            )


class SequenceClassifierBackbone(Backbone):
    """An image backbone made of a sequence model: each image row is one step (many-to-one).

    A ``(B, C, H, W)`` image becomes ``H`` steps of ``C * W`` features (Fashion-MNIST: 28 steps
    of 28), the sequence model reads them in order, and its features at the last step (which has
    seen the whole image) are the pooled features.

    Args:
        sequence_model: builds the sequence backbone; called with ``input_dim=in_chans *
            image_size`` (a ``_partial_`` config).
        in_chans: image channels.
        image_size: image height and width.
    """

    def __init__(
        self,
        sequence_model: Callable[..., SequenceBackbone],
        in_chans: int,
        image_size: int,
    ) -> None:
        super().__init__()
        self.sequence_model = sequence_model(input_dim=in_chans * image_size)
        self.num_features = self.sequence_model.num_features

    def forward_features(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, F)
        rows = x.permute(0, 2, 1, 3).flatten(2)  # (B, H, C * W)
        features, _ = self.sequence_model(rows)  # (B, H, F)
        return features[:, -1]

    def stages(self) -> list[nn.Module]:
        return self.sequence_model.stages()
