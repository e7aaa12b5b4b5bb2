"""Activations, init schemes and the image families (AlexNet, VGG, GoogLeNet, ViT), and the model
report; the backbone contract over every config is in test_models.py."""

from __future__ import annotations

import math

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from deeprecipe.errors import ConfigError
from deeprecipe.models import MLP, VGG, AlexNet, GoogLeNet, LeNet5
from deeprecipe.models.googlenet import Inception
from deeprecipe.models.layers import ACTIVATIONS, init_weights, make_activation
from deeprecipe.recipe import model_report

# independent references: each activation written out from its formula
REFERENCES = {
    "sigmoid": lambda x: 1 / (1 + torch.exp(-x)),
    "tanh": lambda x: (torch.exp(x) - torch.exp(-x)) / (torch.exp(x) + torch.exp(-x)),
    "relu": lambda x: torch.where(x > 0, x, torch.zeros_like(x)),
    "leaky_relu": lambda x: torch.maximum(0.1 * x, x),
    "elu": lambda x: torch.where(x >= 0, x, torch.exp(x) - 1),
    "gelu": lambda x: 0.5 * x * (1 + torch.erf(x / math.sqrt(2))),
}


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_matches_its_formula(name):
    x = torch.linspace(-4, 4, 161, dtype=torch.float64)
    assert torch.allclose(make_activation(name)(x), REFERENCES[name](x))


def test_unknown_activation_names_the_choices():
    with pytest.raises(ConfigError, match=r"activation='swish'.*leaky_relu, elu, gelu"):
        make_activation("swish")


def test_gaussian_init_is_small_and_zero_biased():
    layer = init_weights(nn.Linear(1000, 1000), "gaussian")
    assert layer.weight.std().item() == pytest.approx(0.001, rel=0.01)
    assert layer.weight.mean().abs().item() < 1e-5
    assert torch.count_nonzero(layer.bias) == 0
    wider = init_weights(nn.Conv2d(64, 64, 3), "gaussian", std=0.01)
    assert wider.weight.std().item() == pytest.approx(0.01, rel=0.02)


def test_xavier_and_kaiming_stds():
    linear = init_weights(nn.Linear(800, 200), "xavier")  # fan_in 800, fan_out 200
    assert linear.weight.std().item() == pytest.approx(math.sqrt(2 / 1000), rel=0.02)
    conv = init_weights(nn.Conv2d(64, 128, 3), "kaiming")  # fan_in 64 * 3 * 3
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / 576), rel=0.02)


