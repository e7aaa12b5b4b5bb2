"""Transfer protocols: stage-wise linear probes, partial and full fine-tuning (frozen stages,
BatchNorm in eval mode, a lower backbone learning rate), the two-phase schedule, pretrained
checkpoints and timm weights, and the SSL experiment configs (pretrain, linear, finetune, compare).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf.errors import InterpolationToMissingValueError
from torch import Tensor, nn

from conftest import QUIET, run_cli
from deeprecipe.callbacks.finetune import HeadFirstFinetuning
from deeprecipe.errors import CheckpointError, ConfigError, DataNotFoundError
from deeprecipe.methods import LinearProbe, Supervised
from deeprecipe.methods.linear_probe import stage_features
from deeprecipe.methods.optimization import parameter_groups
from deeprecipe.models import ResNet9
from deeprecipe.models.compiled import compile_method
from deeprecipe.models.vit import VisionTransformer
from deeprecipe.train import build, user_error

SMALL = ["model.width=8"]
TINY_VIT = ["model.depth=2", "model.embed_dim=32", "model.num_heads=2"]
SSL_METHODS = {
    "rotation": "RotationPrediction",
    "jigsaw": "Jigsaw",
    "context": "ContextPrediction",
    "simclr": "SimCLR",
    "moco": "MoCo",
    "byol": "BYOL",
    "barlow_twins": "BarlowTwins",
    "mae": "MAE",
}


def build_method(cfg):
    return instantiate(
        cfg.method,
        backbone=instantiate(cfg.model),
        optimizer=instantiate(cfg.optim),
        scheduler=instantiate(cfg.scheduler),
        augment=instantiate(cfg.aug),
    )


def fast_trainer(**kwargs) -> L.Trainer:
    options = {"fast_dev_run": 1, **kwargs}
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **options,
    )


def state(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(before: dict[str, Tensor], module: nn.Module) -> bool:
    return all(torch.equal(before[k], v) for k, v in module.state_dict().items())


# ------------------------------------------------------------------------- stage probes
def test_stage_features_of_a_resnet_are_its_pooled_stage_outputs():
    backbone = ResNet9(1, 8).eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        after_layer1 = backbone.layer1(backbone.prep(x))  # (3, 16, 14, 14)
        assert torch.allclose(stage_features(backbone, x, 1), after_layer1.mean(dim=(2, 3)))
        final = backbone.layer3(backbone.layer2(after_layer1))
        assert torch.allclose(stage_features(backbone, x, 3), final.mean(dim=(2, 3)))
    with pytest.raises(ConfigError, match="stages 0 \\(stem\\) to 3"):
        stage_features(backbone, x, 4)


def test_stage_features_of_a_vit_are_mean_tokens_after_block_k():
    vit = VisionTransformer(28, 1, embed_dim=32, depth=3, num_heads=2).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        tokens = vit.embed(x)
        h = torch.cat([vit.patch_embed.cls_token.expand(2, -1, -1), tokens], dim=1)
        h = vit.blocks[1](vit.blocks[0](h))  # stage 2 is the second block
        assert torch.allclose(stage_features(vit, x, 2), h.mean(dim=1), atol=1e-6)


def test_linear_probe_on_an_intermediate_stage(make_cfg, fashion):
    cfg = make_cfg("method=linear_probe", "method.stage=2", "model=resnet9", *SMALL)
    method = build_method(cfg)
    assert isinstance(method, LinearProbe)
    assert method.head.in_features == 32  # layer2 of ResNet-9 width 8: 4 x 8 channels
    backbone, head = state(method.backbone), state(method.head)
    fast_trainer(fast_dev_run=2).fit(method, datamodule=fashion)
    assert same(backbone, method.backbone) and not same(head, method.head)
    logits = method(torch.zeros(2, 1, 28, 28))
    assert logits.shape == (2, 10)


# ----------------------------------------------------------------- fine-tuning options
def test_partial_finetune_freezes_stem_and_stages_up_to_k(make_cfg, fashion):
    method = build_method(
        make_cfg("method=finetune", "method.freeze_stages=1", "model=resnet9", *SMALL)
    )
    stages = method.backbone.stages()
    frozen, trained = [state(s) for s in stages[:2]], [state(s) for s in stages[2:]]
    trainer = fast_trainer(fast_dev_run=2)
    trainer.fit(method, datamodule=fashion)
    assert all(same(b, s) for b, s in zip(frozen, stages[:2], strict=True))  # BN stats too
    assert all(not same(b, s) for b, s in zip(trained, stages[2:], strict=True))
    optimized = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert not any(id(p) in optimized for s in stages[:2] for p in s.parameters())
    method.train()
    assert not any(m.training for s in stages[:2] for m in s.modules())
    assert all(m.training for s in stages[2:] for m in s.modules())
    with pytest.raises(ConfigError, match="freeze_stages=4"):
        Supervised(ResNet9(1, 8), 10, 1, None, None, freeze_stages=4)  # type: ignore[arg-type]


@pytest.mark.parametrize("bn_eval", [True, False])
def test_bn_eval_keeps_running_statistics(make_cfg, fashion, bn_eval):
    method = build_method(
        make_cfg("method=finetune", f"method.bn_eval={bn_eval}", "model=resnet9", *SMALL)
    )
    norm = method.backbone.prep[1]
    assert isinstance(norm, nn.BatchNorm2d)
    mean, var, weight = (norm.running_mean.clone(), norm.running_var.clone(), norm.weight.clone())
    fast_trainer(fast_dev_run=2).fit(method, datamodule=fashion)  # the zero head: 2 steps
    assert not torch.equal(norm.weight, weight)  # the layer itself trains either way
    unchanged = torch.equal(norm.running_mean, mean) and torch.equal(norm.running_var, var)
    assert unchanged == bn_eval


def test_backbone_learning_rate_is_scaled_by_parameter_groups(make_cfg, fashion):
    cfg = make_cfg("+experiment=simclr_finetune", "pretrained=null", *SMALL, "optim.lr=0.2")
    method = build_method(cfg)
    trainer = fast_trainer()
    trainer.fit(method, datamodule=fashion)
    groups = trainer.optimizers[0].param_groups
    backbone = {id(p) for p in method.backbone.parameters()}
    for group in groups:
        in_backbone = {id(p) in backbone for p in group["params"]}
        assert len(in_backbone) == 1  # a group holds backbone or head parameters, not both
        expected = 0.02 if in_backbone == {True} else 0.2
        assert group["initial_lr"] == pytest.approx(expected)
    covered = {id(p) for g in groups for p in g["params"]}
    assert covered == {id(p) for p in method.parameters()}
    # weight decay stays off norm and bias parameters in both parts
    assert all(g["weight_decay"] == 0.0 for g in groups if all(p.ndim == 1 for p in g["params"]))


def test_parameter_groups_without_a_backbone_lr_are_unchanged():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    model.backbone = nn.Linear(4, 2)  # type: ignore[assignment]
    groups = parameter_groups(model, 0.1, decay_norm_and_bias=False)
    assert [len(g["params"]) for g in groups] == [2, 4] and "lr" not in groups[0]
    scaled = parameter_groups(model, 0.1, decay_norm_and_bias=False, backbone_lr=0.5)
    assert [(len(g["params"]), g.get("lr")) for g in scaled] == [
        (1, None),
        (3, None),
        (1, 0.5),
        (1, 0.5),
    ]


# ---------------------------------------------------------------------------- two-phase
class Recorder(L.Callback):
    """Backbone and head state, trainability and optimizer groups at the end of each epoch."""

    def __init__(self) -> None:
        self.epochs: list[dict] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epochs.append(
            {
                "backbone": state(pl_module.backbone),
                "head": state(pl_module.head),
                "trainable": all(p.requires_grad for p in pl_module.backbone.parameters()),
                "training": pl_module.backbone.training,
                "groups": len(trainer.optimizers[0].param_groups),
            }
        )


def phase_trainer(max_epochs: int, *callbacks: L.Callback) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        max_epochs=max_epochs,
        limit_train_batches=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
    )


def test_two_phase_trains_the_head_first_then_everything(make_cfg, fashion, tmp_path):
    cfg = make_cfg("method=finetune", "model=resnet9", *SMALL, "scheduler=cosine")
    method = build_method(cfg)
    initial = state(method.backbone)
    recorder = Recorder()
    trainer = phase_trainer(3, HeadFirstFinetuning(head_epochs=1), recorder)
    trainer.fit(method, datamodule=fashion)
    first, second, _ = recorder.epochs
    # phase 1: backbone untouched, BatchNorm statistics included (eval mode); the head learns
    assert not first["trainable"] and not first["training"] and first["groups"] == 2
    assert all(torch.equal(initial[k], v) for k, v in first["backbone"].items())
    assert not all(
        torch.equal(initial_head, v)
        for initial_head, v in zip(
            state(build_method(cfg).head).values(), first["head"].values(), strict=True
        )
    )
    # phase 2: everything trains; the backbone's groups at 0.1 x the head's rate, same schedule
    assert second["trainable"] and second["training"] and second["groups"] == 4
    assert not all(torch.equal(first["backbone"][k], v) for k, v in second["backbone"].items())
    groups = trainer.optimizers[0].param_groups
    schedule = trainer.lr_scheduler_configs[0].scheduler
    assert len(schedule.base_lrs) == 4
    head_lr = groups[0]["initial_lr"]
    for group in groups[2:]:
        assert group["initial_lr"] == pytest.approx(0.1 * head_lr)
        assert group["lr"] / group["initial_lr"] == pytest.approx(groups[0]["lr"] / head_lr)

    # resuming in phase 2 restores the groups (not added twice) and their schedule
    path = tmp_path / "phase2.ckpt"
    trainer.save_checkpoint(path)
    resumed = build_method(cfg)
    again = phase_trainer(4, HeadFirstFinetuning(head_epochs=1), Recorder())
    again.fit(resumed, datamodule=fashion, ckpt_path=path)
    assert len(again.optimizers[0].param_groups) == 4
    assert all(p.requires_grad for p in resumed.backbone.parameters())
    assert len(again.lr_scheduler_configs[0].scheduler.base_lrs) == 4


def test_two_phase_needs_a_backbone():
    with pytest.raises(ConfigError, match="head_epochs=-1"):
        HeadFirstFinetuning(head_epochs=-1)
    with pytest.raises(ConfigError, match="has none"):
        HeadFirstFinetuning().freeze_before_training(L.LightningModule())


# ---------------------------------------------------------------- weights and checkpoints
def test_timm_pretrained_offline_is_a_clear_error(make_cfg, monkeypatch, tmp_path):
    """No network (here forced by the Hub's offline mode, with an empty cache)."""
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))
    cfg = make_cfg("model=timm", "model.pretrained=true")
    with pytest.raises(Exception) as raised:  # Hydra wraps it: the cause is checked below
        instantiate(cfg.model)
    error = user_error(raised.value)
    assert isinstance(error, DataNotFoundError)
    message = str(error)
    assert "'resnet18'" in message and "no network" in message
    assert "Download them once with internet" in message and "pretrained=PATH" in message


