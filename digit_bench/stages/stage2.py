"""Stage 2 training: a decoder from DiGIT tokens to VQGAN tokens (the paper's pixel renderer, §3).

`ar` ("DiGIT (+VQGAN)"): the pre-LN GPT of models/gpt.py over `[DiGIT tokens][sep][VQ tokens]` under one causal
mask, two learned position tables, loss on the VQ part only. `maskgit` ("DiGIT (+MaskGIT)"): the bidirectional
decoder of models/maskgit.py with cosine masking. Both train on aligned pairs (same image, same view) of the K-Means
and VQ token artifacts, through the shared training loop. Output: ckpt.pt and model.json (kind + architecture).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from digit_bench.artifacts import Artifact
from digit_bench.config import Stage2Config
from digit_bench.loaders import build_decoder, device, device_info, save_json

VERSION = 2
KIND = "train"  # trains a model: a launcher job of tasks_per_node tasks (DDP)
RESUMABLE = True


def decoder_arch(s2: Stage2Config, digit: dict, vq: dict) -> dict:
    """Architecture of the decoder: width/depth from the GPT size table, vocabularies from the token manifests."""
    from digit_bench.models.gpt import GPT_SIZES

    size = {k: v for k, v in GPT_SIZES[s2.size].items() if k not in ("vocab_size", "seq_len")}
    if s2.kind == "ar":
        return dict(size, vocab_size=vq["vocab_size"], seq_len=vq["seq_len"], prefix_vocab_size=digit["vocab_size"],
                    prefix_len=digit["seq_len"], post_ln=False, dropout=0.1)
    return dict(size, vocab_size=vq["vocab_size"], seq_len=vq["seq_len"], prefix_vocab_size=digit["vocab_size"],
                prefix_len=digit["seq_len"], dropout=0.1)


@dataclass(frozen=True)
class Cfg:
    """Parents: tokens (DiGIT), vq_tokens."""

    stage2: Stage2Config  # its decoding fields left at their defaults: they key the rendered images, not this model
    seed: int


def compute(cfg: Cfg, parents: dict[str, Artifact], out: Path) -> dict:
    from digit_bench.models.gpt import GPT_SIZES
    from digit_bench.models.maskgit import random_mask
    from digit_bench.training import fit, seeded_init, shard, step_rng

    s2 = cfg.stage2
    if s2.size not in GPT_SIZES:
        from digit_bench.models.gpt import gpt_config

        gpt_config(s2.size)  # raises the UserError listing the sizes
    digit, vq = parents["tokens"], parents["vq_tokens"]
    prefix_all = np.load(digit / "tokens_train.npy", mmap_mode="r")  # (V, N, Tp)
    target_all = np.load(vq / "tokens_train.npy", mmap_mode="r")  # (V, N, T)
    if prefix_all.shape[:2] != target_all.shape[:2]:
        raise ValueError(f"token artifacts are not aligned: {prefix_all.shape} vs {target_all.shape}")
    arch = decoder_arch(s2, digit.manifest, vq.manifest)
    save_json(out / "model.json", {"kind": s2.kind, "arch": arch})
    seed, tcfg = cfg.seed, s2.train
    with seeded_init(seed):
        model = build_decoder(s2.kind, arch)
    model = model.to(device())
    V, N, _ = prefix_all.shape

    def batch_fn(step: int, rank: int, world: int):
        rng = step_rng(seed, step)
        idx, view = rng.integers(0, N, tcfg.batch_size), rng.integers(0, V, tcfg.batch_size)  # (B,), (B,)
        mask = random_mask(tcfg.batch_size, target_all.shape[-1], torch.Generator().manual_seed(seed * 1_000_003 + step))
        return [(torch.from_numpy(prefix_all[view[m], idx[m]].astype(np.int64)).to(device()),  # (b, Tp)
                 torch.from_numpy(target_all[view[m], idx[m]].astype(np.int64)).to(device()),  # (b, T)
                 mask[m].to(device())) for m in shard(tcfg.batch_size, tcfg.accumulation(world)[1], rank, world)]  # (b, T)

    def loss_fn(m, batch):
        prefix, target, mask = batch
        if s2.kind == "ar":
            loss = m.loss(target, prefix=prefix, label_smoothing=tcfg.label_smoothing)
        else:
            loss = m.loss(prefix, target, mask, label_smoothing=tcfg.label_smoothing)
        return {"main": loss}, {"loss": loss.item()}

    stats = fit(model, loss_fn, batch_fn, tcfg, out, seed=seed, desc=f"stage2 {s2.kind}")
    return {**stats, "kind": s2.kind, "params": sum(p.numel() for p in model.parameters()), **device_info()}
