"""Robust and multi-label losses against references, noisy and semi data, and each method's run."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from deeprecipe.batches import Labeled, Semi, Unlabeled
from deeprecipe.data import (
    DigitsDataModule,
    NoisyDigitsDataModule,
    SemiFashionMNISTDataModule,
    SemiSupervised,
)
from deeprecipe.data.base import ImageArrays
from deeprecipe.data.fashion_mnist import DEBIAN_ROOT
from deeprecipe.errors import ConfigError
from deeprecipe.losses import (
    bootstrap_cross_entropy,
    generalized_cross_entropy,
    multi_hot_bce,
    multi_hot_softmax_loss,
    symmetric_cross_entropy,
)
from deeprecipe.methods import MeanTeacher
from deeprecipe.methods import mean_teacher as mean_teacher_module
from deeprecipe.methods.semi_tools import linear_ramp, sigmoid_ramp

# ------------------------------------------------------------------------------------ losses
B, K = 16, 5


@pytest.fixture
def logits_and_labels():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(B, K, generator=generator) * 3, torch.randint(K, (B,), generator=generator)


def reference_probabilities(logits):
    exp = torch.exp(logits.double() - logits.double().max(dim=1, keepdim=True).values)
    return exp / exp.sum(dim=1, keepdim=True)


@pytest.mark.parametrize("q", [0.3, 0.7, 1.0])
def test_gce_matches_reference(logits_and_labels, q):
    logits, y = logits_and_labels
    p = reference_probabilities(logits)
    expected = sum((1 - p[i, y[i]] ** q) / q for i in range(B)) / B
    assert torch.allclose(generalized_cross_entropy(logits, y, q).double(), expected, atol=1e-6)
    # q -> 0 recovers cross-entropy
    ce = F.cross_entropy(logits, y)
    assert torch.allclose(generalized_cross_entropy(logits, y, 1e-4), ce, atol=1e-2)


def test_sce_matches_reference(logits_and_labels):
    logits, y = logits_and_labels
    p = reference_probabilities(logits)
    one_hot = F.one_hot(y, K).double()
    ce = -(one_hot * torch.log(p)).sum(dim=1).mean()
    # reverse CE with log(0) replaced by A = -4: clamp the one-hot at exp(A) before the log
    rce = -(p * torch.log(one_hot.clamp_min(torch.exp(torch.tensor(-4.0)).item()))).sum(1).mean()
    loss = symmetric_cross_entropy(logits, y, alpha=0.1, beta=1.0, log_clamp=-4.0)
    assert torch.allclose(loss.double(), 0.1 * ce + rce, atol=1e-5)


@pytest.mark.parametrize("hard", [False, True])
def test_bootstrap_matches_reference(logits_and_labels, hard):
    logits, y = logits_and_labels
    p = reference_probabilities(logits)
    z = F.one_hot(p.argmax(dim=1), K).double() if hard else p
    target = 0.8 * F.one_hot(y, K).double() + 0.2 * z
    expected = -(target * torch.log(p)).sum(dim=1).mean()
    loss = bootstrap_cross_entropy(logits, y, beta=0.8, hard=hard)
    assert torch.allclose(loss.double(), expected, atol=1e-5)
    assert torch.allclose(bootstrap_cross_entropy(logits, y, beta=1.0), F.cross_entropy(logits, y))


def test_multi_hot_losses_match_reference(logits_and_labels):
    logits, _ = logits_and_labels
    multi_hot = torch.rand(B, K, generator=torch.Generator().manual_seed(1)) < 0.4
    multi_hot[0] = False  # an image without tags
    p = reference_probabilities(logits)
    terms = []
    for i in range(B):
        tags = multi_hot[i].nonzero().flatten()
        if len(tags):
            terms.append(-sum(torch.log(p[i, k]) for k in tags) / len(tags))
    expected = torch.stack(terms).mean()
    assert torch.allclose(multi_hot_softmax_loss(logits, multi_hot).double(), expected, atol=1e-5)
    sigma = torch.sigmoid(logits.double())
    target = multi_hot.double()
    bce = -(target * torch.log(sigma) + (1 - target) * torch.log(1 - sigma)).mean()
    assert torch.allclose(multi_hot_bce(logits, multi_hot).double(), bce, atol=1e-5)


def test_bad_loss_arguments_raise(logits_and_labels):
    logits, y = logits_and_labels
    with pytest.raises(ConfigError, match="q"):
        generalized_cross_entropy(logits, y, q=0.0)
    with pytest.raises(ConfigError, match="log_clamp"):
        symmetric_cross_entropy(logits, y, log_clamp=1.0)
    with pytest.raises(ConfigError, match="beta"):
        bootstrap_cross_entropy(logits, y, beta=1.5)


def test_ramps():
    assert linear_ramp(0.05, 0.1, 0.4) == 0.0 and linear_ramp(0.25, 0.1, 0.4) == pytest.approx(0.5)
    assert linear_ramp(0.9, 0.1, 0.4) == 1.0
    assert sigmoid_ramp(0.0, 0.3) == pytest.approx(torch.exp(torch.tensor(-5.0)).item())
    assert sigmoid_ramp(0.5, 0.3) == 1.0


# -------------------------------------------------------------------------------------- data
class IndexedSemi(SemiSupervised):
    """600 tiny images that carry their index in two pixels, class = index mod 10."""

    def __init__(self, **kwargs) -> None:
        super().__init__(num_classes=10, in_chans=1, image_size=4, val_size=100, **kwargs)

    def load_arrays(self) -> tuple[ImageArrays, ImageArrays]:
        index = torch.arange(700)
        images = torch.zeros(700, 1, 4, 4, dtype=torch.uint8)
        images[:, 0, 0, 0], images[:, 0, 0, 1] = index // 256, index % 256
        return ImageArrays(images[:600], index[:600] % 10), ImageArrays(
            images[600:], index[600:] % 10
        )


def image_ids(x: torch.Tensor) -> torch.Tensor:
    return x[:, 0, 0, 0].long() * 256 + x[:, 0, 0, 1].long()


def test_semi_split_is_balanced_disjoint_and_seeded():
    data = IndexedSemi(labels_per_class=3, mu=4, batch_size=8)
    data.setup("fit")
    assert data.train is not None and data.unlabeled is not None and data.val is not None
    assert torch.bincount(data.train.labels, minlength=10).tolist() == [3] * 10
    labeled, unlabeled = (
        set(image_ids(data.train.images).tolist()),
        image_ids(data.unlabeled.images),
    )
    assert not labeled & set(unlabeled.tolist())
    assert len(labeled) + len(unlabeled) == 500  # every non-validation training image, once
    assert not set(image_ids(data.val.images).tolist()) & (labeled | set(unlabeled.tolist()))
    again = IndexedSemi(labels_per_class=3, mu=4, batch_size=8)
    again.setup("fit")
    assert set(image_ids(again.train.images).tolist()) == labeled

    loader = data.train_dataloader()
    batches = [batch for batch, _, _ in loader]
    assert len(batches) == len(loader) == len(unlabeled) // 32
    batch = batches[0]
    assert isinstance(batch, Semi)
    assert isinstance(batch.labeled, Labeled) and isinstance(batch.unlabeled, Unlabeled)
    assert batch.labeled.x.shape == (8, 1, 4, 4) and batch.unlabeled.x.shape == (32, 1, 4, 4)
    assert torch.equal(batch.unlabeled.y_hidden, image_ids(batch.unlabeled.x) % 10)
    assert torch.equal(batch.labeled.y, image_ids(batch.labeled.x) % 10)
    # 30 labelled images repeat to fill every step; the unlabelled ones come once per epoch
    seen = torch.cat([image_ids(b.unlabeled.x) for b in batches])
    assert len(set(seen.tolist())) == len(seen)


def _semi_ids(data: IndexedSemi, epoch: int) -> list[tuple[list[int], list[int]]]:
    """(labelled ids, unlabelled ids) of every step of ``epoch``."""
    loader = data.train_dataloader()
    for part in loader.flattened:
        part.sampler.set_epoch(epoch)  # what Lightning's fit loop does before each epoch
    return [
        (image_ids(b.labeled.x).tolist(), image_ids(b.unlabeled.x).tolist()) for b, _, _ in loader
    ]


def test_semi_global_batches_do_not_depend_on_the_number_of_processes(monkeypatch):
    from types import SimpleNamespace

    monkeypatch.setenv("PL_GLOBAL_SEED", "3")
    data = IndexedSemi(labels_per_class=3, mu=4, batch_size=8)
    data.setup("fit")
    one = _semi_ids(data, epoch=0)
    assert one == _semi_ids(data, epoch=0)  # a pure function of (seed, epoch)
    assert one != _semi_ids(data, epoch=1)
    shards = []
    for rank in range(2):
        data.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        shards.append(_semi_ids(data, epoch=0))
        assert all(len(lab) == 4 and len(unl) == 16 for lab, unl in shards[-1])  # B / W, mu B / W
    assert len(shards[0]) == len(shards[1]) == len(one)
    for step, (labeled, unlabeled) in enumerate(one):
        # the two processes' batches of a step together are the single process's batch
        assert sorted(shards[0][step][0] + shards[1][step][0]) == sorted(labeled)
        assert sorted(shards[0][step][1] + shards[1][step][1]) == sorted(unlabeled)
    data.trainer = SimpleNamespace(world_size=3, global_rank=0)
    with pytest.raises(ConfigError, match="multiple of 3"):
        data.train_dataloader()


def test_semi_bad_settings_raise():
    with pytest.raises(ConfigError, match="data.mu"):
        IndexedSemi(mu=0)
    with pytest.raises(ConfigError, match="unlabelled batch"):
        IndexedSemi(labels_per_class=3, mu=100, batch_size=8).setup("fit")


def test_noisy_data_corrupts_training_labels_only():
    clean = DigitsDataModule(batch_size=32)
    clean.setup("fit")
    noisy = NoisyDigitsDataModule(noise="symmetric", noise_rate=0.3, batch_size=32)
    noisy.setup("fit")
    assert (
        clean.train is not None and noisy.train is not None and noisy.clean_train_labels is not None
    )
    assert torch.equal(noisy.clean_train_labels, clean.train.labels)
    assert torch.equal(noisy.train.images, clean.train.images)
    flipped = (noisy.train.labels != clean.train.labels).float().mean().item()
    assert flipped == pytest.approx(0.3, abs=0.05)
    assert noisy.noise_transition is not None and noisy.noise_transition.shape == (10, 10)
    for split in ("val", "test"):
        assert torch.equal(getattr(noisy, split).labels, getattr(clean, split).labels)
    with pytest.raises(ConfigError, match="data.noise"):
        NoisyDigitsDataModule(noise="gaussian")


# ------------------------------------------------------------------------------------ methods
@pytest.fixture(scope="module")
def semi_fashion():
    if not Path(DEBIAN_ROOT, "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST not installed (make install does it)")
    data = SemiFashionMNISTDataModule(labels_per_class=4, mu=2, batch_size=16, eval_batch_size=64)
    data.setup("fit")
    return data


def build(cfg, **method_overrides):
    return instantiate(
        cfg.method,
        backbone=instantiate(cfg.model),
        optimizer=instantiate(cfg.optim),
        scheduler=instantiate(cfg.scheduler),
        augment=instantiate(cfg.aug),
        **method_overrides,
    )


def fit_fast(method, datamodule) -> L.Trainer:
    trainer = L.Trainer(
        accelerator="cpu",
        fast_dev_run=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    before = [p.detach().clone() for p in method.parameters() if p.requires_grad]
    trainer.fit(method, datamodule=datamodule)
    after = [p for p in method.parameters() if p.requires_grad]
    assert any(not torch.equal(b, a) for b, a in zip(before, after, strict=True))
    return trainer


@pytest.mark.parametrize("method", ["pseudo_label", "fixmatch", "mean_teacher"])
def test_semi_methods_fast_dev_run(make_cfg, semi_fashion, method):
    cfg = make_cfg(f"method={method}", "data=fashion_mnist_semi", "model=lenet", "aug=weak")
    # threshold 0: every pseudo-label counts, so the unlabelled term is exercised
    overrides = {"confidence_threshold" if method == "mean_teacher" else "threshold": 0.0}
    model = build(cfg, **overrides)
    trainer = fit_fast(model, semi_fashion)
    metrics = trainer.callback_metrics
    assert metrics["train/mask_rate"].item() == pytest.approx(1.0)
    assert 0.0 <= metrics["train/pseudo_acc"].item() <= 1.0
    assert 0.0 <= metrics["val/acc"].item() <= 1.0
    if isinstance(model, MeanTeacher):
        # the teacher moved from its initial copy towards the student, but is not the student
        teacher = torch.cat([p.flatten() for p in model.teacher_backbone.parameters()])
        student = torch.cat([p.flatten() for p in model.backbone.parameters()])
        assert not torch.equal(teacher, student)


def test_mean_teacher_moves_once_per_optimizer_step(make_cfg, semi_fashion, monkeypatch):
    calls = []
    monkeypatch.setattr(mean_teacher_module, "ema_update_", lambda *args: calls.append(args[-1]))
    cfg = make_cfg("method=mean_teacher", "data=fashion_mnist_semi", "model=lenet", "aug=weak")
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=2,
        limit_val_batches=0,
        accumulate_grad_batches=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(build(cfg), datamodule=semi_fashion)
    # two optimizer steps (four batches): backbone and head once each per step, decay 1 - 1/(t+1)
    assert calls == pytest.approx([0.5, 0.5, 2 / 3, 2 / 3])


@pytest.mark.parametrize(
    "loss",
    [
        "deeprecipe.losses.generalized_cross_entropy",
        "deeprecipe.losses.symmetric_cross_entropy",
        "deeprecipe.losses.bootstrap_cross_entropy",
    ],
)
def test_noisy_method_fast_dev_run(make_cfg, fashion, loss):
    cfg = make_cfg("method=noisy", "model=mlp", "~method.loss.q", f"method.loss._target_={loss}")
    fit_fast(build(cfg), fashion)


def test_noisy_method_rejects_bad_loss_arguments(make_cfg):
    with pytest.raises(InstantiationException, match=r"method.loss.q=0\b"):
        build(make_cfg("method=noisy", "model=mlp", "method.loss.q=0"))


# ------------------------------------------------------------------- the study configs
STUDY_LOSSES = {
    "ce": torch.nn.functional.cross_entropy,
    "gce": generalized_cross_entropy,
    "sce": symmetric_cross_entropy,
    "bootstrap": bootstrap_cross_entropy,
}


@pytest.mark.parametrize("loss", list(STUDY_LOSSES))
def test_weak_study_loss_group_replaces_the_method_loss(make_cfg, loss):
    cfg = make_cfg("+experiment=weak_study", "+noise=asym40", f"+loss={loss}")
    assert cfg.data.noise == "confusion_groups" and cfg.data.noise_rate == 0.4
    method = build(cfg)
    assert method.loss_fn.func is STUDY_LOSSES[loss]  # nothing of GCE's q merged in
    logits, labels = torch.randn(6, 10), torch.randint(0, 10, (6,))
    assert torch.isfinite(method.loss_fn(logits, labels))


@pytest.mark.parametrize(
    ("row", "data_type", "method_name"),
    [
        ("supervised", "SelfTrainingFashionMNISTDataModule", "SelfTraining"),
        ("pseudo_label", "SemiFashionMNISTDataModule", "PseudoLabel"),
        ("fixmatch", "SemiFashionMNISTDataModule", "FixMatch"),
        ("mean_teacher", "SemiFashionMNISTDataModule", "MeanTeacher"),
        ("self_training", "SelfTrainingFashionMNISTDataModule", "SelfTraining"),
    ],
)
def test_semi_study_rows_compose(make_cfg, row, data_type, method_name):
    cfg = make_cfg("+experiment=semi_study", f"+semi={row}", "data.labels_per_class=4")
    assert cfg.data._target_.endswith(data_type) and cfg.method._target_.endswith(method_name)
    assert cfg.data.labels_per_class == 4 and cfg.data.batch_size == 64
    assert cfg.trainer.max_steps == 2460 and cfg.trainer.check_val_every_n_epoch is None
    # only the self-training row runs rounds (run.py hands it to deeprecipe.self_training)
    assert (cfg.get("self_training") is not None) == (row == "self_training")


def test_semi_study_supervised_row_fills_batches_from_40_labels(make_cfg):
    cfg = make_cfg("+experiment=semi_study", "+semi=supervised", "data.labels_per_class=4")
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert len(batch.x) == 64  # 40 labelled images repeated in whole copies
    assert len(datamodule.train_dataloader()) == 123
