"""Registered image datasets, all given as uint8 RGB (N, H, W, 3) at the profile's resolution, with int64 labels.

Every dataset has train and test parts; `load_split` carves a seeded validation set out of train (never out of
test) and takes deterministic first-N subsets of seeded permutations. Folder datasets (ImageNet, any ImageFolder)
load lazily, with the DiGIT evaluation transform (resize the short side, centre crop); unreadable files are
skipped with a warning naming the file and counted (`ImageSet.skipped`) so a long job never dies halfway.
"""

from __future__ import annotations

import gzip
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from digit_bench.config import DataConfig
from digit_bench.errors import UserError
from digit_bench.registry import DATASETS

log = logging.getLogger("digit_bench")

FASHION_MNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                       "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot"]
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".JPEG", ".JPG", ".PNG")


class Images:
    """uint8 (N, H, W, 3) images, indexable by int arrays or slices; in memory or read from files on demand."""

    def __init__(self, array: np.ndarray | None = None, files: Sequence[Path] = (), size: int = 0):
        self.array, self.files, self.size = array, list(files), size

    def __len__(self) -> int:
        return len(self.array) if self.array is not None else len(self.files)

    def __getitem__(self, index: slice | np.ndarray | Sequence[int]) -> np.ndarray:
        if self.array is not None:
            return self.array[index]
        idx = np.arange(len(self))[index] if isinstance(index, slice) else np.asarray(index)
        return np.stack([load_image(self.files[i], self.size) for i in idx])  # (B, S, S, 3)

    def subset(self, idx: np.ndarray) -> "Images":
        if self.array is not None:
            return Images(self.array[idx])
        return Images(files=[self.files[i] for i in idx], size=self.size)

    def all(self) -> np.ndarray:
        return self[np.arange(len(self))]


@dataclass
class ImageSet:
    """One split of a dataset."""

    images: Images
    labels: np.ndarray  # int64 (N,)
    classes: list[str]
    skipped: list[str] = field(default_factory=list)  # unreadable files left out

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass
class RawDataset:
    """What a registered dataset builder returns: its train and test parts."""

    train: ImageSet
    test: ImageSet


def load_split(cfg: DataConfig, split: str) -> ImageSet:
    """The `split` (train | val | test) of the configured dataset: seeded, deterministic, val carved from train."""
    raw: RawDataset = DATASETS.get(cfg.name)(root=cfg.root, image_size=cfg.image_size)
    if split == "test":
        part, n = raw.test, cfg.num_test
        perm = np.random.default_rng([cfg.split_seed, 1]).permutation(len(part))
        idx = perm[:n] if n is not None else np.arange(len(part))
    elif split in ("train", "val"):
        part = raw.train
        if cfg.num_val >= len(part):
            raise UserError(f"data.num_val {cfg.num_val} leaves no training images ({cfg.name} train has {len(part)}); lower it")
        perm = np.random.default_rng([cfg.split_seed, 0]).permutation(len(part))
        idx = perm[: cfg.num_val] if split == "val" else perm[cfg.num_val:][: cfg.num_train]
        idx = np.sort(idx)
    else:
        raise UserError(f"unknown split {split!r}; choose train, val or test")
    return ImageSet(part.images.subset(idx), part.labels[idx], part.classes, part.skipped)


# ------------------------------------------------------------------------------------------------ transforms
def to_rgb_size(grey_or_rgb: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, h, w[, 3]) -> uint8 (N, size, size, 3): 28->32 by zero padding (MNIST convention), else resize."""
    x = grey_or_rgb if grey_or_rgb.ndim == 4 else np.repeat(grey_or_rgb[..., None], 3, axis=-1)  # (N, h, w, 3)
    h = x.shape[1]
    if size >= h and (size - h) % 2 == 0 and size - h <= 8:
        p = (size - h) // 2
        return np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))  # (N, size, size, 3)
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(x).permute(0, 3, 1, 2).float()  # (N, 3, h, w)
    t = F.interpolate(t, size=(size, size), mode="bicubic", align_corners=False, antialias=size < h)
    return t.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()  # (N, size, size, 3)


def load_image(path: Path, size: int) -> np.ndarray:
    """Resize the short side to `size` (bicubic) and centre-crop to size x size; uint8 (size, size, 3)."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        scale = size / min(im.size)
        im = im.resize((max(size, round(im.size[0] * scale)), max(size, round(im.size[1] * scale))), Image.BICUBIC)
        left, top = (im.size[0] - size) // 2, (im.size[1] - size) // 2
        return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)


