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
from typing import Iterator, Sequence

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

    def __init__(self, array: np.ndarray | None = None, files: Sequence[Path] = (), size: int = 0,
                 resize: str = "bicubic"):
        self.array, self.files, self.size, self.resize = array, list(files), size, resize

    def __len__(self) -> int:
        return len(self.array) if self.array is not None else len(self.files)

    # array-like enough for a torch Dataset over it (eval.fidelity.UInt8Images): files are decoded one at a time
    dtype = np.dtype(np.uint8)
    ndim = 4

    @property
    def shape(self) -> tuple[int, ...]:
        return self.array.shape if self.array is not None else (len(self.files), self.size, self.size, 3)

    def __getitem__(self, index: int | slice | np.ndarray | Sequence[int]) -> np.ndarray:
        if self.array is not None:
            return self.array[index]
        if isinstance(index, (int, np.integer)):
            return load_image(self.files[index], self.size, self.resize)  # (S, S, 3)
        idx = np.arange(len(self))[index] if isinstance(index, slice) else np.asarray(index)
        return np.stack([load_image(self.files[i], self.size, self.resize) for i in idx])  # (B, S, S, 3)

    def subset(self, idx: np.ndarray) -> "Images":
        if self.array is not None:
            return Images(self.array[idx])
        return Images(files=[self.files[i] for i in idx], size=self.size, resize=self.resize)


def check_view(view: str) -> None:
    if view not in ("identity", "hflip") and not (view.startswith("crop") and view[4:].isdigit()):
        raise UserError(f"unknown view {view!r}: use identity, hflip or crop<i> (the i-th seeded random crop + flip)")


def crop_seed(view: str, position: int) -> list[int] | None:
    """Seed of view `crop<i>` of the image at `position` of its split (None for the centre-crop views)."""
    return [int(view[4:]), int(position)] if view.startswith("crop") else None


def apply_view(batch: np.ndarray, positions: np.ndarray, view: str) -> np.ndarray:
    """A view of in-memory uint8 images (B, S, S, 3): identity, mirrored, or crop<i> (at most a seeded flip: an
    image already at its final size has no other crop)."""
    if view == "identity":
        return batch
    flip = np.ones(len(batch), bool) if view == "hflip" else np.array(
        [np.random.default_rng(crop_seed(view, p)).random() < 0.5 for p in positions], bool)  # (B,)
    return np.ascontiguousarray(np.where(flip[:, None, None, None], batch[:, :, ::-1], batch))


class _Decode:
    """A map-style dataset over the files of an `Images`: DataLoader workers decode, resize and crop them."""

    def __init__(self, images: Images, index: np.ndarray, view: str):
        self.images, self.index, self.view = images, index, view

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> np.ndarray:
        p = self.index[i]
        img = load_image(self.images.files[p], self.images.size, self.images.resize, crop_seed(self.view, p))  # (S, S, 3)
        return np.ascontiguousarray(img[:, ::-1]) if self.view == "hflip" else img


def data_workers() -> int:
    """Decode processes per DataLoader: $DIGIT_BENCH_DATA_WORKERS, else up to 8 of this job's CPUs (0 on one CPU)."""
    if os.environ.get("DIGIT_BENCH_DATA_WORKERS"):
        return int(os.environ["DIGIT_BENCH_DATA_WORKERS"])
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(8, cpus) if cpus > 1 else 0