def checkpoint_of(method: L.LightningModule, fashion, path) -> None:
    trainer = fast_trainer()
    trainer.fit(method, datamodule=fashion)
    trainer.save_checkpoint(path)


@pytest.mark.parametrize(("name", "size"), [("context", SMALL), ("mae", TINY_VIT)])
def test_pretrain_then_linear_and_finetune(make_cfg, fashion, tmp_path, name, size):
    pretrained = build_method(make_cfg(f"+experiment={name}_pretrain", *size))
    path = tmp_path / "pretrain.ckpt"
    checkpoint_of(pretrained, fashion, path)
    for protocol in ("linear", "finetune"):
        cfg = make_cfg(f"+experiment={name}_{protocol}", *size, f"pretrained={path}")
        _, method, _ = build(cfg)
        for key, value in pretrained.backbone.state_dict().items():
            assert torch.equal(method.backbone.state_dict()[key], value), key
        fast_trainer().fit(method, datamodule=fashion)


def test_any_suite_checkpoint_transfers_and_mismatches_fail_clearly(make_cfg, fashion, tmp_path):
    supervised = build_method(make_cfg("method=supervised", "model=resnet9", *SMALL))
    path = tmp_path / "supervised.ckpt"
    checkpoint_of(supervised, fashion, path)
    _, probe, _ = build(make_cfg("+experiment=rotation_linear", *SMALL, f"pretrained={path}"))
    assert torch.equal(probe.backbone.prep[0].weight, supervised.backbone.prep[0].weight)
    with pytest.raises(CheckpointError, match="does not fit the model VisionTransformer"):
        build(make_cfg("+experiment=mae_linear", *TINY_VIT, f"pretrained={path}"))


