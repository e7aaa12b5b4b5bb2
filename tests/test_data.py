"""Data sources read real files, split deterministically and fail with clear messages."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest
import torch
from torchvision.io import write_png

from conftest import requires_fashion
from deeprecipe.data import (
    DigitsDataModule,
    FashionMNISTDataModule,
    ImageFolderDataModule,
    TorchvisionDataModule,
)
from deeprecipe.data.base import TensorBatchDataset
from deeprecipe.data.fashion_mnist import DEBIAN_ROOT, load_split
from deeprecipe.errors import ConfigError, CorruptDataError, DataNotFoundError


@requires_fashion
def test_fashion_reads_real_idx_files():
    train = load_split(Path(DEBIAN_ROOT), "train")
    test = load_split(Path(DEBIAN_ROOT), "t10k")
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10


def test_fashion_split_stats_and_subsets(fashion):
    assert (len(fashion.train), len(fashion.val), len(fashion.test)) == (55000, 5000, 10000)
    # val is carved out of the training set with a fixed seed: same every time
    again = FashionMNISTDataModule(batch_size=16)
    again.setup()
    assert torch.equal(again.val.labels, fashion.val.labels)
    assert 0.25 < fashion.mean[0] < 0.32 and 0.32 < fashion.std[0] < 0.38
    pixels = fashion.train.images.float() / 255
    assert fashion.mean[0] == pytest.approx(pixels.mean().item(), abs=1e-4)

    few = FashionMNISTDataModule(batch_size=16, labels_per_class=7, split_seed=3)
    few.setup()
    assert torch.bincount(few.train.labels).tolist() == [7] * 10
    tenth = FashionMNISTDataModule(batch_size=16, train_fraction=0.1)
    tenth.setup()
    assert len(tenth.train) == pytest.approx(5500, abs=10)
    assert torch.equal(tenth.val.labels, fashion.val.labels)


def test_batches_are_uint8_tensors(fashion):
    batch = next(iter(fashion.train_dataloader()))
    assert batch.x.shape == (16, 1, 28, 28) and batch.x.dtype == torch.uint8
    assert batch.y.shape == (16,) and batch.y.dtype == torch.int64
    dataset = TensorBatchDataset(fashion.train)
    assert torch.equal(dataset.__getitems__([3, 5]).x[1], dataset[5].x)


def test_missing_fashion_names_the_fix(tmp_path):
    datamodule = FashionMNISTDataModule(root=str(tmp_path))
    with pytest.raises(DataNotFoundError, match="apt-get install dataset-fashion-mnist"):
        datamodule.prepare_data()


@requires_fashion
def test_truncated_idx_file_is_named(tmp_path):
    for name in (
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ):
        shutil.copy(Path(DEBIAN_ROOT, name), tmp_path / name)
    with gzip.open(Path(DEBIAN_ROOT, "train-images-idx3-ubyte.gz")) as handle:
        raw = handle.read()
    (tmp_path / "train-images-idx3-ubyte").write_bytes(raw[:-100])  # uncompressed works too
    with pytest.raises(CorruptDataError, match="train-images-idx3-ubyte is truncated"):
        FashionMNISTDataModule(root=str(tmp_path)).setup()


def test_digits_and_label_bounds():
    datamodule = DigitsDataModule(batch_size=32)
    datamodule.setup()
    assert len(datamodule.train) + len(datamodule.val) + len(datamodule.test) == 1797
    assert datamodule.train.images.max() == 255
    with pytest.raises(ConfigError, match="labels_per_class=500"):
        DigitsDataModule(labels_per_class=500).setup()
    with pytest.raises(CorruptDataError, match="num_classes=5"):
        DigitsDataModule(num_classes=5).setup()


def test_bad_sizes_rejected():
    with pytest.raises(ConfigError, match="batch_size=0"):
        DigitsDataModule(batch_size=0)
    with pytest.raises(ConfigError, match="in_chans=3"):
        DigitsDataModule(in_chans=3).setup()


def bilinear_reference(image: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of a (H, W) image, half-pixel centres, by the textbook formula."""
    height, width = image.shape
    out = torch.empty(size, size, dtype=torch.float64)
    for i in range(size):
        for j in range(size):
            y = max((i + 0.5) * height / size - 0.5, 0.0)
            x = max((j + 0.5) * width / size - 0.5, 0.0)
            y0, x0 = min(int(y), height - 1), min(int(x), width - 1)
            y1, x1 = min(y0 + 1, height - 1), min(x0 + 1, width - 1)
            dy, dx = y - y0, x - x0
            top = image[y0, x0] * (1 - dx) + image[y0, x1] * dx
            bottom = image[y1, x0] * (1 - dx) + image[y1, x1] * dx
            out[i, j] = top * (1 - dy) + bottom * dy
    return out


def test_digits_upsampled_for_fashion_networks():
    from sklearn.datasets import load_digits

    small, large = DigitsDataModule(), DigitsDataModule(image_size=28)
    small.setup()
    large.setup()
    assert large.train.images.shape[1:] == (1, 28, 28) and large.train.images.dtype == torch.uint8
    assert torch.equal(large.train.labels, small.train.labels)  # same split, same order
    raw = torch.from_numpy(load_digits().images[0]).double() * 255 / 16
    expected = bilinear_reference(raw, 28).round()
    first = DigitsDataModule(image_size=28).load_arrays()[0].images[0, 0].double()
    # float32 against float64: a value at .5 may round either way
    assert (first - expected).abs().max() <= 1 and (first == expected).float().mean() > 0.95


