"""Stage: VQGAN codes of every image of train/val/test, aligned with the K-Means token artifact (same images, same
views), in the same file layout (`tokens_S.npy` uint16 (V, N, T), `labels_S.npy`), so the stage-1 GPT trains on
either without knowing which tokenizer made them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from digit_bench.artifacts import Artifact
from digit_bench.config import DataConfig
from digit_bench.data import load_split
from digit_bench.loaders import TOKEN_SPLITS, device, device_info, load_vqgan

VERSION = 2
KIND = "infer"  # one task
RESUMABLE = False


@torch.no_grad()
def images_to_vq_tokens(vqgan, images, views: list[str], batch_size: int = 256, desc: str = "vq tokens",
                        path: Path | None = None) -> np.ndarray:
    """uint16 codes (V, N, h*w) of uint8 images (N, H, W, 3); with `path`, a memory-mapped .npy filled batch by batch."""
    from digit_bench.data import iter_batches

    n = len(images)
    out = None
    for v, view in enumerate(views):  # the same views (crops) as the K-Means tokens: stage 2 pairs them
        start = 0
        for batch in tqdm(iter_batches(images, batch_size, view=view), desc=f"{desc} {view}", unit="batch",
                          total=-(-n // batch_size)):
            x = torch.from_numpy(batch).to(device()).permute(0, 3, 1, 2).float() / 255  # (B, 3, H, W)
            _, idx, _ = vqgan.encode(x)  # (B, h, w)
            if out is None:
                shape = (len(views), n, idx[0].numel())  # (V, N, T)
                out = np.empty(shape, np.uint16) if path is None else np.lib.format.open_memmap(path, "w+", np.uint16, shape)
            out[v, start:start + len(batch)] = idx.flatten(1).cpu().numpy()
            start += len(batch)
    if path is not None:
        out.flush()
    return out


@dataclass(frozen=True)
class Cfg:
    """Parent: vqgan."""

    data: DataConfig
    views: tuple[str, ...]  # the K-Means tokens' views (tokenizer.views): stage 2 pairs them


def compute(cfg: Cfg, parents: dict[str, Artifact], out: Path) -> dict:
    vqgan = load_vqgan(parents["vqgan"])
    data = cfg.data
    counts = {}
    for split in TOKEN_SPLITS:
        part = load_split(data, split)
        tokens = images_to_vq_tokens(vqgan, part.images, list(cfg.views), desc=f"vq tokens {split}",
                                     path=out / f"tokens_{split}.npy")
        np.save(out / f"labels_{split}.npy", part.labels)
        counts[split] = len(part)
    T = tokens.shape[-1]
    return {"tokenizer": "vqgan", "vocab_size": vqgan.quantize.n_embed, "grid": int(round(T ** 0.5)), "seq_len": T,
            "views": list(cfg.views), "counts": counts, "num_classes": part.num_classes, "image_size": data.image_size,
            **device_info()}
