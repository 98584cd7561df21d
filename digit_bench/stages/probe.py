"""Stage: linear probe of the frozen stage-1 GPT (the paper's "understanding" score, Table 2 / Fig. 3b).

Each layer's hidden states (embedding output included) are mean-pooled over all T input positions, [BOS | class]
and the first T-1 tokens, for the identity view of train and test images. The paper pools 257 positions, [eos] +
all 256 tokens: its GPT is trained with an end token, so the last image token has an input position; ours is
trained without one and has no position after the last token (the NOTE in models/gpt.py `hidden_states`). One
logistic regression per layer is solved on train (eval/linear_probe.py), its L2 strength and the reported layer
chosen on a held-out part of train, and test is only scored.
Output: `metrics.json` with probe_top1, probe_top5, probe_layer and the per-layer curve.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from digit_bench.artifacts import Artifact
from digit_bench.stages.common import device, device_info, load_gpt, save_json

VERSION = 2
RESUMABLE = False


@torch.no_grad()
def pooled_hidden_states(model, tokens: np.ndarray, batch_size: int = 256) -> list[torch.Tensor]:
    """Per layer, mean-pooled hidden states (N, D) of token sequences (N, T)."""
    per_layer: list[list[torch.Tensor]] = []
    for start in tqdm(range(0, len(tokens), batch_size), desc="probe features", unit="batch"):
        x = torch.from_numpy(tokens[start:start + batch_size].astype(np.int64)).to(device())  # (B, T)
        states = model.hidden_states(x)  # L+1 x (B, T, D)
        for i, h in enumerate(states):
            if len(per_layer) <= i:
                per_layer.append([])
            per_layer[i].append(h.float().mean(1).cpu())  # (B, D)
    return [torch.cat(chunks) for chunks in per_layer]  # L+1 x (N, D)


def compute(cfg: dict, parents: dict[str, Artifact], out: Path) -> dict:
    from digit_bench.eval.linear_probe import train_linear_probes

    pc, tok = cfg["probe"], parents["tokens"]
    model = load_gpt(parents["gpt"])
    train_tokens = np.load(tok / "tokens_train.npy", mmap_mode="r")[0]  # (N, T) identity view
    train_labels = np.load(tok / "labels_train.npy")
    keep = np.arange(len(train_labels))
    if pc["num_train"] is not None and pc["num_train"] < len(keep):
        keep = np.sort(np.random.default_rng(cfg["seed"]).choice(len(keep), pc["num_train"], replace=False))
    test_tokens = np.load(tok / "tokens_test.npy", mmap_mode="r")[0]
    test_labels = np.load(tok / "labels_test.npy")
    result = train_linear_probes(pooled_hidden_states(model, np.asarray(train_tokens[keep])), torch.from_numpy(train_labels[keep]),
                                 pooled_hidden_states(model, np.asarray(test_tokens)), torch.from_numpy(test_labels),
                                 l2s=pc["l2s"], max_iter=pc["max_iter"], holdout_fraction=pc["holdout_fraction"],
                                 seed=cfg["seed"],
                                 num_classes=tok.manifest["num_classes"])
    result["probe_curve"] = result.pop("probe_layer_top1")  # test top-1 per layer, embedding output first
    save_json(out / "metrics.json", result)
    return {"probe_top1": result["probe_top1"], "probe_layer": result["probe_layer"], **device_info()}
