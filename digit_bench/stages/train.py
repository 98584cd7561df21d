"""Stage `tokens_to_checkpoint`: the stage-1 GPT trained by next-token prediction on a token artifact.

The same stage trains DiGIT (K-Means tokens) and the VQGAN-AR baseline (VQ tokens): only the parent differs, so the
tokenizer is the only variable. Vocabulary size, sequence length and class count come from the tokens manifest.
Each update draws `train.batch_size` sequences with replacement and one random view each (identity or flip), from
a generator seeded by (seed, step): the batch of step s never depends on what ran before, so a resumed run sees
exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from digit_bench.artifacts import Artifact
from digit_bench.config import GPTModelConfig, TrainConfig
from digit_bench.loaders import device, device_info, save_json

VERSION = 2
KIND = "train"  # trains a model: a launcher job of tasks_per_node tasks (DDP)
RESUMABLE = True


def token_batches(tokens: np.ndarray, labels: np.ndarray, tcfg: TrainConfig, seed: int):
    """batch_fn for training.fit: (step, rank, world) -> list of (tokens (b, T) long, labels (b,) long) micro-batches.

    The global batch of a step is the same whatever the world size and accumulation: 1 rank x batch B, 1 rank x 4
    micro-batches and 2 ranks x 2 micro-batches train on the same sequences (tests/test_training.py)."""
    from digit_bench.training import shard, step_rng

    V, N, _ = tokens.shape

    def batch_fn(step: int, rank: int, world: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        rng = step_rng(seed, step)
        idx = rng.integers(0, N, tcfg.batch_size)  # (B,) the whole global batch, identical on every rank
        view = rng.integers(0, V, tcfg.batch_size)  # (B,)
        dev = device()
        return [(torch.from_numpy(tokens[view[m], idx[m]].astype(np.int64)).to(dev),  # (b, T)
                 torch.from_numpy(labels[idx[m]]).to(dev)) for m in shard(tcfg.batch_size, tcfg.accumulation(world)[1], rank, world)]  # (b,)

    return batch_fn


def tokens_to_checkpoint(tokens: np.ndarray, labels: np.ndarray, meta: dict, gcfg: GPTModelConfig, tcfg: TrainConfig,
                         out: Path, seed: int) -> dict:
    """Train a GPT on uint16 tokens (V, N, T); writes ckpt.pt (via training.fit) and model.json."""
    from digit_bench.models.gpt import GPT, gpt_config
    from digit_bench.training import fit, seeded_init

    num_classes = meta["num_classes"] if gcfg.class_conditional else 0
    mcfg = gpt_config(gcfg.size, vocab_size=meta["vocab_size"], seq_len=meta["seq_len"], post_ln=gcfg.post_ln,
                      dropout=gcfg.dropout, num_classes=num_classes, label_dropout=gcfg.label_dropout)
    with seeded_init(seed):
        model = GPT(mcfg)
    model = model.to(device())
    save_json(out / "model.json", {"gpt": mcfg.__dict__, **{k: meta[k] for k in ("vocab_size", "seq_len", "grid", "tokenizer", "num_classes")}})
    conditional = num_classes > 0

    def loss_fn(m, batch):
        x, y = batch
        loss = m.loss(x, y if conditional else None, label_smoothing=tcfg.label_smoothing)
        return {"main": loss}, {"loss": loss.item()}

    stats = fit(model, loss_fn, token_batches(tokens, labels, tcfg, seed), tcfg, out,
                seed=seed, desc=f"gpt {gcfg.size}")
    n_tokens = tcfg.steps * tcfg.batch_size * meta["seq_len"]
    return {**stats, "params": model.num_params(), "flops": model.flops_per_token() * n_tokens}


@dataclass(frozen=True)
class Cfg:
    """Parent: tokens (K-Means or VQ)."""

    gpt: GPTModelConfig
    train: TrainConfig
    seed: int


def compute(cfg: Cfg, parents: dict[str, Artifact], out: Path) -> dict:
    tok = parents["tokens"]
    meta = tok.manifest
    tokens = np.load(tok / "tokens_train.npy", mmap_mode="r")  # (V, N, T) uint16
    labels = np.load(tok / "labels_train.npy")  # (N,)
    stats = tokens_to_checkpoint(tokens, labels, meta, cfg.gpt, cfg.train, out, cfg.seed)
    return {**stats, **{k: meta[k] for k in ("vocab_size", "seq_len", "grid", "tokenizer", "num_classes", "image_size")},
            **device_info()}
