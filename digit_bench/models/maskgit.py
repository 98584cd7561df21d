"""MaskGIT stage-2 decoder: DiGIT tokens -> VQGAN tokens by iterative parallel decoding ("DiGIT (+MaskGIT)").

A bidirectional transformer reads `[DiGIT tokens][sep][VQ tokens, some = MASK]` and predicts the masked VQ tokens
(paper §3.3, the official `st2vtlm_nar`). The DiGIT prefix has its own embedding and position table; `[sep]` and
the VQ tokens share a second position table that restarts at 0, as in the official two-table layout.

- Training: per sample, mask floor(n * cos(pi/2 * u)) + 1 of the n VQ tokens (at most n), u ~ U(0, 1)
  (`random_mask`); cross-entropy with label smoothing on the masked positions only (`MaskGIT.loss`).
- Decoding (`MaskGIT.generate`, Chang et al. 2022): start all-MASK; at step t sample every masked position, then
  re-mask the least confident so that `mask_schedule(T, n)[t]` remain masked. Confidence = log-prob of the sampled
  token + Gumbel noise x choice_temperature x (1 - (t+1)/T), annealed to 0; already-known tokens are never re-masked.
  Every random draw comes from a per-sample generator, so a sample depends on its seed, not on the batch.

Built on torch.nn.TransformerEncoder (pre-LN, GELU). Ideas from https://github.com/google-research/maskgit
(maskgit/libml/mask_schedule.py, maskgit/libml/parallel_decode.py), Apache-2.0, re-derived here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class MaskGITConfig:
    vocab_size: int  # VQ codebook size (paper: 1024)
    seq_len: int  # VQ tokens per image, h*w (paper: 256)
    prefix_vocab_size: int  # DiGIT codebook size K (paper: 8192)
    prefix_len: int  # DiGIT tokens per image (paper: 256)
    n_layer: int = 16  # (paper: 16)
    n_head: int = 16  # (paper: 16)
    n_embd: int = 1024  # (paper: 1024)
    n_ffn: int = 4096  # feed-forward width (paper: 4096)
    dropout: float = 0.1  # (paper: 0.1)


def mask_schedule(steps: int, n: int) -> list[int]:
    """Tokens still masked after each of `steps` decoding steps, starting from n masked; ends with 0.

    floor(n * cos(pi/2 * (t+1)/T)), clamped so that every step reveals at least one token (MaskGIT's clamp
    to [1, masked - 1]); the last step reveals everything.
    """
    counts, prev = [], n
    for t in range(steps):
        count = 0
        if t < steps - 1:
            count = max(0, min(prev - 1, max(1, math.floor(n * math.cos(math.pi / 2 * (t + 1) / steps)))))
        counts.append(count)
        prev = count
    return counts


def random_mask(batch: int, n: int, generator: torch.Generator) -> Tensor:
    """Training mask (batch, n) bool: per sample floor(n * cos(pi/2 * u)) + 1 positions (at most n), u ~ U(0, 1)."""
    u = torch.rand(batch, generator=generator)  # (B,)
    n_mask = torch.floor(n * torch.cos(math.pi / 2 * u) + 1).clamp(max=n).long()  # (B,) in [1, n]
    ranks = torch.rand(batch, n, generator=generator).argsort(1).argsort(1)  # (B, N) a random permutation
    return ranks < n_mask[:, None]  # (B, N)


def _gumbel(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> Tensor:
    u = torch.rand(shape, generator=generator, device=device).clamp_min(1e-20)
    return -torch.log(-torch.log(u))


class MaskGIT(nn.Module):
    """Bidirectional transformer over [prefix][sep][VQ tokens]; logits for the VQ positions.

    Token ids: VQ codes 0..vocab_size-1, MASK = vocab_size, SEP = vocab_size + 1 (in the VQ embedding table).
    """

    def __init__(self, cfg: MaskGITConfig):
        super().__init__()
        self.cfg = cfg
        self.mask_id, self.sep_id = cfg.vocab_size, cfg.vocab_size + 1
        self.prefix_emb = nn.Embedding(cfg.prefix_vocab_size, cfg.n_embd)
        self.prefix_pos = nn.Embedding(cfg.prefix_len, cfg.n_embd)
        self.tok_emb = nn.Embedding(cfg.vocab_size + 2, cfg.n_embd)  # codes + MASK + SEP
        self.tok_pos = nn.Embedding(cfg.seq_len + 1, cfg.n_embd)  # SEP + VQ positions
        self.drop = nn.Dropout(cfg.dropout)
        layer = nn.TransformerEncoderLayer(cfg.n_embd, cfg.n_head, cfg.n_ffn, cfg.dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, cfg.n_layer, norm=nn.LayerNorm(cfg.n_embd),
                                                 enable_nested_tensor=False)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size)  # real codes only: MASK/SEP are never predicted
        for emb in (self.prefix_emb, self.prefix_pos, self.tok_emb, self.tok_pos, self.head):
            nn.init.normal_(emb.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, prefix: Tensor, tokens: Tensor) -> Tensor:
        """prefix (B, P) DiGIT ids, tokens (B, N) VQ ids or MASK -> logits (B, N, vocab_size)."""
        B, N = tokens.shape
        sep = torch.full((B, 1), self.sep_id, dtype=tokens.dtype, device=tokens.device)
        vq = torch.cat([sep, tokens], 1)  # (B, 1+N)
        x = torch.cat([self.prefix_emb(prefix) + self.prefix_pos.weight,  # (B, P, D)
                       self.tok_emb(vq) + self.tok_pos.weight[: N + 1]], 1)  # (B, P+1+N, D)
        x = self.transformer(self.drop(x))  # (B, P+1+N, D), no attention mask: fully bidirectional
        return self.head(x[:, -N:])  # (B, N, V)

    def loss(self, prefix: Tensor, tokens: Tensor, mask: Tensor, label_smoothing: float = 0.1) -> Tensor:
        """Cross-entropy on the masked positions only; `mask` (B, N) bool, e.g. from `random_mask`."""
        logits = self(prefix, tokens.masked_fill(mask, self.mask_id))  # (B, N, V)
        return F.cross_entropy(logits[mask].float(), tokens[mask], label_smoothing=label_smoothing)

    @torch.no_grad()
    def generate(self, prefix: Tensor, seeds: Sequence[int], steps: int = 8, choice_temperature: float = 4.5,
                 temperature: float = 1.0) -> Tensor:
        """Decode VQ tokens (B, N) for DiGIT prefixes (B, P); sample b uses torch.Generator seeded seeds[b]."""
        B, N, dev = prefix.shape[0], self.cfg.seq_len, prefix.device
        if len(seeds) != B:
            raise ValueError(f"generate got {len(seeds)} seeds for {B} prefixes; give one seed per sample")
        gens = [torch.Generator(device=dev).manual_seed(int(s)) for s in seeds]
        was_training = self.training
        self.eval()
        tokens = torch.full((B, N), self.mask_id, dtype=torch.long, device=dev)
        for t, n_masked in enumerate(mask_schedule(steps, N)):
            unknown = tokens == self.mask_id  # (B, N)
            if not unknown.any():
                break
            logp = (self(prefix, tokens).float() / temperature).log_softmax(-1)  # (B, N, V)
            noise = torch.stack([_gumbel((N, logp.shape[-1]), g, dev) for g in gens])  # (B, N, V)
            sampled = (logp + noise).argmax(-1)  # Gumbel-max: one draw from softmax(logits / T), (B, N)
            sampled = torch.where(unknown, sampled, tokens)  # (B, N)
            confidence = logp.gather(-1, sampled[..., None]).squeeze(-1)  # (B, N) log p of the chosen token
            anneal = choice_temperature * (1.0 - (t + 1) / steps)
            confidence = confidence + anneal * torch.stack([_gumbel((N,), g, dev) for g in gens])  # (B, N)
            confidence = confidence.masked_fill(~unknown, math.inf)  # known tokens stay known
            least = confidence.argsort(dim=1, stable=True)[:, :n_masked]  # (B, n_masked)
            remask = torch.zeros_like(unknown).scatter_(1, least, True)  # (B, N)
            tokens = sampled.masked_fill(remask, self.mask_id)  # (B, N)
        self.train(was_training)
        return tokens