# ------------------------------------------------------------------------- experiments
@pytest.mark.parametrize("name", sorted(SSL_METHODS))
def test_ssl_experiments_compose(make_cfg, name):
    pretrain = make_cfg(f"+experiment={name}_pretrain")
    assert pretrain.method._target_.endswith(SSL_METHODS[name])
    model = pretrain.model._target_
    assert model.endswith("VisionTransformer" if name == "mae" else "ResNet9")
    assert "knn" in pretrain.callbacks
    for protocol, method in (("linear", "LinearProbe"), ("finetune", "Supervised")):
        cfg = make_cfg(f"+experiment={name}_{protocol}")
        assert cfg.run_name == f"{name}_{protocol}"
        with pytest.raises(InterpolationToMissingValueError, match="pretraining_checkpoint"):
            cfg.get("pretrained")  # pretrained=PATH is required: no silent random init
        assert cfg.model._target_ == model
        assert cfg.method._target_.endswith(method)
    assert cfg.method.backbone_lr_scale == 0.1


def test_ssl_compare_sweeps_every_method_with_its_own_views(make_cfg):
    cfg = make_cfg("+experiment=ssl_compare")
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    swept = str(cfg.hydra.sweeper.params.method).split(",")
    assert sorted(swept) == sorted(SSL_METHODS)
    for name in swept:  # what each job of the sweep composes
        job = make_cfg("+experiment=ssl_compare", f"method={name}")
        two_views = name in ("simclr", "moco", "byol", "barlow_twins")
        assert ("jitter" in job.aug) == two_views, name
        assert job.model._target_.endswith("VisionTransformer" if name == "mae" else "ResNet9")
        method = build_method(job)
        assert type(method).__name__ == SSL_METHODS[name]


