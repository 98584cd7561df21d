"""Linear probes on frozen features: one multinomial logistic regression per layer, solved to convergence; the L2
strength and the reported layer chosen on held-out train.

Protocol (docs/paper.md §4 uses DiGIT's SGD probe, lr 0.4 at batch 1024; we solve the same convex problem exactly, which
removes the lr and epoch budget as a source of error: the SGD probe of the first version sat up to 7.6 points below
scikit-learn on the same features, its lr at the top of its grid):
- features standardised per dimension with the mean/std of the fitting part (a fixed stand-in for the affine-free
  BatchNorm of MAE/iGPT probes), so one L2 grid suits layers of any scale;
- per layer, `nn.Linear(D_l, C)` minimising mean cross-entropy + l2/2 ||W||² (bias unpenalised) by full-batch
  L-BFGS with strong-Wolfe line search in float64 (scikit-learn's `LogisticRegression(C=1/(l2 N))` objective);
- selection never sees test: a seeded `holdout_fraction` of train is held out; every (layer, l2) head is fitted on
  the rest; each layer keeps the l2 with the best held-out top-1 (ties: the larger l2). While that choice sits at an
  edge of the grid the grid grows by 10x past that edge (at most `max_grow` times), so the chosen l2 is interior.
  The reported layer is the one with the best held-out top-1. Then each layer's head is refitted on all of train
  with its l2 and scored on test once.
Features are read in chunks of CHUNK rows (two passes for the standardisation, the loss and gradient summed over
chunks), so they may be memory maps larger than memory; up to CHUNK rows it is one full-batch solve.
`SGDProbes` is the released protocol's head set (`probe.protocol: paper`, stages/probe.py): SGD, lr 0.4, momentum 0.9,
cosine to 0, one head per layer trained jointly.
Accuracies are in percent, like the paper's tables.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

Head = tuple[Tensor, Tensor, Tensor, Tensor]  # weight (D, C), bias (C,), feature mean (D,), feature std (D,)
CHUNK = 65536  # rows read at a time: memory is CHUNK x D float64 whatever N (features may be memory maps)


def _parts(x: Tensor, rows: Tensor | None) -> list[Tensor]:
    """The row indices (all rows of x by default), in chunks of at most CHUNK."""
    rows = torch.arange(len(x)) if rows is None else rows
    return [rows[s:s + CHUNK] for s in range(0, len(rows), CHUNK)] or [rows]


def _standardise(x: Tensor, parts: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-dimension float64 mean and std (D,) of the rows x[parts] (N, D); two passes over the chunks."""
    if len(parts) == 1:
        xr = x[parts[0]].double()  # (N, D)
        return xr.mean(0), xr.std(0, unbiased=False).clamp_min(1e-6)
    n = sum(len(r) for r in parts)
    mean = sum(x[r].double().sum(0) for r in parts) / n  # (D,)
    var = sum((x[r].double() - mean).square().sum(0) for r in parts) / n  # (D,)
    return mean, var.sqrt().clamp_min(1e-6)


def fit_head(x: Tensor, y: Tensor, l2: float, num_classes: int, max_iter: int = 1000,
             init: Head | None = None, rows: Tensor | None = None) -> Head:
    """Multinomial logistic regression on standardised rows x[rows] (N, D) (default: all rows): argmin mean CE +
    l2/2 ||W||², by L-BFGS, the loss and gradient summed over chunks of CHUNK rows (x may be a memory map).

    Converged when the largest gradient entry is below 1e-6; `init` (a head fitted on the same rows at another l2)
    is a warm start, it changes the iterations, not the optimum.
    """
    parts = _parts(x, rows)
    n = sum(len(r) for r in parts)
    mean, std = _standardise(x, parts)
    cached = [(x[parts[0]].double() - mean) / std] if len(parts) == 1 else None  # (N, D) when it is one chunk
    w0, b0 = (init[0], init[1]) if init is not None else (torch.zeros(x.shape[1], num_classes, dtype=torch.float64),
                                                            torch.zeros(num_classes, dtype=torch.float64))
    w = w0.clone().requires_grad_(True)  # (D, C)
    b = b0.clone().requires_grad_(True)  # (C,)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-6, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        if cached:  # one chunk: the loss in one graph
            loss = F.cross_entropy(cached[0] @ w + b, y[parts[0]]) + 0.5 * l2 * (w * w).sum()
            loss.backward()
            return loss
        total = 0.5 * l2 * (w * w).sum()
        total.backward()
        total = total.detach()
        for r in parts:
            z = (x[r].double() - mean) / std  # (b, D)
            loss = F.cross_entropy(z @ w + b, y[r]) * (len(r) / n)  # this chunk's share of the mean
            loss.backward()
            total = loss.detach() + total
        return total

    opt.step(closure)
    return w.detach(), b.detach(), mean, std


@torch.no_grad()
def _topk(head: Head, x: Tensor, y: Tensor, k: int, rows: Tensor | None = None) -> float:
    """Top-k accuracy in percent of `head` on rows x[rows] (N, D) (default: all) with labels y, chunk by chunk."""
    w, b, mean, std = head
    parts = _parts(x, rows)
    hits = 0.0
    for r in parts:
        logits = ((x[r].double() - mean) / std) @ w + b  # (b, C)
        top = logits.topk(min(k, logits.shape[1]), dim=1).indices  # (b, k)
        hits += (top == y[r][:, None]).any(1).double().sum().item()
    return 100.0 * (hits / sum(len(r) for r in parts))


