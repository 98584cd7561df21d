"""Stage: train the MaskGIT-over-VQGAN-tokens baseline (Chang et al. 2022; the paper's MIM row, Table 3).

The bidirectional transformer of models/maskgit.py with a one-token prefix: the class label (class-conditional
runs), or the null class `num_classes` for every image (unconditional). Cosine masking of the VQ tokens
(`random_mask`), cross-entropy on the masked positions, through the shared training loop. The same token views as
the GPTs train on. Output: ckpt.pt and model.json (kind "maskgit" + architecture, as a stage-2 decoder's, so
loaders.load_decoder reads it) with `num_classes` and `conditional`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from digit_bench.artifacts import Artifact
from digit_bench.config import MaskGITVQConfig
from digit_bench.loaders import build_decoder, device, device_info, save_json

VERSION = 1
KIND = "train"  # trains a model: a launcher job of tasks_per_node tasks (DDP)
RESUMABLE = True


def maskgit_arch(mcfg: MaskGITVQConfig, meta: dict) -> dict:
    """Widths from the GPT size table; vocabulary and length from the token manifest; prefix = one class token."""
    from digit_bench.models.gpt import gpt_config

    size = gpt_config(mcfg.size)  # a UserError listing the sizes for a typo
    return dict(vocab_size=meta["vocab_size"], seq_len=meta["seq_len"], prefix_vocab_size=meta["num_classes"] + 1,
                prefix_len=1, n_layer=size.n_layer, n_head=size.n_head, n_embd=size.n_embd, n_ffn=size.n_ffn,
                dropout=mcfg.dropout)


@dataclass(frozen=True)
class Cfg:
    """Parent: tokens (VQ tokens)."""

    model: MaskGITVQConfig  # its decoding fields left at their defaults: they key the samples, not this model
    conditional: bool  # class label prefix (gpt.class_conditional), else the null class
    seed: int


def compute(cfg: Cfg, parents: dict[str, Artifact], out: Path) -> dict:
    from digit_bench.models.maskgit import random_mask
    from digit_bench.training import fit, seeded_init, shard, step_rng

    mcfg, seed, conditional = cfg.model, cfg.seed, cfg.conditional
    tok = parents["tokens"]
    meta = tok.manifest
    tokens = np.load(tok / "tokens_train.npy", mmap_mode="r")  # (V, N, T) uint16
    labels = np.load(tok / "labels_train.npy")  # (N,)
    prefix_all = labels if conditional else np.full_like(labels, meta["num_classes"])  # (N,) class or null class
    arch = maskgit_arch(mcfg, meta)
    save_json(out / "model.json", {"kind": "maskgit", "arch": arch, "num_classes": meta["num_classes"],
                                   "conditional": conditional})
    tcfg = mcfg.train
    with seeded_init(seed):
        model = build_decoder("maskgit", arch)
    model = model.to(device())
    V, N, T = tokens.shape

    def batch_fn(step: int, rank: int, world: int):
        rng = step_rng(seed, step)
        idx, view = rng.integers(0, N, tcfg.batch_size), rng.integers(0, V, tcfg.batch_size)  # (B,), (B,)
        mask = random_mask(tcfg.batch_size, T, torch.Generator().manual_seed(seed * 1_000_003 + step))  # (B, T)
        return [(torch.from_numpy(prefix_all[idx[m]][:, None].astype(np.int64)).to(device()),  # (b, 1)
                 torch.from_numpy(tokens[view[m], idx[m]].astype(np.int64)).to(device()),  # (b, T)
                 mask[m].to(device())) for m in shard(tcfg.batch_size, tcfg.accumulation(world)[1], rank, world)]  # (b, T)

    def loss_fn(m, batch):
        prefix, target, mask = batch
        loss = m.loss(prefix, target, mask, label_smoothing=tcfg.label_smoothing)
        return {"main": loss}, {"loss": loss.item()}

    stats = fit(model, loss_fn, batch_fn, tcfg, out, seed=seed, desc=f"maskgit_vq {mcfg.size}")
    return {**stats, "params": sum(p.numel() for p in model.parameters()), "conditional": conditional,
            **{k: meta[k] for k in ("vocab_size", "seq_len", "grid", "num_classes")}, **device_info()}
