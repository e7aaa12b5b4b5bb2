"""Recurrent sequence backbones: vanilla RNN (tanh), LSTM and GRU, from ``torch.nn``."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from deeprecipe.errors import ConfigError
from deeprecipe.models.sequence import SequenceBackbone, State, input_layer

CELLS: dict[str, Callable[..., nn.RNNBase]] = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class RecurrentNet(SequenceBackbone):
    """A stack of ``num_layers`` recurrent layers of one ``cell`` type.

    ``cell`` is ``rnn`` (the lecture's ``h_t = tanh(W_hh h_{t-1} + W_xh x_t)``), ``lstm`` or
    ``gru``; torch's fused implementations (cuDNN, oneDNN) run the recurrence. Token ids are
    embedded into ``embed_dim``; float features (``input_dim``) go into the first layer as they
    are. ``dropout`` acts on the non-recurrent connections only (Zaremba et al. 2014): on the
    embedded input, between layers and on the output; the recurrent path stays intact.

    ``forget_bias`` (LSTM only) starts every forget gate's bias at that value instead of
    PyTorch's uniform init around 0 (Gers et al. 2000; Jozefowicz et al. 2015 recommend 1): a
    gate that starts open lets the cell carry information, and gradients, across many steps
    from the first update.

    The state is ``h`` (num_layers, B, hidden_size), or ``(h, c)`` for an LSTM.
    """

    def __init__(
        self,
        cell: str = "lstm",
        vocab_size: int | None = None,
        input_dim: int | None = None,
        embed_dim: int = 64,
        hidden_size: int = 256,
        num_layers: int = 2,
        dropout: float = 0.0,
        forget_bias: float | None = None,
    ) -> None:
        super().__init__()
        if cell not in CELLS:
            raise ConfigError(f"model.cell={cell!r}; choose one of {', '.join(CELLS)}.")
        if forget_bias is not None and cell != "lstm":
            raise ConfigError(
                f"model.forget_bias={forget_bias} applies to an LSTM's forget gate; "
                f"model.cell={cell!r} has none: leave it null."
            )
        if hidden_size < 1 or num_layers < 1:
            raise ConfigError(
                f"model.hidden_size={hidden_size}, model.num_layers={num_layers}; both must be "
                "positive."
            )
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"model.dropout={dropout}; it must be in [0, 1).")
        self.vocab_size = vocab_size
        self.input_dim = input_dim
        self.context_length = None
        self.embed = input_layer(vocab_size, input_dim, embed_dim, project=False)
        self.rnn = CELLS[cell](
            input_size=embed_dim if input_dim is None else input_dim,
            hidden_size=hidden_size,
            num_layers=num_layers,
            dropout=dropout if num_layers > 1 else 0.0,
            batch_first=True,
        )
        self.dropout = nn.Dropout(dropout)
        self.num_features = hidden_size
        if forget_bias is not None:
            # gate order of torch's LSTM: input, forget, cell, output; the two biases add up
            for name, bias in self.rnn.named_parameters():
                if name.startswith("bias_"):
                    forget = bias.data[hidden_size : 2 * hidden_size]
                    forget.fill_(forget_bias if name.startswith("bias_ih") else 0.0)

    def forward_features(self, x: Tensor, state: State = None) -> tuple[Tensor, State]:
        # x: (B, T) ids or (B, T, input_dim) -> features (B, T, hidden_size)
        self.check_input(x)
        inputs = self.dropout(self.embed(x))  # (B, T, embed_dim or input_dim)
        features, new_state = self.rnn(inputs, state)  # (B, T, H); state (L, B, H) [x2 LSTM]
        return self.dropout(features), new_state

    def stages(self) -> list[nn.Module]:
        return [self.embed, self.rnn]
