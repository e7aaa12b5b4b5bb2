"""Training-time regularizers: DropConnect, stochastic depth, fractional max pooling, BatchNorm
off, max-norm, L1, and Mixup/CutMix with label smoothing wired into the supervised method."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import nn

from deeprecipe.batches import Labeled
from deeprecipe.callbacks import MaxNorm
from deeprecipe.errors import ConfigError
from deeprecipe.losses import soft_cross_entropy
from deeprecipe.models import MLP, VGG, AlexNet, LeNet5, ResNet, ResNet9
from deeprecipe.models.layers import DropConnectLinear, FractionalMaxPool
from deeprecipe.models.resnet import BasicBlock, Residual


def build_method(cfg):
    return instantiate(
        cfg.method,
        backbone=instantiate(cfg.model),
        optimizer=instantiate(cfg.optim),
        scheduler=instantiate(cfg.scheduler),
        augment=instantiate(cfg.aug),
    )


def fast_trainer(**kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


# training_step called directly, outside a Trainer, as the reference comparisons below do
step_outside_trainer = pytest.mark.filterwarnings("ignore:You are trying to `self.log")


def prepared_batch(method, datamodule) -> Labeled:
    """A training batch as ``training_step`` sees it: on the device, normalized, not augmented."""
    batch = next(iter(datamodule.train_dataloader()))
    return Labeled(method.prepare_images(batch.x, augment=False), batch.y)


# ----------------------------------------------------------------------------- DropConnect
def test_dropconnect_zeroes_weights_only_in_training():
    torch.manual_seed(0)
    layer = DropConnectLinear(40, 30, p=0.5)
    eye = torch.eye(40)
    layer.train()
    used = (layer(eye) - layer.bias).T  # (30, 40): row i of eye picks column i of the weights
    dropped = used == 0
    assert 0.35 < dropped.float().mean().item() < 0.65
    assert torch.allclose(used[~dropped], layer.weight[~dropped] / 0.5)  # kept: scaled by 1/(1-p)
    layer.eval()
    x = torch.randn(5, 40)
    assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))


def test_dropconnect_is_identity_in_expectation():
    torch.manual_seed(0)
    layer = DropConnectLinear(20, 8, p=0.5).train()
    x = torch.randn(1, 20)
    with torch.no_grad():
        mean = torch.stack([layer(x) for _ in range(4000)]).mean(dim=0)
    # one pass has std ~0.6 per output here; the mean of 4000 passes ~0.01
    assert torch.allclose(mean, F.linear(x, layer.weight, layer.bias), atol=0.05)


def test_dropconnect_in_mlp_and_alexnet_heads():
    assert type(MLP(1, 8, (16,)).layers[0][0]) is nn.Linear
    mlp = MLP(1, 8, (16, 16), dropconnect=0.3)
    assert sum(isinstance(m, DropConnectLinear) for m in mlp.modules()) == 2
    alexnet = AlexNet(1, 28, hidden=32, dropconnect=0.3)
    assert sum(isinstance(m, DropConnectLinear) for m in alexnet.modules()) == 2
    with pytest.raises(ConfigError, match="dropconnect=1.0"):
        MLP(1, 8, (16,), dropconnect=1.0)


# ------------------------------------------------------------------------ stochastic depth
def test_stochastic_depth_drops_whole_branches_per_sample_in_training():
    torch.manual_seed(0)
    block = BasicBlock(8, 8, 1, drop_path=0.5).train()
    x = torch.randn(64, 8, 6, 6)
    out = block(x)
    branch = block.bn2(block.conv2(block.conv1(x)))  # batch statistics: the same as in out
    dropped = torch.tensor([torch.allclose(out[i], torch.relu(x[i])) for i in range(64)])
    kept = torch.tensor(
        [torch.allclose(out[i], torch.relu(2 * branch[i] + x[i]), atol=1e-6) for i in range(64)]
    )
    assert 10 < int(dropped.sum()) < 54
    assert torch.equal(dropped, ~kept)  # every sample: the whole branch, or none of it


def test_stochastic_depth_is_identity_in_eval():
    torch.manual_seed(0)
    x = torch.randn(4, 8, 6, 6)
    block = BasicBlock(8, 8, 1, drop_path=0.5).eval()
    assert torch.equal(block(x), torch.relu(block.bn2(block.conv2(block.conv1(x))) + x))
    residual = Residual(8, drop_path=0.5).eval()
    assert torch.equal(residual(x), x + residual.body(x))
    deep, plain = ResNet(18, 1, 8, drop_path_rate=0.3), ResNet(18, 1, 8)
    plain.load_state_dict(deep.state_dict())
    images = torch.randn(2, 1, 16, 16)
    assert torch.equal(deep.eval()(images), plain.eval()(images))


def test_stochastic_depth_rates_grow_linearly():
    rates = [block.drop_path.p for stage in ResNet(18, 1, 8, drop_path_rate=0.4).layers
             for block in stage]  # fmt: skip
    assert rates == pytest.approx([0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4])
    resnet9 = ResNet9(1, 8, drop_path_rate=0.4)
    assert [resnet9.layer1[2].drop_path.p, resnet9.layer3[2].drop_path.p] == [0.2, 0.4]
    with pytest.raises(ConfigError, match="drop_path_rate=1.0"):
        ResNet9(1, 8, drop_path_rate=1.0)


# --------------------------------------------------------------------- BatchNorm on/off
@pytest.mark.parametrize(
    "model", [ResNet9(1, 8, batch_norm=False), ResNet(18, 1, 8, batch_norm=False)]
)
def test_resnets_without_batch_norm(model):
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert all(m.bias is not None for m in model.modules() if isinstance(m, nn.Conv2d))
    assert torch.isfinite(model(torch.randn(2, 1, 28, 28))).all()


def test_zero_init_residual_without_batch_norm_starts_as_identity():
    block = ResNet(18, 1, 8, batch_norm=False).layers[0][0]  # identity shortcut
    x = torch.rand(2, 8, 6, 6)  # non-negative: relu(x) = x
    assert torch.equal(block(x), x)


# ---------------------------------------------------------------- fractional max pooling
@pytest.mark.parametrize(
    "make",
    [
        lambda pool: LeNet5(1, 28, pool=pool),
        lambda pool: AlexNet(1, 28, hidden=32, pool=pool),
        lambda pool: VGG(11, 1, 4, pool=pool),
    ],
    ids=["lenet", "alexnet", "vgg"],
)
def test_fractional_pooling_is_a_drop_in(make):
    torch.manual_seed(0)
    model, reference = make("fractional"), make("max")
    assert any(isinstance(m, FractionalMaxPool) for m in model.modules())
    x = torch.randn(3, 1, 28, 28)
    assert model(x).shape == reference(x).shape
    model.eval()
    assert torch.equal(model(x), model(x))  # one fixed draw in evaluation
    model.train()
    assert not torch.equal(model(x), model(x))  # windows drawn anew in training


def test_fractional_pool_halves_rounding_up_and_bad_pool_names():
    pool = FractionalMaxPool()
    assert pool(torch.randn(2, 3, 7, 9)).shape == (2, 3, 4, 5)
    with pytest.raises(ConfigError, match="VGG pool='median'; choose one of max, fractional"):
        VGG(11, 1, 4, pool="median")


# ----------------------------------------------------------------------------- max-norm
def test_max_norm_bounds_every_unit_of_linear_and_conv_layers():
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(16, 5))
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.mul_(100)
    callback = MaxNorm(max_norm=0.5)
    callback.on_fit_start(None, module)
    callback.on_train_batch_end(None, module, None, None, 0)
    conv, linear = module[0].weight, module[2].weight
    assert (conv.flatten(1).norm(dim=1) <= 0.5 + 1e-6).all()
    assert (linear.norm(dim=1) <= 0.5 + 1e-6).all()
    assert linear.norm(dim=1).max() > 0.49  # rescaled onto the bound, not shrunk to zero


def test_max_norm_during_training(make_cfg):
    cfg = make_cfg("data=digits", "model=mlp", "aug=none")
    method = build_method(cfg)
    linears = [m for m in method.modules() if isinstance(m, nn.Linear)]
    assert max(m.weight.norm(dim=1).max().item() for m in linears) > 0.5
    fast_trainer(fast_dev_run=3, callbacks=[MaxNorm(0.5)]).fit(
        method, datamodule=instantiate(cfg.data)
    )
    assert all((m.weight.norm(dim=1) <= 0.5 + 1e-6).all() for m in linears)
    with pytest.raises(ConfigError, match="max_norm=0"):
        MaxNorm(0)


# ----------------------------------------------------------------------------------- L1
@step_outside_trainer
def test_l1_adds_exactly_its_penalty_to_the_loss(make_cfg, fashion):
    with_l1 = build_method(make_cfg("model=mlp", "method.l1=0.001"))
    plain = build_method(make_cfg("model=mlp"))
    plain.load_state_dict(with_l1.state_dict())
    batch = prepared_batch(plain, fashion)
    # independent reference: the weight matrices of every linear layer (biases left out)
    weights = sum(m.weight.abs().sum() for m in with_l1.modules() if isinstance(m, nn.Linear))
    difference = with_l1.training_step(batch, 0) - plain.training_step(batch, 0)
    assert difference.item() == pytest.approx(0.001 * weights.item(), rel=1e-5)
    with pytest.raises(Exception, match="method.l1=-1"):  # ConfigError, wrapped by Hydra
        build_method(make_cfg("model=mlp", "method.l1=-1"))


# ---------------------------------------------------------------- Mixup/CutMix wiring
@step_outside_trainer
def test_mixing_runs_fast_dev_run_and_uses_soft_targets(make_cfg, fashion):
    method = build_method(make_cfg("model=mlp", "method=supervised_mix"))
    assert method.mixing is not None and method.mixing.label_smoothing == 0.1
    assert method.label_smoothing == 0.0
    batch = prepared_batch(method, fashion)
    torch.manual_seed(0)
    loss = method.training_step(batch, 0)
    torch.manual_seed(0)
    mixed, targets = method.mixing(batch.x, batch.y)
    assert not torch.equal(mixed, batch.x)
    assert torch.allclose(loss, soft_cross_entropy(method(mixed), targets))
    before = [p.detach().clone() for p in method.parameters()]
    fast_trainer(fast_dev_run=2).fit(method, datamodule=fashion)
    assert any(not torch.equal(b, a) for b, a in zip(before, method.parameters(), strict=True))
    result = fast_trainer(fast_dev_run=2).test(method, fashion, verbose=False)[0]
    assert 0.0 <= result["test/acc"] <= 1.0


def test_mixing_refuses_double_smoothing_and_wrong_classes(make_cfg):
    with pytest.raises(Exception, match="smooth the targets twice") as raised:
        build_method(make_cfg("model=mlp", "method=supervised_mix", "method.label_smoothing=0.1"))
    assert isinstance(raised.value.__cause__ or raised.value, ConfigError)
    with pytest.raises(Exception, match="mixing.num_classes=5"):
        build_method(make_cfg("model=mlp", "method=supervised_mix", "method.mixing.num_classes=5"))