@pytest.mark.slow
def test_cli_pretrain_names_its_checkpoint_for_the_protocols(tmp_path):
    """End to end on digits: metrics.json of a pretraining run names its checkpoint, the linear
    experiment takes it as pretrained=PATH, a mismatched model fails with the reason, and the
    protocols refuse to start without a checkpoint."""
    common = [f"paths.log_dir={tmp_path}", "data=digits", *QUIET]
    short = ["trainer.max_epochs=1", "callbacks.knn.every_n_epochs=1"]
    result = run_cli("+experiment=context_pretrain", *common, "model.width=8", *short, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs" / "context_pretrain").iterdir()
    checkpoint = json.loads((run_dir / "metrics.json").read_text())["best_ckpt"]
    assert checkpoint and Path(checkpoint).is_file()

    linear = ["+experiment=context_linear", *common, "model.width=8", "trainer.max_epochs=1"]
    result = run_cli(*linear, f"pretrained={checkpoint}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_cli(
        "+experiment=mae_linear",
        *common,
        "trainer.max_epochs=1",
        f"pretrained={checkpoint}",
        cwd=tmp_path,
    )
    assert result.returncode == 1 and "CheckpointError" in result.stderr
    assert "does not fit the model VisionTransformer" in result.stderr
    result = run_cli(*linear, cwd=tmp_path)  # no pretrained=PATH
    assert result.returncode != 0 and "pretraining_checkpoint" in result.stderr


def test_transfer_experiment_without_pretrained_is_a_config_error(make_cfg):
    """`pretrained: ${pretraining_checkpoint}` left unset stops the build with the fix named."""
    with pytest.raises(ConfigError, match="pass pretrained=PATH"):
        build(make_cfg("+experiment=simclr_linear", "data=digits"))


def test_compile_keeps_the_checkpoint_keys(make_cfg):
    """`compile=true` wraps forward_features; state_dict keys stay `backbone.*` (no _orig_mod)."""
    _, plain, _ = build(make_cfg("data=digits", "model=mlp"))
    _, compiled, _ = build(make_cfg("data=digits", "model=mlp", "compile=true"))
    assert list(compiled.state_dict()) == list(plain.state_dict())
    assert hasattr(compiled.backbone.forward_features, "_torchdynamo_orig_callable")


@pytest.mark.parametrize(
    ("experiment", "copies"),
    [
        ("byol_pretrain", ("momentum_backbone",)),
        ("moco_pretrain", ("momentum_backbone",)),
        ("mean_teacher_fashion", ("teacher_backbone",)),
    ],
)
def test_compiled_backbone_copies_run_their_own_weights(make_cfg, experiment, copies):
    """Momentum networks and teachers of a compiled backbone compile THEIR forward, not the
    online one's (a plain compiled function survives deepcopy bound to the original)."""
    overrides = [f"+experiment={experiment}", "data=digits", "model=mlp", "compile=true"]
    _, method, _ = build(make_cfg(*overrides))
    assert method.backbone.forward_features.owner is method.backbone
    for name in copies:
        copy_ = getattr(method, name)
        assert copy_.forward_features.owner is copy_
    ema_copy = copy.deepcopy(method)  # what the EMA callback makes
    assert ema_copy.backbone.forward_features.owner is ema_copy.backbone


def test_compiled_method_follows_a_deep_copy():
    net = torch.nn.Sequential(torch.nn.Linear(4, 3))
    compile_method(net, "forward", backend="eager")
    twin = copy.deepcopy(net)
    with torch.no_grad():
        twin[0].weight.zero_()
        twin[0].bias.fill_(1.0)
    x = torch.randn(2, 4)
    assert torch.equal(twin.forward(x), torch.ones(2, 3))
    assert torch.allclose(net.forward(x), nn.functional.linear(x, net[0].weight, net[0].bias))


@pytest.mark.slow
def test_compiled_backbone_trains_like_the_eager_one(make_cfg):
    results = {}
    for flag in ("false", "true"):
        L.seed_everything(0)
        datamodule, method, trainer = build(
            make_cfg("data=digits", "model=mlp", f"compile={flag}", *QUIET),
            max_steps=3,
            limit_val_batches=0,
        )
        trainer.fit(method, datamodule=datamodule)
        results[flag] = [p.detach().clone() for p in method.parameters()]
    for eager, compiled in zip(results["false"], results["true"], strict=True):
        assert torch.allclose(eager, compiled, atol=1e-5)
