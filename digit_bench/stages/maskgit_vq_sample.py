"""Stage: VQ token sequences sampled from the MaskGIT-over-VQ baseline by iterative parallel decoding (`steps`
steps, the Gumbel choice temperature annealed to 0). Sample i uses seed `seed + i`, whatever the batch size;
class-conditional models get class-balanced labels (i mod num_classes), unconditional ones the null class.
Output: `tokens.npy` uint16 (N, T) and `labels.npy` int64 (N,), the layout of the GPT's `sample` stage, so the
`render` stage decodes them with the VQGAN.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from digit_bench.artifacts import Artifact
from digit_bench.contracts import SPEED
from digit_bench.loaders import device, device_info, load_decoder

VERSION = 1
KIND = "infer"  # one task
RESUMABLE = False


@dataclass(frozen=True)
class Cfg:
    """The maskgit_vq decoding fields and the sample count and seed. Parent: model (maskgit_vq)."""

    steps: int
    choice_temperature: float
    temperature: float
    num_samples: int
    seed: int
    batch_size: int = field(default=256, metadata=SPEED)


def compute(cfg: Cfg, parents: dict[str, Artifact], out: Path) -> dict:
    meta = parents["model"].manifest
    _, model = load_decoder(parents["model"])
    n, num_classes, conditional = cfg.num_samples, meta["num_classes"], meta["conditional"]
    labels = np.arange(n) % num_classes if conditional else np.zeros(n, np.int64)  # (N,)
    prefix = labels if conditional else np.full(n, num_classes)  # (N,) class or null class
    tokens = np.empty((n, meta["seq_len"]), np.uint16)  # (N, T)
    for start in tqdm(range(0, n, cfg.batch_size), desc="maskgit_vq sample", unit="batch"):
        stop = min(start + cfg.batch_size, n)
        x = torch.from_numpy(prefix[start:stop, None].astype(np.int64)).to(device())  # (B, 1)
        seeds = [cfg.seed + i for i in range(start, stop)]
        tokens[start:stop] = model.generate(x, seeds, steps=cfg.steps, choice_temperature=cfg.choice_temperature,
                                            temperature=cfg.temperature).cpu().numpy()  # (B, T)
    np.save(out / "tokens.npy", tokens)
    np.save(out / "labels.npy", labels)
    return {"shape": list(tokens.shape), "conditional": conditional,
            **{k: meta[k] for k in ("vocab_size", "seq_len", "grid", "num_classes")}, **device_info()}