def test_class_subset_relabels_every_split():
    full = DigitsDataModule()
    full.setup()
    part = DigitsDataModule(classes=[7, 2, 9], num_classes=3, val_size=0.2)
    part.setup()
    for split in ("train", "val", "test"):
        arrays = getattr(part, split)
        assert set(arrays.labels.tolist()) == {0, 1, 2}
    # the images of source class 7 are exactly those now labelled 0, in the test split too
    # (no official test set: digits holds one out of the kept images)
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images).mul(255 / 16).round().to(torch.uint8)
    sevens = {img.numpy().tobytes() for img in images[torch.from_numpy(digits.target) == 7]}
    kept = torch.cat([part.train.images, part.val.images, part.test.images])[:, 0]
    labels = torch.cat([part.train.labels, part.val.labels, part.test.labels])
    assert len(kept) == int(
        (torch.from_numpy(digits.target)[:, None] == torch.tensor([7, 2, 9])).sum()
    )
    assert all(
        (img.numpy().tobytes() in sevens) == (int(y) == 0)
        for img, y in zip(kept, labels, strict=True)
    )
    few = DigitsDataModule(classes=[0, 1], num_classes=2, labels_per_class=5, batch_size=4)
    few.setup()
    assert torch.bincount(few.train.labels).tolist() == [5, 5]


def test_class_subset_errors_name_the_fix():
    with pytest.raises(ConfigError, match="set data.num_classes=2"):
        DigitsDataModule(classes=[1, 2])
    with pytest.raises(ConfigError, match="distinct"):
        DigitsDataModule(classes=[1, 1], num_classes=2)
    with pytest.raises(ConfigError, match="no images of class \\[12\\]"):
        DigitsDataModule(classes=[1, 12], num_classes=2).setup()


def test_torchvision_absent_offline_is_clear(tmp_path):
    datamodule = TorchvisionDataModule("cifar10", root=str(tmp_path), download=False)
    with pytest.raises(DataNotFoundError, match="data.download=true"):
        datamodule.setup()


def _write_folder(root: Path, classes: int = 3, per_class: int = 6) -> None:
    generator = torch.Generator().manual_seed(0)
    for cls in range(classes):
        folder = root / f"class{cls}"
        folder.mkdir(parents=True)
        for index in range(per_class):
            image = torch.randint(
                0, 256, (3, 20 + index, 24), generator=generator, dtype=torch.uint8
            )
            write_png(image, str(folder / f"{index}.png"))


def test_image_folder_reads_and_resizes(tmp_path):
    _write_folder(tmp_path)
    datamodule = ImageFolderDataModule(
        root=str(tmp_path), num_classes=3, image_size=16, batch_size=4, val_size=2, test_size=3
    )
    datamodule.setup()
    total = len(datamodule.train) + len(datamodule.val) + len(datamodule.test)
    assert total == 18
    assert datamodule.train.images.shape[1:] == (3, 16, 16)


def test_image_folder_corrupt_file_named_or_skipped(tmp_path):
    _write_folder(tmp_path)
    bad = tmp_path / "class1" / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    kwargs = dict(root=str(tmp_path), num_classes=3, image_size=16, batch_size=4, val_size=2)
    with pytest.raises(CorruptDataError, match="broken.png"):
        ImageFolderDataModule(**kwargs).setup()
    datamodule = ImageFolderDataModule(**kwargs, skip_corrupt=True)
    datamodule.setup()
    assert datamodule.skipped == [bad]


def test_image_folder_empty_class_and_wrong_count(tmp_path):
    _write_folder(tmp_path)
    with pytest.raises(ConfigError, match="data.num_classes=3"):
        ImageFolderDataModule(root=str(tmp_path), num_classes=4, batch_size=2).setup()
    (tmp_path / "class9").mkdir()
    with pytest.raises(CorruptDataError, match="class9 holds no images"):
        ImageFolderDataModule(root=str(tmp_path), num_classes=4, batch_size=2).setup()


def test_torchvision_failed_download_is_clear(tmp_path, monkeypatch):
    from urllib.error import URLError

    import torchvision.datasets.cifar as cifar

    def offline(*args, **kwargs):
        raise URLError("Name or service not known")

    monkeypatch.setattr(cifar, "download_and_extract_archive", offline)
    datamodule = TorchvisionDataModule("cifar10", root=str(tmp_path), download=True)
    with pytest.raises(DataNotFoundError, match="download failed.*no internet"):
        datamodule.prepare_data()


def test_class_subset_refused_where_labels_name_source_classes():
    from deeprecipe.data.hashtag_data import HashtagDigitsDataModule
    from deeprecipe.data.noisy import NoisyDigitsDataModule

    with pytest.raises(ConfigError, match="data.classes does not apply to hashtag"):
        HashtagDigitsDataModule(classes=[0, 1], num_classes=2)
    with pytest.raises(ConfigError, match="data.classes does not apply to noisy"):
        NoisyDigitsDataModule(classes=[0, 1], num_classes=2)
