"""Small CNN classifier for 32x32 RGB uint8 images: the `local` feature extractor and the class-accuracy judge.

Real Inception/DINOv2 weights are not always at hand (offline machines, CPU smoke runs), and Inception features
of upsampled 32-px Fashion-MNIST say little anyway. So the tiny profile also scores samples with a classifier
trained here on the dataset's own train split: its 256-d penultimate features feed torch-fidelity's FD/KID/PRC
(`fd_local`, ...), its logits feed IS (`is_local`) and the accuracy of class-conditional samples (`class_acc`).

Architecture (VGG-style, conv3x3-BN-ReLU): one conv at full resolution, then two stages of two convs at 2w and 4w,
each stage after a 2x2 max-pool, one more conv to 8w, global average pool -> `feat` (8w = 256 for w = 32), and a
bias-free linear head -> logits (so the logits are torch-fidelity's "logits_unbiased"). Trained with
digit_bench.training.fit, light augmentation (random crop with 4-px zero padding, horizontal flip).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from digit_bench.config import TrainConfig
from digit_bench.training import fit, load_checkpoint, save_checkpoint, seeded_init, shard, step_rng

PAD = 4  # random-crop padding in pixels


def conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class Classifier(nn.Module):
    """CNN on uint8 (or 0..255 float) images (B, 3, S, S) -> (features (B, 8w), logits (B, num_classes))."""

    def __init__(self, num_classes: int, width: int = 32, image_size: int = 32):
        super().__init__()
        self.num_classes, self.width, self.image_size = num_classes, width, image_size
        w = width
        self.body = nn.Sequential(
            conv_bn_relu(3, w), nn.MaxPool2d(2),  # (B, w, S/2, S/2)
            conv_bn_relu(w, 2 * w), conv_bn_relu(2 * w, 2 * w), nn.MaxPool2d(2),  # (B, 2w, S/4, S/4)
            conv_bn_relu(2 * w, 4 * w), conv_bn_relu(4 * w, 4 * w), nn.MaxPool2d(2),  # (B, 4w, S/8, S/8)
            conv_bn_relu(4 * w, 8 * w),  # (B, 8w, S/8, S/8)
        )
        self.head = nn.Linear(8 * w, num_classes, bias=False)
        self.feat_dim = 8 * w
        self.to(memory_format=torch.channels_last)  # ~25% faster convolutions on the CPU (oneDNN)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (x.float() / 127.5 - 1.0).contiguous(memory_format=torch.channels_last)  # (B, 3, S, S) in [-1, 1]
        h = self.body(x)  # (B, 8w, S/8, S/8)
        feat = h.mean(dim=(2, 3))  # (B, 8w)
        return feat, self.head(feat)  # (B, 8w), (B, C)


def save_classifier(model: Classifier, path: Path) -> None:
    """Write the weights plus the constructor arguments, so `load_classifier` needs nothing else."""
    save_checkpoint(Path(path), {"model": model.state_dict(), "num_classes": model.num_classes,
                                 "width": model.width, "image_size": model.image_size})


def load_classifier(path: Path, map_location: str | torch.device = "cpu") -> Classifier:
    """The classifier saved by `save_classifier` / `train_classifier`, in eval mode."""
    ckpt = load_checkpoint(Path(path))
    model = Classifier(ckpt["num_classes"], ckpt["width"], ckpt["image_size"])
    model.load_state_dict(ckpt["model"])
    return model.to(map_location).eval()


def augment(images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Random crop with PAD-pixel zero padding and random horizontal flip: uint8 (B, S, S, 3) -> (B, 3, S, S)."""
    b, s = images.shape[0], images.shape[1]
    padded = F.pad(images, (0, 0, PAD, PAD, PAD, PAD))  # (B, S+2P, S+2P, 3)
    oy, ox = (torch.from_numpy(rng.integers(0, 2 * PAD + 1, b)) for _ in range(2))
    rows = (oy[:, None] + torch.arange(s))[:, :, None]  # (B, S, 1)
    cols = (ox[:, None] + torch.arange(s))[:, None, :]  # (B, 1, S)
    crops = padded[torch.arange(b)[:, None, None], rows, cols]  # (B, S, S, 3)
    flip = torch.from_numpy(rng.random(b) < 0.5)[:, None, None, None]
    crops = torch.where(flip, crops.flip(2), crops)  # (B, S, S, 3)
    return crops.permute(0, 3, 1, 2).contiguous()  # (B, 3, S, S)


def train_classifier(images: np.ndarray, labels: np.ndarray, cfg: TrainConfig, work_dir: Path, *, seed: int,
                     num_classes: int, width: int = 32) -> dict:
    """Train the classifier on uint8 (N, H, W, 3) images (an array, or folder `data.Images` decoded per batch);
    writes `work_dir/classifier.pt` (EMA weights if cfg.ema > 0).

    Each step draws `cfg.batch_size` images uniformly with replacement, from a generator seeded by (seed, step),
    so a resumed run sees exactly the batches an uninterrupted one would.

    Returns:
        training.fit's stats plus `path` (the classifier file).
    """
    work_dir = Path(work_dir)
    targets = torch.as_tensor(np.asarray(labels), dtype=torch.long)  # (N,)
    with seeded_init(seed):
        model = Classifier(num_classes, width, image_size=images.shape[1])

    def batch_fn(step: int, rank: int, world_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        rng = step_rng(seed, step)
        idx = torch.from_numpy(rng.integers(0, len(images), cfg.batch_size))  # (B,) the whole global batch
        x = augment(torch.from_numpy(np.ascontiguousarray(images[idx.numpy()])), rng)  # (B, 3, H, W) uint8
        return [(x[s], targets[idx[s]]) for s in shard(cfg.batch_size, cfg.accumulation(world_size)[1], rank, world_size)]

    def loss_fn(m: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[dict, dict]:
        x, y = batch  # (B, 3, H, W) uint8, (B,)
        _, logits = m(x)  # (B, C)
        loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        return {"main": loss}, {"acc": (logits.argmax(1) == y).float().mean().item()}

    stats = fit(model, loss_fn, batch_fn, cfg, work_dir, seed=seed, desc="classifier")
    if cfg.ema > 0:
        model.load_state_dict(load_checkpoint(work_dir / "ckpt.pt")["ema"])
    path = work_dir / "classifier.pt"
    save_classifier(model.cpu(), path)
    return {**stats, "path": str(path)}


@torch.no_grad()
def evaluate_accuracy(model: Classifier, images: np.ndarray, labels: np.ndarray, batch_size: int = 500) -> float:
    """Top-1 accuracy (fraction in [0, 1]) of `model` on uint8 (N, H, W, 3) images."""
    model.eval()
    device = next(model.parameters()).device
    targets = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    correct = 0
    for i in range(0, len(targets), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size])).permute(0, 3, 1, 2)  # (B, 3, H, W)
        _, logits = model(x.to(device))  # (B, C)
        correct += (logits.argmax(1).cpu() == targets[i:i + batch_size]).sum().item()
    return correct / len(targets)
