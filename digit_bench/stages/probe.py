"""Stage: linear probe of the frozen stage-1 GPT (the paper's "understanding" score, Table 2 / Fig. 3b).

Each layer's hidden states (embedding output included) are mean-pooled over all T + 1 input positions, [BOS | class]
and every one of the T tokens (the last one read at an extra position, models/gpt.py `hidden_states`), as the paper
pools its 257 positions ([eos] + 256 tokens). Two protocols (`probe.protocol`):
- `converged` (tiny/smoke default): the identity view of train and test images, one logistic regression per layer
  solved to convergence on train (eval/linear_probe.py), its L2 strength and the reported layer chosen on a held-out
  part of train; test is only scored.
- `paper` (the paper profile, §4 of the released code): the embedding output and blocks 1..L-1, one linear head per
  layer trained jointly by SGD (lr 0.4, momentum 0.9, no weight decay, cosine to 0) on online RandomResizedCrop +
  flip views of train images tokenized on the fly (backbone + centroids); test images are the 224/256 centre crop.
  The reported layer is chosen on a held-out part of train (centre crop), never on test.
Output: `metrics.json` with probe_top1, probe_top5, probe_layer, probe_protocol and the per-layer curve.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from digit_bench.artifacts import Artifact
from digit_bench.stages.common import device, device_info, load_gpt, save_json

VERSION = 3
RESUMABLE = False


@torch.no_grad()
def pooled_hidden_states(model, tokens: np.ndarray, rows: np.ndarray | None = None, batch_size: int = 256,
                         out: Path | None = None, name: str = "") -> list[torch.Tensor]:
    """Per layer, hidden states (N, D) float32 of token sequences tokens[rows] (N, T), mean-pooled over all T + 1
    positions (the last token included).

    With `out`, each layer's features are a memory-mapped `out/<name>_L<l>.npy` written batch by batch and returned
    as tensors over those maps: memory does not grow with N, the probe heads read their batches from disk.
    """
    rows = np.arange(len(tokens)) if rows is None else rows
    per_layer: list[np.ndarray] = []
    for start in tqdm(range(0, len(rows), batch_size), desc="probe features", unit="batch"):
        x = torch.from_numpy(np.asarray(tokens[rows[start:start + batch_size]]).astype(np.int64)).to(device())  # (B, T)
        # a class-conditional GPT gets the null class: the true label would hand the probe its answer
        null = (torch.full((len(x),), model.cfg.num_classes, device=x.device) if model.cfg.num_classes else None)  # (B,)
        states = model.hidden_states(x, null, last_token=True)  # L+1 x (B, T + 1, D)
        if not per_layer:
            shape = [(len(rows), h.shape[-1]) for h in states]
            per_layer = [np.empty(sh, np.float32) if out is None else
                         np.lib.format.open_memmap(out / f"{name}_L{i}.npy", "w+", np.float32, sh) for i, sh in enumerate(shape)]
        for i, h in enumerate(states):
            per_layer[i][start:start + len(x)] = h.float().mean(1).cpu().numpy()  # (B, D)
    for f in per_layer:
        if out is not None:
            f.flush()
    return [torch.from_numpy(f) for f in per_layer]  # L+1 x (N, D)


def compute(cfg: dict, parents: dict[str, Artifact], out: Path) -> dict:
    from digit_bench.eval.linear_probe import train_linear_probes

    pc, tok = cfg["probe"], parents["tokens"]
    model = load_gpt(parents["gpt"])
    train_tokens = np.load(tok / "tokens_train.npy", mmap_mode="r")[0]  # (N, T) identity view, on disk
    train_labels = np.load(tok / "labels_train.npy")
    keep = np.arange(len(train_labels))
    if pc["num_train"] is not None and pc["num_train"] < len(keep):
        keep = np.sort(np.random.default_rng(cfg["seed"]).choice(len(keep), pc["num_train"], replace=False))
    test_tokens = np.load(tok / "tokens_test.npy", mmap_mode="r")[0]
    test_labels = np.load(tok / "labels_test.npy")
    work = out / "features"  # pooled features of every layer: memory maps, deleted once the heads are trained
    work.mkdir()
    result = train_linear_probes(pooled_hidden_states(model, train_tokens, keep, out=work, name="train"),
                                 torch.from_numpy(train_labels[keep]),
                                 pooled_hidden_states(model, test_tokens, out=work, name="test"), torch.from_numpy(test_labels),
                                 l2s=pc["l2s"], max_iter=pc["max_iter"], holdout_fraction=pc["holdout_fraction"],
                                 seed=cfg["seed"],
                                 num_classes=tok.manifest["num_classes"])
    shutil.rmtree(work)
    result["probe_curve"] = result.pop("probe_layer_top1")  # test top-1 per layer, embedding output first
    save_json(out / "metrics.json", result)
    return {"probe_top1": result["probe_top1"], "probe_layer": result["probe_layer"], **device_info()}
