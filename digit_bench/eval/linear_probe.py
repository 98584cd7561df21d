"""Linear probes on frozen features: one head per layer, trained together; lr and layer chosen on held-out train.

Protocol, after DiGIT's `model_linearprobe.py` + `sgd_hydra` (docs/paper.md §4) and dinov2's multi-head linear eval:
- one `nn.Linear(D_l, C)` per layer l (init N(0, 0.01), bias 0), all trained in one pass with summed losses;
  the heads share no parameters, so training them together equals training them one by one;
- SGD, momentum 0.9, weight decay 0, cosine schedule to 0 without warmup, cross-entropy without smoothing;
- features standardised per dimension with the mean/std of the training part (a fixed stand-in for the
  affine-free BatchNorm of MAE/iGPT probes), so one lr grid suits layers of any scale;
- selection never sees test: a seeded `holdout_fraction` of train is held out, every (layer, lr) head is trained
  on the rest, each layer keeps the lr with the best held-out top-1, and the reported layer is the one with the
  best held-out top-1. Then each layer's head is retrained on all of train with its lr and scored on test once.
Accuracies are in percent, like the paper's tables.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR
from tqdm import tqdm


def _moments(feats: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
    """Per-dimension mean and std (D,) of feats[idx], computed in float64 chunks."""
    total = torch.zeros(feats.shape[1], dtype=torch.float64, device=feats.device)
    squares = torch.zeros_like(total)
    for chunk in idx.split(65536):
        x = feats[chunk].double()  # (B, D)
        total += x.sum(0)
        squares += (x * x).sum(0)
    mean = total / len(idx)
    std = (squares / len(idx) - mean * mean).clamp_min(0).sqrt().clamp_min(1e-6)
    return mean.float(), std.float()


Heads = list[list[nn.Linear]]
Norms = list[tuple[Tensor, Tensor]]


def _train_heads(feats: list[Tensor], labels: Tensor, idx: Tensor, lrs: list[list[float]], *, epochs: int,
                 batch_size: int, seed: int, num_classes: int) -> tuple[Heads, Norms]:
    """heads[l][j]: a linear classifier on standardised layer l trained at lrs[l][j], on the rows `idx` only."""
    g = torch.Generator().manual_seed(seed)
    device = feats[0].device
    norms = [_moments(f, idx) for f in feats]
    heads = [[nn.Linear(f.shape[1], num_classes).to(device) for _ in layer_lrs] for f, layer_lrs in zip(feats, lrs)]
    groups = []
    for layer_heads, layer_lrs in zip(heads, lrs):
        for head, lr in zip(layer_heads, layer_lrs):
            nn.init.normal_(head.weight, std=0.01, generator=g)
            nn.init.zeros_(head.bias)
            groups.append({"params": list(head.parameters()), "lr": lr})
    opt = torch.optim.SGD(groups, momentum=0.9, weight_decay=0.0)
    steps = epochs * math.ceil(len(idx) / batch_size)
    sched = LambdaLR(opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * s / steps)))
    for _ in tqdm(range(epochs), desc=f"probe ({len(feats)} layers x {len(lrs[0])} lrs)", unit="epoch"):
        for batch in idx[torch.randperm(len(idx), generator=g)].split(batch_size):
            y = labels[batch].to(device)  # (B,)
            loss = torch.zeros((), device=device)
            for f, (mean, std), layer_heads in zip(feats, norms, heads):
                x = (f[batch].float() - mean) / std  # (B, D_l)
                loss = loss + sum(F.cross_entropy(head(x), y) for head in layer_heads)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return heads, norms


@torch.no_grad()
def _topk(head: nn.Linear, feats: Tensor, norm: tuple[Tensor, Tensor], labels: Tensor, idx: Tensor, k: int) -> float:
    """Top-k accuracy in percent of `head` on rows `idx`."""
    correct = 0
    for batch in idx.split(4096):
        logits = head((feats[batch].float() - norm[0]) / norm[1])  # (B, C)
        top = logits.topk(min(k, logits.shape[1]), dim=1).indices.cpu()  # (B, k)
        correct += (top == labels[batch][:, None]).any(1).sum().item()
    return 100.0 * correct / len(idx)


def train_linear_probes(train_feats: list[Tensor], train_labels: Tensor, test_feats: list[Tensor], test_labels: Tensor,
                        *, lrs: tuple[float, ...], epochs: int, batch_size: int, holdout_fraction: float, seed: int,
                        num_classes: int) -> dict:
    """Probe every layer; choose lr per layer and the reported layer on held-out train, score on test.

    Args:
        train_feats, test_feats: one (N, D_l) tensor per layer (any float dtype, pooled already), same layer order.
        train_labels, test_labels: int64 (N,).
        lrs: lr grid (paper: 0.4 at batch 1024).
        holdout_fraction: part of train held out for the choices (0 < f < 1).

    Returns:
        probe_top1, probe_top5 (test, at the chosen layer), probe_layer (index into the layer list), probe_lr,
        probe_layer_top1 (test top-1 of every layer), probe_layer_holdout_top1, probe_layer_lr (lr chosen per layer).
    """
    labels = torch.as_tensor(train_labels, dtype=torch.long)
    test_y = torch.as_tensor(test_labels, dtype=torch.long)
    n = len(labels)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_hold = min(n - 1, max(1, round(holdout_fraction * n)))
    hold, fit_part = perm[:n_hold].sort().values, perm[n_hold:].sort().values
    common = dict(epochs=epochs, batch_size=batch_size, seed=seed, num_classes=num_classes)

    heads, norms = _train_heads(train_feats, labels, fit_part, [list(lrs)] * len(train_feats), **common)
    holdout = [[_topk(h, f, norm, labels, hold, 1) for h in layer_heads]
               for f, norm, layer_heads in zip(train_feats, norms, heads)]  # (L, len(lrs))
    best_lr = [lrs[max(range(len(lrs)), key=row.__getitem__)] for row in holdout]
    holdout_top1 = [max(row) for row in holdout]
    layer = max(range(len(holdout_top1)), key=holdout_top1.__getitem__)

    heads, norms = _train_heads(train_feats, labels, torch.arange(n), [[lr] for lr in best_lr], **common)
    every = torch.arange(len(test_y))
    test_top1 = [_topk(h[0], f, norm, test_y, every, 1) for f, norm, h in zip(test_feats, norms, heads)]
    top5 = _topk(heads[layer][0], test_feats[layer], norms[layer], test_y, every, 5)
    return {"probe_top1": test_top1[layer], "probe_top5": top5, "probe_layer": layer, "probe_lr": best_lr[layer],
            "probe_layer_top1": test_top1, "probe_layer_holdout_top1": holdout_top1, "probe_layer_lr": best_lr}
