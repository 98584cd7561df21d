"""Stage: token sequences -> pixels, as a uint8 image artifact (`images.npz`: images (N, H, W, 3), labels) + grid.

Sources (`cfg.source`):
- `samples`: stage-1 samples. DiGIT tokens go through stage 2 (AR: top-p 0.8, T 1.0, prefix KV cached once;
  MaskGIT: 8 steps, choice temperature 4.5 annealed) to VQ tokens; VQ-token samples (the VQGAN-AR baseline) go
  straight to the VQGAN decoder.
- `ground_truth`: the DiGIT tokens of held-out images (`split`: val, or test = ImageNet val on the paper profile)
  through stage 2: the paper's "DiGIT + VQ" ceiling.
- `reconstruction`: the VQ tokens of the same held-out images decoded: the paper's "VQ only" ceiling.
Sample i of the stage-2 decoder uses seed `sample_seed + i`, whatever the batch size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tqdm import tqdm

from digit_bench.artifacts import Artifact
from digit_bench.contracts import SPEED
from digit_bench.data import to_grey
from digit_bench.loaders import device, device_info, load_decoder, load_vqgan

VERSION = 2
KIND = "infer"  # one task
RESUMABLE = False


@torch.no_grad()
def tokens_to_images(tokens: np.ndarray, vqgan, decoder=None, kind: str = "", s2: dict | None = None,
                     seed: int = 0, batch_size: int = 100) -> np.ndarray:
    """uint8 images (N, H, W, 3) from VQ tokens (N, T), or from DiGIT tokens through a stage-2 decoder."""
    out = []
    for start in tqdm(range(0, len(tokens), batch_size), desc="render", unit="batch"):
        x = torch.from_numpy(tokens[start:start + batch_size].astype(np.int64)).to(device())  # (B, T)
        seeds = [seed + i for i in range(start, start + len(x))]
        if kind == "ar":
            x = decoder.generate(len(x), prefix=x, seeds=seeds, top_p=s2["top_p"], temperature=s2["temperature"])  # (B, Tv)
        elif kind == "maskgit":
            x = decoder.generate(x, seeds, steps=s2["maskgit_steps"], choice_temperature=s2["choice_temperature"])  # (B, Tv)
        g = int(round(x.shape[1] ** 0.5))
        img = vqgan.decode_indices(x.reshape(-1, g, g))  # (B, 3, H, W) in [0, 1]
        out.append((img * 255).round().clamp(0, 255).byte().permute(0, 2, 3, 1).cpu().numpy())  # (B, H, W, 3)
    return np.concatenate(out)


@dataclass(frozen=True)
class Cfg:
    """Parents: vqgan and samples (source samples) or tokens (the ceilings), [stage2] (DiGIT tokens)."""

    source: str  # samples | ground_truth | reconstruction
    grey: bool  # grey data set: grey (R=G=B) images
    split: Optional[str] = None  # the held-out split a ceiling re-renders (eval.ceiling_split)
    stage2: Optional[dict] = None  # the stage-2 decoding settings (top_p, temperature, maskgit_steps, choice_temperature)
    sample_seed: int = 0  # sample i of the stage-2 decoder uses seed sample_seed + i
    batch_size: int = field(default=100, metadata=SPEED)


def compute(cfg: Cfg, parents: dict[str, Artifact], out: Path) -> dict:
    from digit_bench.eval.grids import save_grid

    vqgan = load_vqgan(parents["vqgan"])
    if cfg.source == "samples":
        tokens, labels = np.load(parents["samples"] / "tokens.npy"), np.load(parents["samples"] / "labels.npy")
    else:  # held-out images (eval.ceiling_split), identity view
        tokens = np.load(parents["tokens"] / f"tokens_{cfg.split}.npy", mmap_mode="r")[0]  # (N, T)
        labels = np.load(parents["tokens"] / f"labels_{cfg.split}.npy")
    kind, decoder = load_decoder(parents["stage2"]) if "stage2" in parents else ("", None)
    images = tokens_to_images(np.asarray(tokens), vqgan, decoder, kind, cfg.stage2, cfg.sample_seed,
                              cfg.batch_size)  # (N, H, W, 3)
    if cfg.grey:
        images = to_grey(images)
    np.savez(out / "images.npz", images=images, labels=labels)
    labelled = cfg.source != "samples" or parents["samples"].manifest["conditional"]
    save_grid(images[:64], out / "grid.png", labels[:64] if labelled else None)
    return {"shape": list(images.shape), "source": cfg.source, "decoder": kind or "vqgan",
            "conditional": cfg.source == "samples" and parents["samples"].manifest["conditional"], **device_info()}