def test_default_init_keeps_pytorch_values_and_batch_norm_is_untouched():
    torch.manual_seed(0)
    model = VGG(11, 3, 8, init="default")
    torch.manual_seed(0)
    untouched = VGG(11, 3, 8, init="default")
    init_weights(untouched, "default")
    for before, after in zip(
        model.state_dict().values(), untouched.state_dict().values(), strict=True
    ):
        assert torch.equal(before, after)
    gaussian = VGG(11, 3, 8, init="gaussian")
    norms = [m for m in gaussian.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(torch.all(norm.weight == 1) for norm in norms)


@pytest.mark.parametrize("scheme", ["default", "gaussian", "kaiming"])
def test_relu_bias_sets_every_bias(scheme):
    model = AlexNet(1, 28, init=scheme, relu_bias=0.01)
    biases = [m.bias for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert len(biases) == 7 and all(torch.all(bias == 0.01) for bias in biases)


def test_small_gaussian_init_makes_deep_tanh_activations_vanish():
    """The lecture's point: 0.001 * randn shrinks activations layer by layer; Xavier does not."""
    x = torch.randn(64, 1, 28, 28)
    with torch.no_grad():
        vanishing = MLP(1, 28, (512,) * 6, activation="tanh", init="gaussian")(x)
        kept = MLP(1, 28, (512,) * 6, activation="tanh", init="xavier")(x)
    assert vanishing.std().item() < 1e-8
    assert kept.std().item() > 0.1


def test_bad_init_values():
    with pytest.raises(ConfigError, match=r"init='he'.*gaussian, xavier, kaiming"):
        init_weights(nn.Linear(2, 2), "he")
    with pytest.raises(ConfigError, match="std=0"):
        init_weights(nn.Linear(2, 2), "gaussian", std=0.0)


NEW_FAMILIES = {
    "alexnet": lambda chans, size: AlexNet(chans, size),
    "vgg11": lambda chans, size: VGG(11, chans),
    "vgg13_no_bn": lambda chans, size: VGG(13, chans, batch_norm=False),
    "vgg16": lambda chans, size: VGG(16, chans),
    "googlenet": lambda chans, size: GoogLeNet(chans),
    "googlenet_no_bn": lambda chans, size: GoogLeNet(chans, batch_norm=False),
}


@pytest.mark.parametrize("family", NEW_FAMILIES)
@pytest.mark.parametrize(("chans", "size"), [(1, 28), (3, 32)])
def test_new_families_on_28_and_32_px(family, chans, size):
    model = NEW_FAMILIES[family](chans, size)
    x = torch.randn(2, chans, size, size)
    features = model(x)
    assert features.shape == (2, model.num_features)
    features.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert len(model.stages()) >= 4


@pytest.mark.parametrize("size", [28, 32])
def test_final_feature_maps(size):
    x = torch.randn(1, 1, size, size)
    alexnet = AlexNet(1, size)
    assert alexnet.block3(alexnet.block2(alexnet.block1(x))).shape[-2:] == (4, 4)
    assert VGG(16, 1).layers(x).shape[-2:] == (1, 1)  # five 2x2 pools, rounding up
    googlenet = GoogLeNet(1)
    assert googlenet.layers(googlenet.stem(x)).shape[-2:] == (4, 4)


# torchvision's vgg11/vgg13/vgg16().features: the same conv stack at width 64, without BatchNorm
@pytest.mark.parametrize(
    ("depth", "torchvision_params"), [(11, 9_220_480), (13, 9_404_992), (16, 14_714_688)]
)
@pytest.mark.parametrize("batch_norm", [False, True])
def test_vgg_at_width_64_is_the_original_conv_stack(depth, torchvision_params, batch_norm):
    model = VGG(depth, 3, 64, batch_norm=batch_norm, init="default")
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == depth - 3 and len(norms) == (depth - 3 if batch_norm else 0)
    assert all((conv.bias is None) == batch_norm for conv in convs)
    # with BatchNorm each conv's bias (C) gives way to the norm's scale and shift (2 C)
    extra = sum(conv.out_channels for conv in convs) if batch_norm else 0
    assert sum(p.numel() for p in model.parameters()) == torchvision_params + extra
    assert model.num_features == 512


def test_googlenet_at_width_64_has_the_papers_module_widths():
    model = GoogLeNet(3, 64, init="default")
    inceptions = [module for module in model.modules() if isinstance(module, Inception)]
    # Szegedy et al. 2014, Table 1: output channels of 3a-3b, 4a-4e, 5a-5b
    assert [m.out_chans for m in inceptions] == [256, 480, 512, 512, 512, 528, 832, 832, 1024]
    assert model.num_features == 1024


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: VGG(19), r"depth=19; choose one of \[11, 13, 16\]"),
        (lambda: VGG(11, width=0), "width=0"),
        (lambda: GoogLeNet(width=0), "width=0"),
        (lambda: AlexNet(1, 28, channels=(8, 8, 8, 8)), "channels=.*five"),
        (lambda: AlexNet(1, 28, activation="swish"), "activation='swish'"),
        (lambda: VGG(11, init="orthogonal"), "init='orthogonal'"),
        (lambda: GoogLeNet(activation="mish"), "activation='mish'"),
        (lambda: MLP(1, 28, init="zeros"), "init='zeros'"),
        (lambda: LeNet5(1, 28, pool="l2"), "pool='l2'; choose one of max, avg"),
    ],
)
def test_bad_values_raise_config_error(build, message):
    with pytest.raises(ConfigError, match=message):
        build()