# ------------------------------------------------------------------------------------------------ datasets
def _read_idx(path: Path) -> np.ndarray:
    """A uint8 IDX array; a truncated, garbled or non-IDX file is a UserError naming it."""
    opener = gzip.open if path.suffix == ".gz" else open
    fix = "reinstall it (`apt-get install --reinstall dataset-fashion-mnist`) or replace the file"
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise UserError(f"cannot read IDX file {path} ({type(e).__name__}: {e}); {fix}") from None
    if len(data) < 4 or data[:3] != b"\x00\x00\x08" or not 1 <= data[3] <= 4:
        raise UserError(f"{path} is not a uint8 IDX file (bad header {data[:4].hex()}); {fix}")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise UserError(f"IDX file {path} is truncated (its header is cut off); {fix}")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = 4 + 4 * ndim + int(np.prod(dims))
    if len(data) != expected:
        raise UserError(f"IDX file {path} has {len(data)} bytes, its header {dims} needs {expected} "
                        f"({'truncated' if len(data) < expected else 'trailing data'}); {fix}")
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def fashion_mnist_dir(root: str | None) -> Path:
    """The folder holding the four Fashion-MNIST IDX files: data.root, else $DIGIT_BENCH_DATA, else Debian's, else a
    download. A folder the user named (data.root or $DIGIT_BENCH_DATA) is used or refused, never replaced by another."""
    stems = [s for pair in FASHION_MNIST_FILES.values() for s in pair]
    explicit = [("data.root", Path(root).expanduser(), [Path(root).expanduser()])] if root else []
    if not explicit and os.environ.get("DIGIT_BENCH_DATA"):
        env = Path(os.environ["DIGIT_BENCH_DATA"]).expanduser()
        explicit = [("DIGIT_BENCH_DATA", env, [env, env / "fashion-mnist"])]
    for what, given, places in explicit:
        for c in places:
            if all(_find_idx(c, s) for s in stems):
                return c
        missing = [s for s in stems if not _find_idx(given, s)]
        raise UserError(f"{what} {given} does not hold the Fashion-MNIST IDX files (missing: {', '.join(missing)}); "
                        f"put the four *-ubyte(.gz) files there, or unset {what} to use {FASHION_MNIST_DEBIAN}")
    candidates = [FASHION_MNIST_DEBIAN]
    for c in candidates:
        if all(_find_idx(c, s) for s in stems):
            return c
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "digit_bench" / "fashion-mnist"
    try:  # last resort: torchvision's downloader, when the network allows
        import torchvision

        torchvision.datasets.FashionMNIST(str(cache), train=True, download=True)
        torchvision.datasets.FashionMNIST(str(cache), train=False, download=True)
        return cache / "FashionMNIST" / "raw"
    except Exception:  # noqa: BLE001 - any download failure means "not available here"; the error below says what to do
        raise UserError(
            "Fashion-MNIST IDX files not found in " + ", ".join(str(c) for c in candidates)
            + " and the download failed; install them with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu) "
              "or put the four *-ubyte(.gz) files in a folder and set DIGIT_BENCH_DATA=<folder>") from None


def fashion_mnist(root: str | None, image_size: int) -> RawDataset:
    """Fashion-MNIST: 60,000 train + 10,000 test 28x28 grey images in 10 classes (Zalando, MIT)."""
    folder = fashion_mnist_dir(root)
    parts = {}
    for split, (img, lab) in FASHION_MNIST_FILES.items():
        x = _read_idx(_find_idx(folder, img))  # (N, 28, 28)
        y = _read_idx(_find_idx(folder, lab)).astype(np.int64)  # (N,)
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y) or (len(y) and y.max() >= len(FASHION_MNIST_CLASSES)):
            raise UserError(f"Fashion-MNIST {split} files in {folder} do not match (images {x.shape}, labels {y.shape}); "
                            "replace them with the four original files")
        parts[split] = ImageSet(Images(to_rgb_size(x, image_size)), y, FASHION_MNIST_CLASSES)
    return RawDataset(parts["train"], parts["test"])