def iter_batches(images: Images | np.ndarray, batch_size: int, index: np.ndarray | None = None,
                 workers: int | None = None, view: str = "identity") -> Iterator[np.ndarray]:
    """uint8 (B, S, S, 3) batches of a view of images[index] (default: all), in order, memory independent of N.

    In-memory images are sliced; folder images are decoded by a torch DataLoader's worker processes, a few
    batches ahead (prefetch), so no split is ever held whole in memory. Views: identity, hflip, crop<i>.
    """
    check_view(view)
    n = len(images) if index is None else len(index)
    index = np.arange(len(images)) if index is None else np.asarray(index)
    if not isinstance(images, Images) or images.array is not None:
        for start in range(0, n, batch_size):
            rows = index[start:start + batch_size]
            yield apply_view(np.asarray(images[rows]), rows, view)  # (B, S, S, 3)
        return
    from torch.utils.data import DataLoader

    workers = data_workers() if workers is None else workers
    # batches travel from the workers as tensors in shared memory (a pickled array would be copied into this
    # process's heap every batch)
    loader = DataLoader(_Decode(images, index, view), batch_size=batch_size, num_workers=workers,
                        collate_fn=_stack, prefetch_factor=2 if workers else None, persistent_workers=False)
    for batch in loader:
        yield batch.numpy()  # (B, S, S, 3)


def _stack(images: list[np.ndarray]):
    import torch

    return torch.from_numpy(np.stack(images))  # (B, S, S, 3) uint8


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


def load_split(cfg: DataConfig, split: str, resize: str = "bicubic") -> ImageSet:
    """The `split` (train | val | test) of the configured dataset: seeded, deterministic, val carved from train.

    `resize`: filter of the short-side resize of folder datasets (bicubic; the paper's FID reference: bilinear)."""
    raw: RawDataset = DATASETS.get(cfg.name)(root=cfg.root, image_size=cfg.image_size, resize=resize)
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
GREY_DATASETS = frozenset({"fashion_mnist", "digits"})  # one-channel sources, stored as R=G=B