def test_mlp_and_lenet_keep_their_defaults_and_take_the_new_options():
    def count(model: nn.Module, kind: type[nn.Module]) -> int:
        return sum(isinstance(module, kind) for module in model.modules())

    mlp, lenet = MLP(1, 28), LeNet5(1, 28)
    assert count(mlp, nn.ReLU) == 2 and count(lenet, nn.ReLU) == 4
    assert list(mlp.state_dict()) == [  # checkpoints of the old MLP still load
        "layers.0.0.weight",
        "layers.0.0.bias",
        "layers.1.0.weight",
        "layers.1.0.bias",
    ]
    assert count(LeNet5(1, 32, activation="elu", init="xavier"), nn.ELU) == 4
    assert count(MLP(1, 28, (8, 8, 8), activation="gelu"), nn.GELU) == 3


@pytest.mark.parametrize("data", ["fashion_mnist", "cifar10"])
def test_vit_config_on_small_images(make_cfg, data):
    cfg = make_cfg("model=vit", f"data={data}")
    model = instantiate(cfg.model)
    size = cfg.data.image_size
    assert model.model.patch_embed.grid_size == (size // 4, size // 4)  # 7x7 or 8x8 patches
    x = torch.randn(2, cfg.data.in_chans, size, size)
    assert model(x).shape == (2, 128)


def test_model_report_counts_params_and_flops(make_cfg):
    stats = model_report.model_stats(["model=alexnet", "data=cifar10"])
    model = instantiate(make_cfg("model=alexnet", "data=cifar10").model)
    assert stats.params == sum(p.numel() for p in model.parameters())
    assert stats.flops > 0 and stats.input_shape == (3, 32, 32)
    # LeNet-5 on 28 px by hand: 2 FLOPs per multiply-add of conv1, conv2 and the two FC layers
    lenet = model_report.model_stats(["model=lenet"])
    assert lenet.flops == 2 * (28 * 28 * 6 * 25 + 10 * 10 * 16 * 6 * 25 + 400 * 120 + 120 * 84)


def test_model_report_counts_lstm_by_formula(make_cfg):
    """The fused LSTM op is invisible to torch's flop counter; the report adds it by formula."""
    sizes = make_cfg("model=seq_lstm").model.sequence_model
    hidden, layers = sizes.hidden_size, sizes.num_layers
    # by hand: 28 rows = 28 steps of 28 features; per step and layer 2 * 4 gates * hidden *
    # (inputs + hidden) FLOPs; the backbone's features are the last hidden state (no more work)
    by_hand = 28 * sum(
        2 * 4 * hidden * ((28 if i == 0 else hidden) + hidden) for i in range(layers)
    )
    assert model_report.model_stats(["model=seq_lstm"]).flops == by_hand
    assert model_report.lstm_flops(nn.LSTM(28, 64, 2), batch=3, steps=5) == 3 * 5 * (
        2 * 4 * 64 * (28 + 64) + 2 * 4 * 64 * (64 + 64)
    )


def test_model_report_prints(make_cfg, capsys):
    model_report.main(["model=lenet"])
    params = sum(p.numel() for p in instantiate(make_cfg("model=lenet").model).parameters())
    out = capsys.readouterr().out
    assert "model=lenet data=fashion_mnist input 1x28x28" in out
    assert f"params {params:,}" in out
    model_report.main(["--all", "data=digits"])
    rows = capsys.readouterr().out.strip().splitlines()[2:]
    assert [row.split(" | ")[0].strip("| ") for row in rows] == model_report.image_model_options()


def test_model_report_bad_value_is_a_config_error():
    with pytest.raises(ConfigError, match="depth=12"):
        model_report.model_stats(["model=vgg11", "model.depth=12"])
    with pytest.raises(SystemExit, match="model_report: VGG depth=12"):
        model_report.main(["model=vgg11", "model.depth=12"])
