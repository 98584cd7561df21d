"""Stage: held-out real images (the val split) as an image artifact, as many as the generators sample: scored like
a generator, they give the best FD any generator can reach at this sample count (the real-data ceiling row).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from digit_bench.artifacts import Artifact
from digit_bench.config import DataConfig
from digit_bench.data import load_split

VERSION = 2
KIND = "infer"  # one task
RESUMABLE = False


@dataclass(frozen=True)
class Cfg:
    data: DataConfig
    num_samples: int  # as many as the generator makes


def compute(cfg: Cfg, parents: dict[str, Artifact], out: Path) -> dict:
    from digit_bench.eval.grids import save_grid

    val = load_split(cfg.data, "val")
    n = min(cfg.num_samples, len(val))
    images, labels = val.images[:n], val.labels[:n]
    np.savez(out / "images.npz", images=images, labels=labels)
    save_grid(images[:64], out / "grid.png", labels[:64])
    return {"shape": list(images.shape), "source": "real", "conditional": False}