def to_grey(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) -> uint8 (N, H, W, 3) with R=G=B: the channel mean, as decoders with three outputs trained
    on grey data still emit independent (coloured) channel noise."""
    grey = images.astype(np.float32).mean(axis=-1, keepdims=True).round().astype(np.uint8)  # (N, H, W, 1)
    return np.repeat(grey, 3, axis=-1)  # (N, H, W, 3)


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


def load_image(path: Path, size: int, resize: str = "bicubic", crop_seed: Sequence[int] | None = None) -> np.ndarray:
    """Resize the short side to `size` (bicubic or bilinear) and crop size x size; uint8 (size, size, 3).

    The crop is the centre one, or with `crop_seed` the paper's training augmentation: a seeded RandomCrop(size) of
    the resized image, then a seeded horizontal flip with probability 1/2.
    """
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        scale = size / min(im.size)
        im = im.resize((max(size, round(im.size[0] * scale)), max(size, round(im.size[1] * scale))),
                       {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}[resize])
        left, top = (im.size[0] - size) // 2, (im.size[1] - size) // 2
        flip = False
        if crop_seed is not None:
            rng = np.random.default_rng(list(crop_seed))
            left, top = int(rng.integers(0, im.size[0] - size + 1)), int(rng.integers(0, im.size[1] - size + 1))
            flip = bool(rng.random() < 0.5)
        out = np.array(im.crop((left, top, left + size, top + size)), dtype=np.uint8)  # writable (torch.from_numpy)
        return np.ascontiguousarray(out[:, ::-1]) if flip else out


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


def fashion_mnist(root: str | None, image_size: int, resize: str = "bicubic") -> RawDataset:
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


def digits(root: str | None, image_size: int, resize: str = "bicubic") -> RawDataset:
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


def synthetic(root: str | None, image_size: int, n_train: int = 2000, n_test: int = 500, num_classes: int = 10,
              resize: str = "bicubic") -> RawDataset:
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


def index_cache_dir() -> Path:
    """Where folder indexes are cached: $DIGIT_BENCH_ROOT/dataset_index, else ~/.cache/digit_bench/dataset_index."""
    if os.environ.get("DIGIT_BENCH_ROOT"):
        return Path(os.environ["DIGIT_BENCH_ROOT"]) / "dataset_index"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "digit_bench" / "dataset_index"


def folder_index(root: Path) -> dict:
    """The index of an ImageFolder: class names, files (relative), labels, (width, height), unreadable files.

    Built once (every file opened and verified with PIL) and cached as `<index_cache_dir>/<hash>.npz`, keyed by the
    absolute root and the modification times of its class folders (adding or removing a file re-indexes): a
    1.3M-image ImageNet is scanned once, not by every stage and split.
    """
    import hashlib

    from PIL import Image

    if not root.is_dir():
        raise UserError(f"image folder not found: {root}; point data.root at a folder with one sub-folder per class")
    class_dirs = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.name)
    if not class_dirs:
        raise UserError(f"{root} has no class sub-folders; an ImageFolder root holds one folder per class")
    key = hashlib.sha256(repr([str(root.resolve())] + [(p.name, p.stat().st_mtime_ns) for p in class_dirs]).encode())
    cache = index_cache_dir() / f"{root.name}-{key.hexdigest()[:16]}.npz"
    if cache.is_file():
        with np.load(cache) as z:
            index = {k: z[k] for k in z.files}
        if len(index["skipped"]):
            log.warning("%d unreadable images under %s are skipped (cached index %s)", len(index["skipped"]), root, cache)
        return index
    files, labels, sizes, skipped = [], [], [], []
    for c, d in enumerate(class_dirs):
        for p in sorted(d.iterdir()):
            if p.suffix not in IMAGE_EXTS:
                continue
            try:
                with Image.open(p) as im:
                    sizes.append(im.size)
                    im.verify()
            except Exception as e:  # noqa: BLE001 - PIL raises many types for broken files
                log.warning("skipping unreadable image %s (%s)", p, type(e).__name__)
                skipped.append(str(p))
                sizes = sizes[:len(files)]
                continue
            files.append(f"{d.name}/{p.name}")
            labels.append(c)
    index = {"classes": np.array([d.name for d in class_dirs]), "files": np.array(files), "skipped": np.array(skipped, dtype=str),
             "labels": np.asarray(labels, np.int64), "sizes": np.asarray(sizes, np.int32).reshape(-1, 2)}
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f"{cache.stem}.tmp-{os.getpid()}.npz")
    np.savez(tmp, **index)
    os.replace(tmp, cache)
    return index


def _scan_folder(root: Path, size: int, resize: str = "bicubic") -> ImageSet:
    """An ImageFolder (one sub-folder per class) from its cached index; unreadable files are skipped with a warning."""
    index = folder_index(root)
    if not len(index["files"]):
        raise UserError(f"no readable images under {root} (extensions {', '.join(IMAGE_EXTS[:5])})")
    files = [root / f for f in index["files"].tolist()]
    return ImageSet(Images(files=files, size=size, resize=resize), index["labels"], index["classes"].tolist(),
                    index["skipped"].tolist())


def imagenet(root: str | None, image_size: int, resize: str = "bicubic") -> RawDataset:
    """ImageNet-1k as ImageFolders root/train and root/val; `val` is our test part (the paper's FID reference)."""
    base = Path(root or os.environ.get("DIGIT_BENCH_DATA", "") or "imagenet")
    if not (base / "train").is_dir() or not (base / "val").is_dir():
        raise UserError(f"ImageNet not found at {base}: set data.root (or DIGIT_BENCH_DATA) to a folder with train/ and val/ "
                        "ImageFolders (one sub-folder per class)")
    return RawDataset(_scan_folder(base / "train", image_size, resize), _scan_folder(base / "val", image_size, resize))


def folder(root: str | None, image_size: int, test_fraction: float = 0.1, resize: str = "bicubic") -> RawDataset:
    """Any ImageFolder; a seeded `test_fraction` of it is the test part."""
    if not root:
        raise UserError("the folder dataset needs data.root=<ImageFolder root>")
    full = _scan_folder(Path(root), image_size, resize)
    perm = np.random.default_rng(0).permutation(len(full))
    n_test = max(1, int(len(full) * test_fraction))
    te, tr = np.sort(perm[:n_test]), np.sort(perm[n_test:])

    def part(idx: np.ndarray) -> ImageSet:
        return ImageSet(full.images.subset(idx), full.labels[idx], full.classes, full.skipped)

    return RawDataset(part(tr), part(te))
