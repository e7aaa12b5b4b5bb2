"""Hashtag data (simulated tags, label spaces, pool fractions), the hashtag method and its metrics,
and the two-step protocol: weak pretraining, then fine-tuning from ``pretrained=PATH``."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf.errors import InterpolationToMissingValueError
from sklearn.metrics import average_precision_score

from conftest import QUIET, run_cli
from deeprecipe.batches import Tagged
from deeprecipe.data.base import ImageArrays, ImageDataModule, mixed_seed
from deeprecipe.data.hashtag_data import HashtagLabels
from deeprecipe.data.hashtags import build_vocabulary, design_label_space, simulate_hashtags
from deeprecipe.errors import ConfigError
from deeprecipe.methods import HashtagPretraining, Supervised
from deeprecipe.methods.hashtag import TagMeanAveragePrecision
from deeprecipe.train import build

# digits carrying simulated hashtags instead of labels, through the suite's configs
DIGITS_HASHTAGS = [
    "data=digits",
    "data._target_=deeprecipe.data.HashtagDigitsDataModule",
    "+data.num_tags=10",
    "data.batch_size=32",
]
MLP = ["model=mlp", "model.hidden_dims=[32]", "aug=none"]
N_IMAGES, N_TEST = 1000, 200


class IndexedSource(ImageDataModule):
    """1,200 tiny images that carry their index in two pixels, class = index mod 10."""

    def __init__(self, **kwargs) -> None:
        super().__init__(num_classes=10, in_chans=1, image_size=4, val_size=100, **kwargs)

    def load_arrays(self) -> tuple[ImageArrays, ImageArrays]:
        index = torch.arange(N_IMAGES + N_TEST)
        images = torch.zeros(len(index), 1, 4, 4, dtype=torch.uint8)
        images[:, 0, 0, 0], images[:, 0, 0, 1] = index // 256, index % 256
        labels = index % 10
        return (
            ImageArrays(images[:N_IMAGES], labels[:N_IMAGES]),
            ImageArrays(images[N_IMAGES:], labels[N_IMAGES:]),
        )


class IndexedHashtags(HashtagLabels, IndexedSource):
    """The indexed images with simulated hashtags."""


def image_ids(x: torch.Tensor) -> torch.Tensor:
    return x[:, 0, 0, 0].long() * 256 + x[:, 0, 0, 1].long()


def setup_data(**kwargs) -> IndexedHashtags:
    data = IndexedHashtags(batch_size=16, **kwargs)
    data.setup("fit")
    return data


# ---------------------------------------------------------------------------------- data
@pytest.mark.parametrize("label_space", ["designed", "raw"])
def test_batches_carry_the_simulators_tags(label_space):
    data = setup_data(label_space=label_space, tag_seed=3, drop_untagged=False)
    # the documented draw: the simulator on the training split's labels, stream 0 of tag_seed
    plain = IndexedSource(batch_size=16)
    plain.setup("fit")
    assert plain.train is not None and data.train is not None
    vocabulary = build_vocabulary([f"class{k}" for k in range(10)])
    generator = torch.Generator().manual_seed(mixed_seed(3, 0))
    raw = simulate_hashtags(plain.train.labels, vocabulary, generator)  # (N, 35)
    expected = design_label_space(raw, vocabulary) if label_space == "designed" else raw
    assert torch.equal(image_ids(data.train.images), image_ids(plain.train.images))
    assert torch.equal(data.train.tags, expected)
    by_id = dict(zip(image_ids(plain.train.images).tolist(), expected, strict=True))
    batches = list(data.train_dataloader())
    assert len(batches) == len(data.train) // 16
    for batch in batches:
        assert isinstance(batch, Tagged) and batch.tags.dtype == torch.bool
        ids = image_ids(batch.x)
        assert torch.equal(batch.tags, torch.stack([by_id[i] for i in ids.tolist()]))
        assert torch.equal(batch.y_hidden, ids % 10)
    val = next(iter(data.val_dataloader()))
    assert isinstance(val, Tagged) and val.tags.shape[1] == data.num_tags


def test_tags_follow_the_simulators_noise_rates():
    clean = setup_data(label_space="raw", missing_rate=0.0, incorrect_rate=0.0, nonvisual_rate=0.0)
    assert clean.train is not None
    tags = clean.train.tags  # exactly one tag per image, a name of its true class
    assert (tags.sum(dim=1) == 1).all()
    assert torch.equal(clean.target_class[tags.float().argmax(dim=1)], clean.train.labels)
    noisy = setup_data(missing_rate=0.0, incorrect_rate=1.0, nonvisual_rate=1.0)
    assert noisy.train is not None  # designed: the true class plus one wrong one, nothing else
    targets = noisy.train.tags
    assert (targets.sum(dim=1) == 2).all()
    assert targets[torch.arange(len(targets)), noisy.train.labels].all()


def test_label_space_raw_vs_designed():
    designed = setup_data(label_space="designed", drop_untagged=False)
    raw = setup_data(label_space="raw", drop_untagged=False)
    # designed: one target per class, named by its canonical tag; raw: the whole vocabulary
    assert designed.num_tags == 10 and designed.target_names[:2] == ("#class0", "#class1")
    assert torch.equal(designed.target_class, torch.arange(10))
    assert raw.num_tags == 10 * 3 + 5 and raw.target_names == raw.vocabulary.tags
    assert raw.target_names[:4] == ("#class0", "#class0_syn1", "#class0_syn2", "#class1")
    assert raw.target_names[-5:] == ("#tbt", "#love", "#instagood", "#photooftheday", "#happy")
    assert raw.target_class.tolist() == [k for k in range(10) for _ in range(3)] + [-1] * 5
    # the same tags, designed or not
    assert designed.train is not None and raw.train is not None
    assert torch.equal(designed.train.tags, design_label_space(raw.train.tags, raw.vocabulary))
    with pytest.raises(ConfigError, match="set data.num_tags=35"):
        IndexedHashtags(label_space="raw", num_tags=10)
    with pytest.raises(ConfigError, match="data.label_space"):
        IndexedHashtags(label_space="merged")
    with pytest.raises(ConfigError, match="pool_fraction"):
        IndexedHashtags(labels_per_class=5)


def test_drop_untagged_leaves_out_images_without_targets():
    kept = setup_data(missing_rate=0.5, incorrect_rate=0.0)
    everything = setup_data(missing_rate=0.5, incorrect_rate=0.0, drop_untagged=False)
    assert kept.train is not None and everything.train is not None
    assert kept.train.tags.any(dim=1).all()
    assert len(kept.train) == int(everything.train.tags.any(dim=1).sum())


def test_pool_fraction_is_stratified_seeded_and_nested():
    def pool(fraction: float, seed: int = 0) -> tuple[set[int], torch.Tensor]:
        data = setup_data(pool_fraction=fraction, pool_seed=seed, drop_untagged=False)
        assert data.train is not None
        return set(image_ids(data.train.images).tolist()), data.train.labels

    full, full_labels = pool(1.0)
    per_class = torch.bincount(full_labels, minlength=10)  # 90 per class after the val split
    subsets = {}
    for fraction in (0.1, 0.3, 0.5):
        subsets[fraction], labels = pool(fraction)
        expected = [max(1, round(fraction * int(n))) for n in per_class]
        assert torch.bincount(labels, minlength=10).tolist() == expected
    assert subsets[0.1] < subsets[0.3] < subsets[0.5] < full
    assert pool(0.3)[0] == subsets[0.3]
    assert pool(0.3, seed=1)[0] != subsets[0.3]
    with pytest.raises(ConfigError, match="pool_fraction"):
        IndexedHashtags(pool_fraction=0.0)


# ------------------------------------------------------------------------------- method
def tagged_batch(num_tags: int, seed: int = 0) -> Tagged:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (6, 1, 8, 8), generator=generator, dtype=torch.uint8)
    tags = torch.rand(6, num_tags, generator=generator) < 0.3
    tags[0] = False  # an image without tags
    tags[1, :2] = True
    return Tagged(x, tags, torch.arange(6) % 10)


def build_method(cfg):
    return instantiate(
        cfg.method,
        backbone=instantiate(cfg.model),
        optimizer=instantiate(cfg.optim),
        scheduler=instantiate(cfg.scheduler),
        augment=instantiate(cfg.aug),
    )


def hashtag_method(make_cfg, *overrides: str) -> HashtagPretraining:
    method = build_method(make_cfg("method=hashtag", *DIGITS_HASHTAGS, *MLP, *overrides))
    torch.nn.init.normal_(method.head.weight)  # not the zero init: the losses differ then
    return method


def train_loss(method, batch: Tagged) -> torch.Tensor:
    prepared = Tagged(method.prepare_images(batch.x, augment=False), batch.tags, batch.y_hidden)
    with warnings.catch_warnings():  # self.log outside a trainer
        warnings.simplefilter("ignore")
        return method.training_step(prepared, 0)


def test_softmax_loss_is_cross_entropy_against_the_normalized_multi_hot(make_cfg):
    method = hashtag_method(make_cfg)
    batch = tagged_batch(10)
    loss = train_loss(method, batch)
    logits = method(method.prepare_images(batch.x, augment=False)).double()
    terms = []
    for i in range(len(batch.tags)):
        tags = batch.tags[i].nonzero().flatten().tolist()
        if tags:  # -(1/k) sum over the k tags of log softmax
            log_z = torch.logsumexp(logits[i], dim=0)
            terms.append(sum(log_z - logits[i, t] for t in tags) / len(tags))
    assert torch.allclose(loss.double(), torch.stack(terms).mean(), atol=1e-5)


def test_bce_loss_is_per_tag_binary_cross_entropy(make_cfg):
    method = hashtag_method(make_cfg, "method.loss=bce")
    batch = tagged_batch(10)
    logits = method(method.prepare_images(batch.x, augment=False)).double()
    p, t = torch.sigmoid(logits), batch.tags.double()
    expected = -(t * torch.log(p) + (1 - t) * torch.log(1 - p)).mean()
    assert torch.allclose(train_loss(method, batch).double(), expected, atol=1e-5)


def test_class_scores_sum_the_probabilities_of_a_class_tags(make_cfg):
    method = build_method(
        make_cfg(
            "method=hashtag", *DIGITS_HASHTAGS, *MLP, "+data.label_space=raw", "data.num_tags=35"
        )
    )
    method.target_class = torch.tensor([k for k in range(10) for _ in range(3)] + [-1] * 5)
    logits = torch.randn(4, 35, generator=torch.Generator().manual_seed(0))
    p = torch.softmax(logits.double(), dim=1)
    expected = torch.stack([p[:, 3 * k : 3 * k + 3].sum(dim=1) for k in range(10)], dim=1)
    assert torch.allclose(method.class_scores(logits).double(), expected, atol=1e-6)


def test_tag_map_matches_scikit_learn_over_tags_with_positives():
    generator = torch.Generator().manual_seed(0)
    scores = torch.rand(40, 6, generator=generator)
    tags = torch.rand(40, 6, generator=generator) < 0.3
    tags[:, 5] = False  # a tag no image has: left out, not counted as 0
    metric = TagMeanAveragePrecision(6)
    metric.update(scores[:25], tags[:25])
    metric.update(scores[25:], tags[25:])
    expected = sum(average_precision_score(tags[:, k], scores[:, k]) for k in range(5)) / 5
    assert metric.compute().item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    ("loss", "label_space"), [("softmax", "designed"), ("bce", "designed"), ("softmax", "raw")]
)
def test_hashtag_fast_dev_run(make_cfg, loss, label_space):
    num_tags = 10 if label_space == "designed" else 35
    cfg = make_cfg(
        "method=hashtag",
        *DIGITS_HASHTAGS,
        *MLP,
        f"method.loss={loss}",
        f"+data.label_space={label_space}",
        f"data.num_tags={num_tags}",
    )
    data, method = instantiate(cfg.data), build_method(cfg)
    trainer = L.Trainer(
        accelerator="cpu",
        fast_dev_run=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    before = [p.detach().clone() for p in method.parameters()]
    trainer.fit(method, datamodule=data)
    assert any(not torch.equal(b, a) for b, a in zip(before, method.parameters(), strict=True))
    assert method.head.out_features == num_tags
    assert torch.equal(method.target_class, data.target_class)
    metrics = trainer.callback_metrics
    for name in ("val/tag_map", "val/precision_at_1", "val/acc", "val/loss", "train/loss"):
        assert torch.isfinite(metrics[name]), name
    for name in ("val/tag_map", "val/precision_at_1", "val/acc"):
        assert 0.0 <= metrics[name].item() <= 1.0


def test_mismatched_tag_head_is_a_clear_error(make_cfg):
    cfg = make_cfg("method=hashtag", *DIGITS_HASHTAGS, *MLP, "method.num_tags=35")
    trainer = L.Trainer(accelerator="cpu", fast_dev_run=1, logger=False, enable_progress_bar=False)
    with pytest.raises(ConfigError, match=r"method.num_tags=\$\{data.num_tags\}"):
        trainer.fit(build_method(cfg), datamodule=instantiate(cfg.data))


# ------------------------------------------------------------------------- two steps
def test_hashtag_experiments_compose(make_cfg):
    pretrain = make_cfg("+experiment=hashtag_pretrain")
    assert pretrain.method._target_.endswith("HashtagPretraining")
    assert pretrain.data._target_.endswith("HashtagFashionMNISTDataModule")
    assert pretrain.callbacks.model_checkpoint.monitor == "val/tag_map"
    raw = make_cfg("+experiment=hashtag_pretrain", "data=fashion_mnist_hashtags_raw")
    assert raw.data.label_space == "raw" and raw.method.num_tags == 35
    instantiate(raw.data)
    finetune = make_cfg("+experiment=hashtag_finetune")
    with pytest.raises(InterpolationToMissingValueError, match="pretraining_checkpoint"):
        finetune.get("pretrained")  # pretrained=PATH is required: no silent random init
    scratch = make_cfg("+experiment=hashtag_scratch")
    for cfg in (finetune, scratch):  # the same 1% clean split (60 per class), model, schedule
        assert cfg.data._target_.endswith(".FashionMNISTDataModule")
        assert cfg.data.labels_per_class == 60
        assert cfg.model == pretrain.model and cfg.trainer.max_epochs == 30
    assert finetune.method.backbone_lr_scale == 0.1 and scratch.method.backbone_lr_scale == 1.0
    assert scratch.get("pretrained") is None


def test_pretrain_then_finetune_from_the_checkpoint(make_cfg, tmp_path):
    pretrain_cfg = make_cfg("+experiment=hashtag_pretrain", *DIGITS_HASHTAGS, *MLP)
    data, pretrained = instantiate(pretrain_cfg.data), build_method(pretrain_cfg)
    trainer = L.Trainer(
        accelerator="cpu",
        fast_dev_run=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(pretrained, datamodule=data)
    path = tmp_path / "pretrain.ckpt"
    trainer.save_checkpoint(path)
    clean = ["data=digits", "data.labels_per_class=10", "data.batch_size=32", *MLP]
    cfg = make_cfg("+experiment=hashtag_finetune", *clean, f"pretrained={path}")
    datamodule, method, _ = build(cfg)
    assert isinstance(method, Supervised) and method.head.out_features == 10
    for key, value in pretrained.backbone.state_dict().items():
        assert torch.equal(method.backbone.state_dict()[key], value), key
    scratch = build(make_cfg("+experiment=hashtag_scratch", *clean))[1]
    first = next(iter(pretrained.backbone.state_dict()))
    scratch_weights = scratch.backbone.state_dict()[first]
    assert not torch.equal(scratch_weights, method.backbone.state_dict()[first])
    L.Trainer(accelerator="cpu", fast_dev_run=1, logger=False, enable_progress_bar=False).fit(
        method, datamodule=datamodule
    )


@pytest.mark.slow
def test_cli_pretrain_then_finetune(tmp_path):
    """End to end through run.py: the pretraining's metrics.json names its best checkpoint by
    val/tag_map, and the fine-tune starts from it."""
    common = [f"paths.log_dir={tmp_path}", *MLP, *QUIET, "trainer.max_epochs=1"]
    result = run_cli("+experiment=hashtag_pretrain", *DIGITS_HASHTAGS, *common, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs" / "hashtag_pretrain").iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "val_tag_map" in Path(metrics["best_ckpt"]).name
    for key in ("val/tag_map", "val/precision_at_1", "test/tag_map", "test/acc"):
        assert 0.0 <= metrics[key] <= 1.0, key
    result = run_cli(
        "+experiment=hashtag_finetune",
        "data=digits",
        "data.labels_per_class=10",
        "data.batch_size=32",
        *common,
        f"pretrained={metrics['best_ckpt']}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
