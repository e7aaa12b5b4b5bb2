"""Sequence backbones: shapes, gradients, causality, state, references, configs, many-to-one."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from conftest import group_options, is_sequence_model
from deeprecipe.errors import ConfigError
from deeprecipe.models import (
    CausalTransformer,
    RecurrentNet,
    SequenceBackbone,
    SequenceClassifierBackbone,
)
from deeprecipe.models.transformer import CausalSelfAttention, sinusoidal_positions

VOCAB = 11


def build(name: str, tokens: bool) -> SequenceBackbone:
    """A small model of each family, for token ids (``tokens``) or 5 float features per step."""
    inputs = {"vocab_size": VOCAB} if tokens else {"input_dim": 5}
    if name == "transformer":
        return CausalTransformer(**inputs, d_model=16, num_heads=2, num_layers=2, max_len=32)
    return RecurrentNet(name, **inputs, embed_dim=8, hidden_size=12, num_layers=2)


def inputs(tokens: bool, batch: int = 3, steps: int = 7) -> torch.Tensor:
    if tokens:
        return torch.randint(0, VOCAB, (batch, steps))  # (B, T) ids
    return torch.randn(batch, steps, 5)  # (B, T, D) features


FAMILIES = ["rnn", "lstm", "gru", "transformer"]


@pytest.mark.parametrize("tokens", [True, False], ids=["ids", "features"])
@pytest.mark.parametrize("name", FAMILIES)
def test_forward_backward_shapes_and_finite(name, tokens):
    torch.manual_seed(0)
    model = build(name, tokens)
    features, state = model.forward_features(inputs(tokens))
    assert features.shape == (3, 7, model.num_features)
    assert torch.isfinite(features).all()
    assert (state is None) == (name == "transformer") == (model.context_length is not None)
    model.eval()
    x = inputs(tokens)
    assert torch.equal(model(x)[0], model.forward_features(x)[0])
    model.train()
    features.square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert len(model.stages()) >= 2


@pytest.mark.parametrize("name", FAMILIES)
def test_causal_output_at_t_ignores_inputs_after_t(name):
    torch.manual_seed(0)
    model = build(name, tokens=True).eval()
    x = inputs(True, steps=12)
    changed = x.clone()
    changed[:, 6:] = (x[:, 6:] + 1) % VOCAB  # new inputs from step 6 on
    before, _ = model(x)
    after, _ = model(changed)
    assert torch.allclose(before[:, :6], after[:, :6], atol=1e-6)  # the past is untouched
    assert not torch.allclose(before[:, 6:], after[:, 6:])


@pytest.mark.parametrize("name", ["rnn", "lstm", "gru"])
def test_state_continues_a_sequence_chunk_by_chunk(name):
    torch.manual_seed(0)
    model = build(name, tokens=True).eval()
    x = inputs(True, steps=12)
    whole, _ = model(x)
    first, state = model(x[:, :5])
    second, _ = model(x[:, 5:], state)
    assert torch.allclose(torch.cat([first, second], dim=1), whole, atol=1e-6)


def test_attention_matches_torch_multihead_attention():
    # reference: torch's own multi-head attention with the same weights and a causal mask
    torch.manual_seed(0)
    attention = CausalSelfAttention(dim=12, num_heads=3, dropout=0.0)
    reference = torch.nn.MultiheadAttention(12, 3, batch_first=True)
    with torch.no_grad():
        reference.in_proj_weight.copy_(attention.qkv.weight)  # rows: query, key, value
        reference.in_proj_bias.copy_(attention.qkv.bias)
        reference.out_proj.weight.copy_(attention.proj.weight)
        reference.out_proj.bias.copy_(attention.proj.bias)
    x = torch.randn(2, 9, 12)
    future = torch.ones(9, 9, dtype=torch.bool).triu(1)  # True: may not attend
    expected, _ = reference(x, x, x, attn_mask=future, need_weights=False)
    assert torch.allclose(attention(x), expected, atol=1e-5)


def test_sinusoidal_positions_follow_the_formula():
    table = sinusoidal_positions(6, 8)
    for position in range(6):
        for i in range(4):
            angle = position / 10000 ** (2 * i / 8)
            assert table[position, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[position, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_lstm_forget_bias_opens_the_forget_gate():
    torch.manual_seed(0)
    net = RecurrentNet(
        "lstm", vocab_size=10, embed_dim=4, hidden_size=6, num_layers=2, forget_bias=1.0
    )
    for layer in range(2):
        ih = getattr(net.rnn, f"bias_ih_l{layer}")
        hh = getattr(net.rnn, f"bias_hh_l{layer}")
        total = ih + hh  # (4 H,): gates input, forget, cell, output
        assert torch.equal(total[6:12], torch.ones(6))  # forget: exactly 1
        assert not torch.equal(total[:6], torch.zeros(6))  # the other gates keep torch's init
    # a zero input and state give forget-gate activation sigmoid(1), not ~sigmoid(0)
    x = torch.zeros(1, 1, 6)
    gates = x @ net.rnn.weight_ih_l1.T + net.rnn.bias_ih_l1 + net.rnn.bias_hh_l1
    assert torch.allclose(gates[0, 0, 6:12].sigmoid(), torch.full((6,), 0.7311), atol=1e-4)
    with pytest.raises(ConfigError, match="forget_bias"):
        RecurrentNet("gru", vocab_size=10, forget_bias=1.0)


def test_bad_sequence_configs_name_the_fix():
    with pytest.raises(ConfigError, match="set exactly one"):
        RecurrentNet("lstm", vocab_size=10, input_dim=4)
    with pytest.raises(ConfigError, match="set exactly one"):
        CausalTransformer()
    with pytest.raises(ConfigError, match="model.cell='elman'"):
        RecurrentNet("elman", vocab_size=10)
    with pytest.raises(ConfigError, match="not divisible by model.num_heads=3"):
        CausalTransformer(vocab_size=10, d_model=16, num_heads=3)
    model = CausalTransformer(vocab_size=10, d_model=8, num_heads=2, num_layers=1, max_len=4)
    with pytest.raises(ConfigError, match="raise model.max_len or lower data.seq_len"):
        model(torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ConfigError, match="for float features set model.input_dim"):
        model(torch.zeros(1, 3, 2))


SEQUENCE_OPTIONS = [option for option in group_options("model") if is_sequence_model(option)]


def test_every_text_model_config_is_covered():
    assert set(SEQUENCE_OPTIONS) == {"rnn", "lstm", "gru", "char_transformer"}
    # the image adapters are image backbones and go through tests/test_models.py
    assert {"seq_rnn", "seq_lstm", "seq_gru", "seq_transformer"} <= set(group_options("model"))


@pytest.mark.parametrize("option", SEQUENCE_OPTIONS)
def test_text_model_configs_meet_the_contract(make_cfg, option):
    cfg = make_cfg("data=fortunes", f"model={option}")
    model = instantiate(cfg.model)
    assert isinstance(model, SequenceBackbone) and model.vocab_size == cfg.data.vocab_size
    ids = torch.randint(0, cfg.data.vocab_size, (2, 16))
    features, _ = model(ids)
    assert features.shape == (2, 16, model.num_features) and torch.isfinite(features).all()


def test_sequence_classifier_reads_rows_as_steps():
    torch.manual_seed(0)
    backbone = SequenceClassifierBackbone(
        lambda input_dim: RecurrentNet("gru", input_dim=input_dim, hidden_size=6, num_layers=1),
        in_chans=2,
        image_size=4,
    ).eval()
    images = torch.randn(3, 2, 4, 4)  # (B, C, H, W)
    rows = images.permute(0, 2, 1, 3).reshape(3, 4, 8)  # (B, H, C * W): row h is step h
    features, _ = backbone.sequence_model(rows)
    assert torch.equal(backbone(images), features[:, -1])
    assert backbone.num_features == 6


def test_seq_fashion_experiment_fast_dev_run(make_cfg, fashion):
    cfg = make_cfg("+experiment=seq_fashion_lstm")
    assert cfg.model.sequence_model._target_ == "deeprecipe.models.RecurrentNet"
    method = instantiate(
        cfg.method,
        backbone=instantiate(cfg.model),
        optimizer=instantiate(cfg.optim),
        scheduler=instantiate(cfg.scheduler),
        augment=instantiate(cfg.aug),
    )
    before = [p.detach().clone() for p in method.parameters()]
    trainer = L.Trainer(
        accelerator="cpu",
        fast_dev_run=2,
        gradient_clip_val=cfg.trainer.gradient_clip_val,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(method, datamodule=fashion)
    assert any(not torch.equal(b, a) for b, a in zip(before, method.parameters(), strict=True))
    assert 0.0 <= float(trainer.callback_metrics["val/acc"]) <= 1.0
    assert method(torch.randn(2, 1, 28, 28)).shape == (2, 10)
