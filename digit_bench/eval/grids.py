"""Sample grids: the first nrow x nrow images of a set as one PNG (torchvision make_grid + PIL), class-sorted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid


def save_grid(images: np.ndarray, path: Path, labels: np.ndarray | None = None, nrow: int = 8) -> None:
    """Write the first nrow*nrow uint8 (N, H, W, 3) images as an nrow-wide PNG grid (2-px black gaps).

    With `labels`, those images are reordered by label (stable), so each class forms a run read row by row.
    """
    n = min(len(images), nrow * nrow)
    order = np.argsort(np.asarray(labels)[:n], kind="stable") if labels is not None else np.arange(n)
    batch = torch.from_numpy(np.ascontiguousarray(images[:n][order])).permute(0, 3, 1, 2)  # (n, 3, H, W) uint8
    grid = make_grid(batch, nrow=nrow, padding=2)  # (3, H', W') uint8
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(path)  # (H', W', 3)