def choose_l2(x: Tensor, y: Tensor, fit: Tensor, hold: Tensor, l2s: tuple[float, ...], num_classes: int,
              max_iter: int, max_grow: int = 6) -> tuple[float, dict[float, float]]:
    """The l2 with the best held-out top-1 (ties: larger), the grid grown by 10x past an edge until it is interior.

    Returns:
        (chosen l2, {l2: held-out top-1} of every l2 tried).
    """
    scores: dict[float, float] = {}
    heads: dict[float, Head] = {}
    grid = sorted(l2s, reverse=True)  # strong regularisation first: each fit warm-starts the next, weaker one
    for _ in range(max_grow + 1):
        for l2 in grid:
            if l2 not in scores:
                near = min(heads, key=lambda h: abs(math.log(h / l2)), default=None)
                heads[l2] = fit_head(x, y, l2, num_classes, max_iter, heads.get(near), rows=fit)
                scores[l2] = _topk(heads[l2], x, y, 1, rows=hold)
        tried = sorted(scores)
        best = max(reversed(tried), key=scores.__getitem__)  # reversed: ties go to the larger l2
        if best not in (tried[0], tried[-1]):
            break
        grid = [best / 10] if best == tried[0] else [best * 10]
    return best, scores


def train_linear_probes(train_feats: list[Tensor], train_labels: Tensor, test_feats: list[Tensor], test_labels: Tensor,
                        *, l2s: tuple[float, ...], max_iter: int, holdout_fraction: float, seed: int,
                        num_classes: int) -> dict:
    """Probe every layer; choose l2 per layer and the reported layer on held-out train, score on test.

    Args:
        train_feats, test_feats: one (N, D_l) tensor per layer (any float dtype, pooled already), same layer order.
        train_labels, test_labels: int64 (N,).
        l2s: the starting L2 grid (it grows past an edge until the choice is interior).
        max_iter: L-BFGS iterations per fit.
        holdout_fraction: part of train held out for the choices (0 < f < 1).

    Returns:
        probe_top1, probe_top5 (test, at the chosen layer), probe_layer (index into the layer list),
        probe_layer_top1 (test top-1 of every layer), probe_layer_holdout_top1, probe_layer_l2 (l2 chosen per layer),
        probe_layer_l2_grid (per layer, every l2 tried, ascending: the chosen one is at an end only when the
        grid grew `max_grow` times).
    """
    labels = torch.as_tensor(train_labels, dtype=torch.long)
    test_y = torch.as_tensor(test_labels, dtype=torch.long)
    n = len(labels)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_hold = min(n - 1, max(1, round(holdout_fraction * n)))
    hold, fit_part = perm[:n_hold].sort().values, perm[n_hold:].sort().values
    chosen, holdout_top1, grids, test_top1, heads = [], [], [], [], []
    for x, x_test in zip(train_feats, test_feats):
        l2, scores = choose_l2(x, labels, fit_part, hold, l2s, num_classes, max_iter)
        chosen.append(l2)
        holdout_top1.append(scores[l2])
        grids.append(sorted(scores))
        heads.append(fit_head(x, labels, l2, num_classes, max_iter))
        test_top1.append(_topk(heads[-1], x_test, test_y, 1))
    layer = max(range(len(holdout_top1)), key=holdout_top1.__getitem__)
    top5 = _topk(heads[layer], test_feats[layer], test_y, 5)
    return {"probe_top1": test_top1[layer], "probe_top5": top5, "probe_layer": layer, "probe_layer_top1": test_top1,
            "probe_layer_holdout_top1": holdout_top1, "probe_layer_l2": chosen, "probe_layer_l2_grid": grids}


class SGDProbes(torch.nn.Module):
    """The released probe (paper §4): one `nn.Linear(D, C)` per layer (init N(0, 0.01), bias 0), trained jointly on
    the sum of their cross-entropies by SGD with momentum, no weight decay, the lr cosine-annealed to 0 over `steps`
    updates, no warm-up; no feature normalisation."""

    def __init__(self, dims: list[int], num_classes: int, *, lr: float, momentum: float, weight_decay: float,
                 steps: int):
        super().__init__()
        self.heads = torch.nn.ModuleList(torch.nn.Linear(d, num_classes) for d in dims)
        for h in self.heads:
            torch.nn.init.normal_(h.weight, std=0.01)
            torch.nn.init.zeros_(h.bias)
        self.opt = torch.optim.SGD(self.heads.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda t: 0.5 * (1 + math.cos(math.pi * min(t, steps) / steps)))

    def step(self, feats: list[Tensor], y: Tensor) -> float:
        """One update on pooled features, one (B, D_l) tensor per layer; returns the summed loss."""
        loss = sum(F.cross_entropy(h(f.float()), y) for h, f in zip(self.heads, feats))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        return loss.item()

    @torch.no_grad()
    def correct(self, feats: list[Tensor], y: Tensor, k: int = 1) -> list[int]:
        """Per layer, how many of the rows (B, D_l) have their label among the top-k logits."""
        out = []
        for h, f in zip(self.heads, feats):
            logits = h(f.float())  # (B, C)
            out.append(int((logits.topk(min(k, logits.shape[1]), dim=1).indices == y[:, None]).any(1).sum()))
        return out
