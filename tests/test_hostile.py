"""Hostile input: every bad file or config value is a DeeprecipeError naming the problem, raised
before training, and a failing re-run loses nothing saved earlier.

Besides one test per item of the list (corrupt and truncated images, odd image modes and sizes,
empty class folders, labels out of range, NaN/Inf pixels, invalid UTF-8, config values of the
wrong type or range), property-based tests (hypothesis) throw random config values and random
data corruptions at the checks and require a clean result: it builds and sets up, or a
DeeprecipeError is raised -- never another exception from deep inside torch or Lightning.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import DictConfig, OmegaConf, open_dict
from PIL import Image

import deeprecipe.train as train
from conftest import CONF, QUIET
from deeprecipe.data import CharTextDataModule, ImageFolderDataModule
from deeprecipe.data.base import ImageArrays, ImageDataModule
from deeprecipe.errors import ConfigError, CorruptDataError, DeeprecipeError

# HYPOTHESIS_EXAMPLES=1000 for a longer search than the suite's
PROPERTY = settings(
    max_examples=int(os.environ.get("HYPOTHESIS_EXAMPLES", 30)),
    deadline=None,
    database=None,  # no .hypothesis folder in the repository
    suppress_health_check=[HealthCheck.too_slow],
)


# ------------------------------------------------------------------------------ images
def image_bytes(kind: str, rng: np.random.Generator, size: tuple[int, int] = (12, 10)) -> bytes:
    """An image file of `kind`, as bytes (PIL writes them; torchvision must read them)."""
    height, width = size
    rgb = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    if kind == "png":
        rgb.save(buffer, "PNG")
    elif kind == "jpeg":
        rgb.save(buffer, "JPEG")
    elif kind == "cmyk":
        rgb.convert("CMYK").save(buffer, "JPEG")
    elif kind == "rgba":
        rgb.convert("RGBA").save(buffer, "PNG")
    elif kind == "palette":
        rgb.convert("P").save(buffer, "PNG")
    elif kind == "bilevel":
        rgb.convert("1").save(buffer, "PNG")
    elif kind == "grey16":
        grey = rng.integers(0, 65536, (height, width)).astype(np.uint16)
        Image.fromarray(grey).save(buffer, "PNG")
    elif kind == "gif_animated":
        frames = [rgb, rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
        frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    elif kind == "bmp":
        rgb.save(buffer, "BMP")
    elif kind == "tiff":
        rgb.save(buffer, "TIFF")
    else:
        raise ValueError(kind)
    return buffer.getvalue()


CONVERTIBLE = ["png", "jpeg", "cmyk", "rgba", "palette", "bilevel", "grey16", "gif_animated"]
CONVERTIBLE += ["bmp", "tiff"]


def write_folder(root: Path, per_class: int = 4, classes: int = 2, kind: str = "png") -> Path:
    rng = np.random.default_rng(0)
    for cls in range(classes):
        folder = root / f"class{cls}"
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            (folder / f"{index}.{'jpg' if kind == 'jpeg' else 'png'}").write_bytes(
                image_bytes(kind, rng, (10 + index, 14))
            )
    return root


def folder_data(root: Path, **kwargs) -> ImageFolderDataModule:
    settings_ = {"num_classes": 2, "image_size": 8, "batch_size": 2, "val_size": 1}
    return ImageFolderDataModule(root=str(root), **{**settings_, **kwargs})


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (lambda data: data[: len(data) // 2], "truncated"),
        (lambda data: b"\x89PNG\r\n\x1a\n" + bytes(range(200)), "Cannot decode image"),
        (lambda data: b"", "Cannot decode image"),
        (lambda data: b"plain text, not an image", "Cannot decode image"),
    ],
)
def test_corrupt_and_truncated_images_are_named(tmp_path, damage, words):
    write_folder(tmp_path)
    bad = tmp_path / "class1" / "2.png"
    bad.write_bytes(damage(bad.read_bytes()))
    with pytest.raises(CorruptDataError, match=words) as raised:
        folder_data(tmp_path).setup()
    assert str(bad) in str(raised.value) and "data.skip_corrupt=true" in str(raised.value)
    datamodule = folder_data(tmp_path, skip_corrupt=True)
    datamodule.setup()
    assert datamodule.skipped == [bad]


@pytest.mark.parametrize("kind", CONVERTIBLE)
@pytest.mark.parametrize("in_chans", [1, 3])
def test_every_image_mode_becomes_uint8_of_the_configured_shape(tmp_path, kind, in_chans):
    (tmp_path / "a").mkdir()
    path = tmp_path / "a" / f"x.{kind}"
    path.write_bytes(image_bytes(kind, np.random.default_rng(1), (9, 13)))
    image = folder_data(tmp_path, in_chans=in_chans, image_size=6)._decode(path)
    assert image is not None and image.dtype == torch.uint8
    assert tuple(image.shape) == (in_chans, 6, 6)


def test_sixteen_bit_images_are_rescaled_not_clipped(tmp_path):
    grey = np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000 + 7  # up to 63007
    path = tmp_path / "deep.png"
    Image.fromarray(grey).save(path)
    image = folder_data(tmp_path, in_chans=1, image_size=8)._decode(path)
    expected = torch.from_numpy((grey >> 8).astype(np.uint8))  # the top 8 of 16 bits
    assert image is not None and torch.equal(image[0], expected)


def test_sizes_tiny_and_odd_images_and_a_wrong_configured_size(tmp_path):
    rng = np.random.default_rng(2)
    for cls, sizes in enumerate([[(1, 1), (3, 40)], [(40, 3), (17, 17)]]):
        (tmp_path / f"c{cls}").mkdir()
        for index, size in enumerate(sizes):
            (tmp_path / f"c{cls}" / f"{index}.png").write_bytes(image_bytes("png", rng, size))
    datamodule = folder_data(tmp_path, image_size=5, val_size=0, test_size=1, batch_size=1)
    datamodule.setup()
    assert datamodule.train is not None and datamodule.train.images.shape[1:] == (3, 5, 5)
    # Fashion-MNIST is not resized: a configured size that differs from the files is named
    from deeprecipe.data import DigitsDataModule, FashionMNISTDataModule

    with pytest.raises(ConfigError, match="data.image_size=32"):
        FashionMNISTDataModule(image_size=32).setup()
    with pytest.raises(ConfigError, match="data.image_size=0"):
        DigitsDataModule(image_size=0)


def test_empty_class_folder_is_named(tmp_path):
    write_folder(tmp_path)
    (tmp_path / "class2").mkdir()
    with pytest.raises(CorruptDataError, match="class2 holds no images"):
        folder_data(tmp_path, num_classes=3).setup()


class ArraySource(ImageDataModule):
    """A source that returns the arrays it is given (for label and pixel corruptions)."""

    def __init__(self, arrays: ImageArrays, **kwargs) -> None:
        super().__init__(
            num_classes=3, in_chans=1, image_size=4, batch_size=2, val_size=2, **kwargs
        )
        self.arrays = arrays

    def load_arrays(self) -> tuple[ImageArrays, ImageArrays | None]:
        return self.arrays, None


def arrays(labels: list[int], images: torch.Tensor | None = None) -> ImageArrays:
    count = len(labels)
    if images is None:
        images = torch.randint(0, 256, (count, 1, 4, 4), dtype=torch.uint8)
    return ImageArrays(images, torch.tensor(labels))


@pytest.mark.parametrize("bad_label", [-1, 3, 99])
def test_labels_out_of_range_are_named(bad_label):
    labels = [0, 1, 2] * 4
    labels[5] = bad_label
    with pytest.raises(CorruptDataError, match="data.num_classes=3"):
        ArraySource(arrays(labels)).setup()


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_or_inf_pixels_are_named(bad):
    images = torch.rand(12, 1, 4, 4)
    images[3, 0, 1, 1] = bad
    with pytest.raises(CorruptDataError, match="1 pixel values are NaN or infinite"):
        ArraySource(arrays([0, 1, 2] * 4, images)).setup()


def test_invalid_utf8_text_is_named(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_bytes(("hello world. " * 400).encode() + b"\xff\xfe" + b"tail" * 100)
    with pytest.raises(CorruptDataError, match=r"not valid UTF-8: byte 0xff at byte offset 5200"):
        CharTextDataModule(path=str(path), seq_len=8, batch_size=2).setup()


# ----------------------------------------------------------------------- config values
def compose_run(run_dir: Path, *overrides: str) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=["+experiment=digits_mlp", *QUIET, *overrides],
            return_hydra_config=True,
        )
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.runtime.cwd = str(run_dir.parent)
        cfg.hydra.run.dir = str(run_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("optim.lr=-0.1", "optim.lr=-0.1; it must be a positive number"),
        ("optim.lr=0", "optim.lr=0"),
        ("optim.lr=nan", "optim.lr=nan"),
        ("optim.lr=inf", "optim.lr=inf"),
        ("optim.lr=fast", "optim.lr='fast'"),
        ("optim.weight_decay=-1e-4", "optim.weight_decay=-0.0001"),
        ("data.batch_size=0", "data.batch_size=0; it must be a positive integer"),
        ("data.batch_size=2.5", "data.batch_size=2.5"),
        ("data.batch_size=many", "data.batch_size='many'"),
        ("data.labels_per_class=0", "data.labels_per_class=0"),
        ("data.labels_per_class=5000", "data.labels_per_class=5000 but class"),
        ("data.train_fraction=1.5", "data.train_fraction=1.5"),
        ("data.val_size=-3", "data.val_size=-3"),
        ("trainer.max_epochs=-5", "trainer.max_epochs=-5"),
        ("trainer.max_epochs=two", "trainer.max_epochs='two'"),
        ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches=0"),
        ("seed=1.5", "seed=1.5; it must be an integer"),
        ("resume=sometimes", "resume='sometimes'"),
        ("data.batch_size=5000", "fewer than data.batch_size=5000"),
    ],
)
def test_wrong_config_values_are_named_before_training(tmp_path, override, words):
    run_dir = tmp_path / "run"
    with pytest.raises(DeeprecipeError) as raised:
        train.run(compose_run(run_dir, override))
    error = train.user_error(raised.value)
    assert error is not None and words in str(error)
    assert not (run_dir / "checkpoints").exists()  # nothing trained, nothing written
    GlobalHydra.instance().clear()


def test_eval_checkpoint_both_reports_best_and_final_weights(tmp_path):
    run_dir = tmp_path / "run"
    cfg = compose_run(run_dir, "trainer.max_epochs=4", "logger=csv", "eval_checkpoint=both")
    metrics = train.run(cfg)
    assert metrics["eval_checkpoint"] == "both"
    # recompute both from the saved checkpoints, independently of run()'s bookkeeping
    datamodule, method, trainer = train.build(cfg)
    for prefix, ckpt in (
        ("", metrics["best_ckpt"]),
        ("final/", str(run_dir / "checkpoints/last.ckpt")),
    ):
        test = trainer.test(method, datamodule=datamodule, ckpt_path=ckpt, verbose=False)[0]
        assert metrics[f"{prefix}test/loss"] == pytest.approx(test["test/loss"], rel=1e-6)
        assert metrics[f"{prefix}test/acc"] == pytest.approx(test["test/acc"])
    with pytest.raises(
        ConfigError, match="eval_checkpoint='newest'; it must be best, last or both"
    ):
        train.run(compose_run(tmp_path / "bad", "eval_checkpoint=newest"))
    GlobalHydra.instance().clear()


def test_failing_rerun_in_an_existing_run_dir_loses_nothing(tmp_path):
    run_dir = tmp_path / "run"
    train.run(compose_run(run_dir, "trainer.max_epochs=1", "logger=csv"))
    saved = {
        p.relative_to(run_dir): p.read_bytes()
        for p in run_dir.rglob("*")
        if p.is_file() and ".hydra" not in p.parts
    }
    assert Path("metrics.json") in saved and Path("checkpoints/last.ckpt") in saved
    assert Path("csv/metrics.csv") in saved
    for override in (
        "optim.lr=-1",  # config check
        "data.labels_per_class=5000",  # data setup
        f"ckpt_path={run_dir / 'metrics.json'}",  # not a checkpoint
        "data.num_classes=5",  # labels out of range
    ):
        with pytest.raises(DeeprecipeError):
            train.run(compose_run(run_dir, "trainer.max_epochs=1", "logger=csv", override))
        now = {path: (run_dir / path).read_bytes() for path in saved}
        assert now == saved, override
    GlobalHydra.instance().clear()


# ------------------------------------------------------------------ property-based tests
KEYS = [
    "optim.lr",
    "optim.weight_decay",
    "data.batch_size",
    "data.eval_batch_size",
    "data.labels_per_class",
    "data.train_fraction",
    "data.val_size",
    "data.test_size",
    "data.num_classes",
    "trainer.max_epochs",
    "trainer.max_steps",
    "trainer.accumulate_grad_batches",
    "trainer.gradient_clip_val",
    "trainer.log_every_n_steps",
    "seed",
    "model.dropout",
    "resume",
    "ckpt_path",
]
VALUES = st.one_of(
    st.integers(-5, 3000),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from([0, 1, -1, 0.0, 0.5, 1.0, 1e-3, 1e9, True, False, None]),
    st.text(max_size=6),
    st.lists(st.integers(-2, 2), max_size=2),
)


@pytest.fixture(scope="module")
def base_cfg(tmp_path_factory) -> DictConfig:
    cfg = compose_run(tmp_path_factory.mktemp("prop") / "run")
    GlobalHydra.instance().clear()
    return cfg


@PROPERTY
@given(changes=st.lists(st.tuples(st.sampled_from(KEYS), VALUES), min_size=1, max_size=3))
def test_any_config_values_build_or_fail_cleanly(base_cfg, changes):
    cfg = base_cfg.copy()
    with open_dict(cfg):
        for key, value in changes:
            OmegaConf.update(cfg, key, value, merge=False)
    try:
        train.check_config(cfg)
        datamodule, _, _ = train.build(cfg)
        datamodule.setup("fit")
    except Exception as raised:  # the property: only user errors escape
        if train.user_error(raised) is None:
            raise AssertionError(f"{changes}: {type(raised).__name__}: {raised}") from raised


KINDS = [*CONVERTIBLE, "truncated", "random", "empty"]


def corrupted_file(kind: str, rng: np.random.Generator) -> bytes:
    if kind == "truncated":
        data = image_bytes("png", rng)
        return data[: len(data) // 2]
    if kind == "random":
        return rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
    if kind == "empty":
        return b""
    return image_bytes(kind, rng, (int(rng.integers(1, 20)), int(rng.integers(1, 20))))


@PROPERTY
@given(
    folders=st.lists(st.lists(st.sampled_from(KINDS), max_size=4), min_size=1, max_size=3),
    num_classes=st.integers(1, 4),
    in_chans=st.sampled_from([1, 3]),
    skip_corrupt=st.booleans(),
    seed=st.integers(0, 100),
)
def test_any_image_folder_loads_or_fails_cleanly(
    folders, num_classes, in_chans, skip_corrupt, seed
):
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as root:
        for cls, kinds in enumerate(folders):
            folder = Path(root) / f"class{cls}"
            folder.mkdir()
            for index, kind in enumerate(kinds):
                (folder / f"{index}.png").write_bytes(corrupted_file(kind, rng))
        try:
            datamodule = ImageFolderDataModule(
                root=root,
                num_classes=num_classes,
                in_chans=in_chans,
                image_size=6,
                batch_size=1,
                val_size=1,
                test_size=1,
                skip_corrupt=skip_corrupt,
            )
            datamodule.setup()
        except DeeprecipeError:
            return
        assert datamodule.train is not None
        assert datamodule.train.images.dtype == torch.uint8
        assert tuple(datamodule.train.images.shape[1:]) == (in_chans, 6, 6)


@PROPERTY
@given(
    text=st.binary(max_size=400) | st.text(max_size=400).map(str.encode),
    repeat=st.integers(1, 30),
    seq_len=st.integers(-2, 40),
    batch_size=st.integers(-2, 8),
)
def test_any_text_file_loads_or_fails_cleanly(text, repeat, seq_len, batch_size):
    with tempfile.TemporaryDirectory() as root:
        path = Path(root) / "corpus.txt"
        path.write_bytes(text * repeat)
        try:
            datamodule = CharTextDataModule(
                path=str(path), vocab_size=16, seq_len=seq_len, batch_size=batch_size
            )
            datamodule.setup("fit")
        except DeeprecipeError:
            return
        assert datamodule.train is not None and len(datamodule.train) > 0
