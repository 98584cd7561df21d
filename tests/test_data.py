"""Registered datasets: sizes, splits that never overlap, determinism, unreadable files skipped and counted."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from digit_bench.config import DataConfig
from digit_bench.data import FASHION_MNIST_DEBIAN, fashion_mnist, folder, load_split
from digit_bench.errors import UserError
from digit_bench.registry import DATASETS


def test_five_datasets_registered():
    assert DATASETS.names() == ["digits", "fashion_mnist", "folder", "imagenet", "synthetic"]


@pytest.mark.skipif(not FASHION_MNIST_DEBIAN.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_debian_files():
    raw = fashion_mnist(None, 32)
    assert len(raw.train) == 60_000 and len(raw.test) == 10_000
    assert raw.train.images[:3].shape == (3, 32, 32, 3) and raw.train.images.array.dtype == np.uint8
    assert sorted(np.unique(raw.train.labels)) == list(range(10)) and raw.train.num_classes == 10
    assert np.bincount(raw.test.labels).tolist() == [1000] * 10


def test_splits_are_deterministic_and_disjoint():
    cfg = DataConfig(name="synthetic", num_val=300, num_train=500, num_test=100)
    tr, va, te = (load_split(cfg, s) for s in ("train", "val", "test"))
    assert (len(tr), len(va), len(te)) == (500, 300, 100)
    again = load_split(cfg, "train")
    assert np.array_equal(tr.images[:], again.images[:]) and np.array_equal(tr.labels, again.labels)
    rows = {a.tobytes() for a in tr.images[:]}
    assert not any(a.tobytes() in rows for a in va.images[:])


def test_digits_are_rgb_at_the_profile_size():
    te = load_split(DataConfig(name="digits", image_size=16, num_val=100), "test")
    assert te.images[:2].shape == (2, 16, 16, 3) and te.num_classes == 10


def test_folder_skips_unreadable_files_and_counts_them(tmp_path, caplog):
    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.fromarray(np.full((20, 30, 3), 40 * i, np.uint8)).save(tmp_path / c / f"{i}.png")
    (tmp_path / "dog" / "broken.png").write_bytes(b"not a png")
    raw = folder(str(tmp_path), 16, test_fraction=0.34)
    assert len(raw.train) + len(raw.test) == 6
    assert raw.train.skipped == [str(tmp_path / "dog" / "broken.png")]
    assert "broken.png" in caplog.text
    assert raw.train.images[:1].shape == (1, 16, 16, 3)


def test_folder_without_readable_images_is_a_user_error(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.jpg").write_bytes(b"garbage")
    with pytest.raises(UserError, match="no readable images"):
        folder(str(tmp_path), 16)


def test_folder_images_stream_and_index_once(tmp_path, monkeypatch):
    """A folder split is indexed once (cached), decoded per item or per DataLoader batch, never held whole."""
    from digit_bench import data
    from digit_bench.eval.fidelity import UInt8Images

    monkeypatch.setenv("DIGIT_BENCH_ROOT", str(tmp_path / "runs"))
    for c in ("a", "b"):
        (tmp_path / "img" / c).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(np.full((20, 24, 3), 20 * i + (c == "b"), np.uint8)).save(tmp_path / "img" / c / f"{i}.png")
    raw = folder(str(tmp_path / "img"), 16, test_fraction=0.2)
    assert len(list((tmp_path / "runs" / "dataset_index").glob("img-*.npz"))) == 1
    monkeypatch.setattr(Image, "open", None)  # a second scan would fail
    again = folder(str(tmp_path / "img"), 16, test_fraction=0.2)
    monkeypatch.undo()
    assert np.array_equal(again.train.labels, raw.train.labels)
    imgs = raw.train.images
    whole = imgs[np.arange(len(imgs))]  # (8, 16, 16, 3)
    assert imgs.shape == whole.shape and np.array_equal(imgs[3], whole[3])
    assert np.array_equal(np.concatenate(list(data.iter_batches(imgs, 3, workers=2))), whole)
    assert np.array_equal(UInt8Images(imgs)[5].permute(1, 2, 0).numpy(), whole[5])


def test_random_crop_views_are_seeded_crops_of_the_resized_image(tmp_path):
    """crop<i>: the paper's RandomCrop + flip, the same crop for the same (view, image) in every stage."""
    from digit_bench import data

    (tmp_path / "c").mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (20, 40, 3), dtype=np.uint8)).save(tmp_path / "c" / f"{i}.png")
    imgs = data._scan_folder(tmp_path, 16).images
    centre = np.concatenate(list(data.iter_batches(imgs, 2, workers=0)))  # (4, 16, 16, 3)
    crops = [np.concatenate(list(data.iter_batches(imgs, 2, workers=w, view="crop0"))) for w in (0, 2)]
    assert np.array_equal(crops[0], crops[1])  # workers do not change the crops
    assert not np.array_equal(crops[0], centre)  # 32 x 16 resized images: the crops move
    again = np.stack([data.load_image(imgs.files[p], 16, crop_seed=[0, p]) for p in range(4)])
    assert np.array_equal(again, crops[0])
    other = np.concatenate(list(data.iter_batches(imgs, 4, workers=0, view="crop1")))
    assert not np.array_equal(other, crops[0])
    mirrored = np.concatenate(list(data.iter_batches(imgs, 4, workers=0, view="hflip")))
    assert np.array_equal(mirrored, centre[:, :, ::-1])
    square = np.arange(4 * 8 * 8 * 3, dtype=np.uint8).reshape(4, 8, 8, 3)  # in memory: a crop view is a seeded flip
    flips = next(data.iter_batches(square, 4, view="crop3"))
    assert all(np.array_equal(f, s) or np.array_equal(f, s[:, ::-1]) for f, s in zip(flips, square))
