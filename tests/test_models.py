"""Every model config meets the backbone contract on its data's input shape (timm-style)."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from conftest import image_model_options
from deeprecipe.errors import ConfigError
from deeprecipe.models import LeNet5, ResNet, TimmBackbone, VideoBackbone
from deeprecipe.recipe.model_report import video_model_options


@pytest.mark.parametrize("option", image_model_options())
@pytest.mark.parametrize("data", ["fashion_mnist", "cifar10"])
def test_forward_backward_contract(make_cfg, option, data):
    cfg = make_cfg(f"model={option}", f"data={data}")
    model = instantiate(cfg.model)
    x = torch.randn(3, cfg.data.in_chans, cfg.data.image_size, cfg.data.image_size)
    features = model.forward_features(x)
    assert features.shape == (3, model.num_features)
    assert torch.isfinite(features).all()
    model.eval()  # dropout off: forward must be forward_features
    assert torch.equal(model(x), model.forward_features(x))
    model.train()
    features.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert len(model.stages()) >= 2
    assert all(isinstance(stage, torch.nn.Module) for stage in model.stages())


# the torchvision video ResNets (31-33 M parameters) on a tiny clip; batch 2, as training-mode
# BatchNorm needs more than one value per channel after their last stage
TINY_CLIP = {"r3d_18": (2, 1, 4, 16, 16), "r2plus1d_18": (2, 1, 4, 16, 16)}


@pytest.mark.parametrize("option", video_model_options())
def test_video_forward_backward_contract(make_cfg, option):
    cfg = make_cfg(f"model={option}", "data=moving_fashion")
    model = instantiate(cfg.model)
    assert isinstance(model, VideoBackbone)
    data = cfg.data
    clip = (3, data.in_chans, data.num_frames, data.image_size, data.image_size)
    x = torch.randn(TINY_CLIP.get(option, clip))  # (B, C, T, H, W)
    features = model.forward_features(x)
    assert features.shape == (x.shape[0], model.num_features)
    assert torch.isfinite(features).all()
    model.eval()
    assert torch.equal(model(x), model.forward_features(x))
    model.train()
    features.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert len(model.stages()) >= 2
    with pytest.raises(ConfigError, match="takes clips"):
        model(torch.randn(2, data.in_chans, data.image_size, data.image_size))


def test_every_video_model_config_is_covered():
    expected = {"r3d_18", "r2plus1d_18", "r3d_small", "r2plus1d_small", "frame2d"}
    assert expected <= set(video_model_options())


def test_resnet_depths_and_bad_values():
    assert sum(p.numel() for p in ResNet(18, 1, 64).parameters()) == pytest.approx(
        11.17e6, rel=0.01
    )
    assert len(ResNet(34, 1, 8).layers[2]) == 6
    with pytest.raises(ConfigError, match="depth=50"):
        ResNet(50)
    with pytest.raises(ConfigError, match="activation"):
        LeNet5(1, 28, activation="swish")


def test_timm_unknown_name():
    with pytest.raises(ConfigError, match="not a timm model"):
        TimmBackbone("no_such_net")


def test_timm_resnet_stages_follow_feature_info():
    from deeprecipe.methods import Supervised
    from deeprecipe.methods.linear_probe import stage_features

    backbone = TimmBackbone("resnet18", in_chans=1)
    net = backbone.model
    stages = backbone.stages()
    assert [stage.boundary for stage in stages] == ["act1", "layer1", "layer2", "layer3", "layer4"]
    # the probe of stage 1 reads layer1's output, computed here by the model's own modules
    backbone.eval()
    x = torch.randn(2, 1, 32, 32)
    expected = net.layer1(net.maxpool(net.act1(net.bn1(net.conv1(x))))).mean(dim=(2, 3))
    assert torch.allclose(stage_features(backbone, x, 1), expected, atol=1e-6)
    # freezing stages 0..1 freezes conv1, bn1 and layer1 (in eval mode), nothing after them
    from functools import partial

    method = Supervised(
        backbone=backbone,
        num_classes=3,
        in_chans=1,
        optimizer=partial(torch.optim.SGD, lr=0.1),
        scheduler=None,
        freeze_stages=1,
    )
    frozen = {n for n, p in backbone.named_parameters() if not p.requires_grad}
    expected_frozen = {
        f"model.{n}" for n, _ in net.named_parameters() if n.startswith(("conv1", "bn1", "layer1"))
    }
    assert frozen == expected_frozen
    method.train()
    assert not net.bn1.training and not net.layer1[0].bn1.training and net.layer2.training
    assert len(backbone.state_dict()) == len(net.state_dict())  # stages add no weights


def test_timm_vit_stages_are_blocks_with_the_tokens_first():
    from deeprecipe.methods.linear_probe import stage_features

    backbone = TimmBackbone(
        "vit_tiny_patch16_224",
        in_chans=1,
        image_size=28,
        patch_size=4,
        embed_dim=32,
        depth=3,
        num_heads=2,
    )
    vit = backbone.model
    stages = backbone.stages()
    assert [stage.boundary for stage in stages] == ["blocks.0", "blocks.1", "blocks.2"]
    first = {id(p) for p in stages[0].parameters()}
    assert {id(vit.cls_token), id(vit.pos_embed), id(vit.patch_embed.proj.weight)} <= first
    assert id(vit.blocks[1].attn.qkv.weight) not in first
    backbone.eval()
    x = torch.randn(2, 1, 28, 28)
    tokens = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
    for block in vit.blocks[:2]:
        tokens = block(tokens)
    assert torch.allclose(stage_features(backbone, x, 1), tokens.mean(dim=1), atol=1e-5)


def test_timm_model_without_feature_info_is_named():
    backbone = TimmBackbone("resnet18", in_chans=1)
    backbone.model.feature_info = []
    with pytest.raises(ConfigError, match="publishes no feature_info"):
        backbone.stages()
