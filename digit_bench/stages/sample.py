"""Stage `checkpoint_to_samples`: stage-1 token sequences sampled from a trained GPT (KV cache, per-sample seeds).

Sample i uses seed `sample.seed + i`, so the samples do not depend on the batch size or how the work is split.
Class-conditional models get class-balanced labels (i mod num_classes), as the paper's 50 per ImageNet class.
With `sample.prefix_len` n > 0 (paper Fig. 4b) sample i starts from the first n tokens of val image i mod M (its
class, when conditional) and the model completes the rest.
Output: `tokens.npy` uint16 (N, T) and `labels.npy` int64 (N,); grid and vocabulary are copied to the manifest.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from digit_bench.artifacts import Artifact
from digit_bench.contracts import SPEED
from digit_bench.loaders import device, device_info, load_gpt

VERSION = 2
KIND = "infer"  # one task
RESUMABLE = False


def checkpoint_to_samples(model, num: int, cfg: dict, num_classes: int,
                          prompts: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """uint16 tokens (num, T) and their labels (class-balanced, or all 0 when unconditional).

    prompts: (tokens (M, T), labels (M,)) of held-out images; sample i keeps the first `prefix_len` tokens of image
    i mod M and is labelled with its class.
    """
    conditional = model.cfg.num_classes > 0
    labels = np.arange(num) % num_classes if conditional else np.zeros(num, np.int64)
    n = cfg.get("prefix_len", 0)
    if n:
        pick = np.arange(num) % len(prompts[0])
        prefix = prompts[0][pick, :n].astype(np.int64)  # (num, n)
        if conditional:
            labels = prompts[1][pick]
    out = np.empty((num, model.cfg.seq_len), np.uint16)  # (N, T)
    for start in tqdm(range(0, num, cfg["batch_size"]), desc="sample", unit="batch"):
        stop = min(start + cfg["batch_size"], num)
        y = torch.from_numpy(labels[start:stop]).to(device()) if conditional else None
        seeds = [cfg["seed"] + i for i in range(start, stop)]
        out[start:stop] = model.generate(stop - start, labels=y, seeds=seeds, top_k=cfg["top_k"], top_p=cfg["top_p"],
                                         temperature=cfg["temperature"], cfg_scale=cfg["cfg_scale"],
                                         prompt=torch.from_numpy(prefix[start:stop]) if n else None).cpu().numpy()
    return out, labels.astype(np.int64)


@dataclass(frozen=True)
class Cfg:
    """config.SampleConfig, its batch size a speed setting. Parents: gpt, [prompts] (tokens, when prefix_len > 0)."""

    num_samples: int
    top_k: int
    top_p: float
    temperature: float
    cfg_scale: float
    seed: int
    prefix_len: int
    batch_size: int = field(default=256, metadata=SPEED)


def compute(cfg: Cfg, parents: dict[str, Artifact], out: Path) -> dict:
    gpt = parents["gpt"]
    meta = gpt.manifest
    model = load_gpt(gpt)
    prompts = None
    if "prompts" in parents:  # view 0 (identity) of the val split: held out from training and from the FD reference
        prompts = (np.load(parents["prompts"] / "tokens_val.npy", mmap_mode="r")[0],  # (M, T)
                   np.load(parents["prompts"] / "labels_val.npy"))  # (M,)
    tokens, labels = checkpoint_to_samples(model, cfg.num_samples, dataclasses.asdict(cfg), meta["num_classes"], prompts)
    np.save(out / "tokens.npy", tokens)
    np.save(out / "labels.npy", labels)
    return {"shape": list(tokens.shape), "conditional": model.cfg.num_classes > 0, **{k: meta[k] for k in ("vocab_size", "seq_len", "grid", "tokenizer", "num_classes",
                                                                   "image_size")}, **device_info()}