def digits(root: str | None, image_size: int) -> RawDataset:
    """scikit-learn's bundled 8x8 digits (1,797 images, 10 classes); a seeded 20% is the test part."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images * (255.0 / 16.0)).round().astype(np.uint8)  # (1797, 8, 8)
    y = d.target.astype(np.int64)
    perm = np.random.default_rng(0).permutation(len(y))
    n_test = len(y) // 5
    te, tr = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    x = to_rgb_size(x, image_size)
    classes = [str(i) for i in range(10)]
    return RawDataset(ImageSet(Images(x[tr]), y[tr], classes), ImageSet(Images(x[te]), y[te], classes))


def synthetic(root: str | None, image_size: int, n_train: int = 2000, n_test: int = 500, num_classes: int = 10) -> RawDataset:
    """Seeded class-coloured squares at class-dependent places plus noise: for unit tests only."""
    def make(n: int, seed: int) -> ImageSet:
        rng = np.random.default_rng(seed)
        y = rng.integers(0, num_classes, n)
        x = rng.integers(0, 40, (n, image_size, image_size, 3)).astype(np.uint8)  # (N, S, S, 3) background noise
        s = max(2, image_size // 4)
        for i, c in enumerate(y):
            r0 = (c * 3) % (image_size - s)
            c0 = (c * 5 + rng.integers(0, 3)) % (image_size - s)
            x[i, r0:r0 + s, c0:c0 + s] = (np.array([c * 25, 255 - c * 20, 128]) % 256).astype(np.uint8)
        return ImageSet(Images(x), y.astype(np.int64), [f"class{c}" for c in range(num_classes)])

    return RawDataset(make(n_train, 0), make(n_test, 1))


def _scan_folder(root: Path, size: int) -> ImageSet:
    """An ImageFolder (one sub-folder per class); unreadable files are skipped with a warning."""
    from PIL import Image

    if not root.is_dir():
        raise UserError(f"image folder not found: {root}; point data.root at a folder with one sub-folder per class")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise UserError(f"{root} has no class sub-folders; an ImageFolder root holds one folder per class")
    files, labels, skipped = [], [], []
    for c, name in enumerate(classes):
        for p in sorted((root / name).iterdir()):
            if p.suffix not in IMAGE_EXTS:
                continue
            try:
                with Image.open(p) as im:
                    im.verify()
            except Exception as e:  # noqa: BLE001 - PIL raises many types for broken files
                log.warning("skipping unreadable image %s (%s)", p, type(e).__name__)
                skipped.append(str(p))
                continue
            files.append(p)
            labels.append(c)
    if not files:
        raise UserError(f"no readable images under {root} (extensions {', '.join(IMAGE_EXTS[:5])})")
    return ImageSet(Images(files=files, size=size), np.asarray(labels, dtype=np.int64), classes, skipped)


def imagenet(root: str | None, image_size: int) -> RawDataset:
    """ImageNet-1k as ImageFolders root/train and root/val; `val` is our test part (the paper's FID reference)."""
    base = Path(root or os.environ.get("DIGIT_BENCH_DATA", "") or "imagenet")
    if not (base / "train").is_dir() or not (base / "val").is_dir():
        raise UserError(f"ImageNet not found at {base}: set data.root (or DIGIT_BENCH_DATA) to a folder with train/ and val/ "
                        "ImageFolders (one sub-folder per class)")
    return RawDataset(_scan_folder(base / "train", image_size), _scan_folder(base / "val", image_size))


def folder(root: str | None, image_size: int, test_fraction: float = 0.1) -> RawDataset:
    """Any ImageFolder; a seeded `test_fraction` of it is the test part."""
    if not root:
        raise UserError("the folder dataset needs data.root=<ImageFolder root>")
    full = _scan_folder(Path(root), image_size)
    perm = np.random.default_rng(0).permutation(len(full))
    n_test = max(1, int(len(full) * test_fraction))
    te, tr = np.sort(perm[:n_test]), np.sort(perm[n_test:])

    def part(idx: np.ndarray) -> ImageSet:
        return ImageSet(full.images.subset(idx), full.labels[idx], full.classes, full.skipped)

    return RawDataset(part(tr), part(te))
