"""The autoregressive transformer over image tokens: DiGIT stage 1, the stage-2 AR decoder and the VQ-token baseline.

One decoder-only GPT covers three uses:
- stage 1 (paper §2): `[BOS | class] + tokens` under a causal mask, post-LN without a final LayerNorm (fairseq
  `decoder_normalize_before=False`), embeddings scaled by sqrt(d), untied output head, dropout 0.1;
- stage 2 AR (paper §3.2): `[DiGIT prefix] + [SEP] + VQ tokens` under ONE causal mask over the whole sequence; the
  prefix has its own embedding table and its own learned position table, the target segment restarts at position 0,
  and logits (hence the loss) exist only for the target segment; pre-LN with a final LayerNorm (`post_ln=False`);
- the GPT-over-VQGAN-tokens baseline: stage 1's layout on VQ tokens.

Input-embedding rows: `0..V-1` data tokens, `V` = BOS (the separator after a prefix), `V+1..V+C` class tokens, and
`V+C+1` the null class when `num_classes > 0` (label id `C` selects it: CFG sampling, or unconditional samples from a
class-conditional model). The head predicts only the `V` data tokens.

Sampling (`generate`) uses a KV cache, computes the prefix's keys/values once, and draws every token of sample `i`
from its own `torch.Generator(seeds[i])` by inverse-CDF sampling, so a sample does not depend on the batch it is in.

Ideas from: karpathy/nanoGPT model.py (MIT; blocks, SDPA, FLOP estimate), fairseq TransformerDecoder (MIT; post-LN,
embedding scale, init), FoundationVision/LlamaGen gpt.py (MIT; class token in place of BOS, CFG, KV cache).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from digit_bench.errors import UserError
from digit_bench.registry import did_you_mean


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int  # data tokens 0..V-1, the only symbols the head predicts (paper: 8192 base, 16384 large)
    seq_len: int  # data tokens per sequence (paper: 256 = 16x16 grid; Fashion-MNIST tiny: 64)
    n_layer: int
    n_head: int
    n_embd: int  # width d (paper: 1024 base, 1536 large)
    n_ffn: int  # MLP hidden width (paper: 4 * d)
    dropout: float = 0.1  # embedding and residual dropout (paper: 0.1; attention/activation dropout are 0)
    post_ln: bool = True  # LayerNorm after each residual add, no final LN (paper stage 1); False: pre-LN + final LN
    scale_embedding: bool = True  # multiply token embeddings by sqrt(d) (fairseq default, paper)
    num_classes: int = 0  # > 0: a class token replaces BOS (paper Table 4: 1000); 0 = unconditional
    label_dropout: float = 0.0  # training: probability a label becomes the null class (CFG; paper: 0)
    prefix_vocab_size: int = 0  # stage 2: vocabulary of the conditioning prefix (DiGIT K); 0 = no prefix
    prefix_len: int = 0  # stage 2: prefix tokens per sequence (paper: 256)

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise UserError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}; change one of them")
        if (self.prefix_len > 0) != (self.prefix_vocab_size > 0):
            raise UserError("set both prefix_len and prefix_vocab_size (stage 2) or neither (stage 1)")
        if self.label_dropout > 0 and self.num_classes == 0:
            raise UserError("label_dropout > 0 needs num_classes > 0 (classifier-free guidance is class-conditional)")


# Paper sizes count 219M / 732M with the paper's vocab; CPU sizes with the defaults below (K=512, 8x8 grid).
GPT_SIZES: dict[str, dict] = {
    "gpt-nano": dict(n_layer=2, n_head=2, n_embd=64, n_ffn=256, vocab_size=512, seq_len=64),  # 0.17M
    "gpt-micro": dict(n_layer=4, n_head=4, n_embd=128, n_ffn=512, vocab_size=512, seq_len=64),  # 0.93M
    "gpt-mini": dict(n_layer=6, n_head=8, n_embd=256, n_ffn=1024, vocab_size=512, seq_len=64),  # 5.0M
    # Fig. 4a's "39M" probe model (its architecture is not published): 10 x 512 at K=8192, 256 tokens: 40.0M
    "digit-39m": dict(n_layer=10, n_head=8, n_embd=512, n_ffn=2048, vocab_size=8192, seq_len=256),
    "digit-b": dict(n_layer=16, n_head=16, n_embd=1024, n_ffn=4096, vocab_size=8192, seq_len=256),  # 218.6M
    "digit-l": dict(n_layer=24, n_head=16, n_embd=1536, n_ffn=6144, vocab_size=16384, seq_len=256),  # 730.7M
}


def gpt_config(size: str, **overrides) -> GPTConfig:
    """The GPTConfig of a GPT_SIZES row, with fields replaced by `overrides` (vocab_size, seq_len, post_ln, ...)."""
    if size not in GPT_SIZES:
        raise UserError(f"unknown GPT size {size!r}{did_you_mean(size, list(GPT_SIZES))}; "
                        f"choose one of: {', '.join(GPT_SIZES)}")
    valid = [f.name for f in dataclasses.fields(GPTConfig)]
    for key in overrides:
        if key not in valid:
            raise UserError(f"unknown GPTConfig field {key!r}{did_you_mean(key, valid)}; valid: {', '.join(valid)}")
    return GPTConfig(**{**GPT_SIZES[size], **overrides})


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)

    def forward(self, x: Tensor, cache: Optional[Tensor] = None, pos: int = 0) -> Tensor:
        """Attend causally; with `cache` (2, B, H, L_max, hd), write this chunk's keys/values at `pos` and attend to
        all cached ones. A chunk longer than one token must start at pos 0 (the prefill); later chunks are single
        tokens. Few, fused ops: at one token per step sampling time is per-op overhead, not arithmetic.
        """
        B, L, D = x.shape
        qkv = self.qkv(x).view(B, L, 3, self.n_head, D // self.n_head).permute(2, 0, 3, 1, 4)  # (3, B, H, L, hd)
        q, k, v = qkv  # 3 x (B, H, L, hd)
        if cache is not None:
            cache[:, :, :, pos:pos + L] = qkv[1:]  # keys and values in one copy
            k, v = cache[:, :, :, :pos + L]  # 2 x (B, H, pos + L, hd)
        # NOTE: SDPA's is_causal mask is top-left aligned, which is right only when the queries start at key 0
        # (full forward, prefill); a single new token attends to every cached key, so it needs no mask.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=L > 1)  # (B, H, L, hd)
        y = y.transpose(1, 2).reshape(B, L, D)  # (B, L, D)
        return self.proj(y)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.post_ln = cfg.post_ln
        self.ln1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = nn.Sequential(nn.Linear(cfg.n_embd, cfg.n_ffn), nn.GELU(), nn.Linear(cfg.n_ffn, cfg.n_embd))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, cache: Optional[Tensor] = None, pos: int = 0) -> Tensor:
        if self.post_ln:  # fairseq decoder_normalize_before=False
            x = self.ln1(x + self.drop(self.attn(x, cache, pos)))
            return self.ln2(x + self.drop(self.mlp(x)))
        x = x + self.drop(self.attn(self.ln1(x), cache, pos))
        return x + self.drop(self.mlp(self.ln2(x)))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        num_start = 1 + cfg.num_classes + (1 if cfg.num_classes else 0)  # BOS, classes, null class
        self.tok_emb = nn.Embedding(cfg.vocab_size + num_start, cfg.n_embd)
        self.pos_emb = nn.Embedding(cfg.seq_len, cfg.n_embd)
        if cfg.prefix_len:
            self.prefix_emb = nn.Embedding(cfg.prefix_vocab_size, cfg.n_embd)
            self.prefix_pos_emb = nn.Embedding(cfg.prefix_len, cfg.n_embd)
        self.embed_scale = math.sqrt(cfg.n_embd) if cfg.scale_embedding else 1.0
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.Identity() if cfg.post_ln else nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        # fairseq: embeddings and the output head N(0, d^-0.5); other linears Xavier-uniform, zero bias. Xavier on
        # the fused (d -> 3d) qkv matrix gives the same bound as fairseq's separate q/k/v with gain 1/sqrt(2).
        if isinstance(module, nn.Embedding) or module is self.head:
            nn.init.normal_(module.weight, std=self.cfg.n_embd ** -0.5)
        elif isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count; `non_embedding` leaves out the input lookup tables (token, class, prefix, positions)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Embedding))
        return n

    def flops_per_token(self) -> float:
        """Training FLOPs (forward + backward) per target token: 6N + 12 * n_layer * d * context (nanoGPT, PaLM)."""
        context = self.cfg.prefix_len + self.cfg.seq_len
        return 6 * self.num_params(non_embedding=True) + 12 * self.cfg.n_layer * self.cfg.n_embd * context

    # ------------------------------------------------------------------------------------------------ inputs
    def _start_tokens(self, batch: int, labels: Optional[Tensor], device: torch.device) -> Tensor:
        """Row of the first target-segment input: BOS/separator, or the class token (null class for label C)."""
        V, C = self.cfg.vocab_size, self.cfg.num_classes
        if C == 0:
            if labels is not None:
                raise UserError("labels given to an unconditional GPT; set num_classes (gpt.class_conditional)")
            return torch.full((batch,), V, dtype=torch.long, device=device)  # (B,)
        if labels is None:
            raise UserError(f"this GPT is class-conditional: pass labels in [0, {C}] ({C} = null class)")
        if self.training and self.cfg.label_dropout > 0:
            dropped = torch.rand(batch, device=device) < self.cfg.label_dropout  # (B,)
            labels = torch.where(dropped, C, labels)  # (B,)
        return V + 1 + labels  # (B,)

    def _embed(self, tokens: Tensor, prefix: Optional[Tensor], start: int = 0) -> Tensor:
        """Embed target-segment input rows at positions start.. (plus the prefix in front when start is 0)."""
        if start == 0 and (prefix is not None) != (self.cfg.prefix_len > 0):
            raise UserError(f"this GPT takes a prefix of {self.cfg.prefix_len} tokens (0 = none); "
                            f"got {'none' if prefix is None else tuple(prefix.shape)}")
        positions = torch.arange(start, start + tokens.shape[1], device=tokens.device)  # (t,)
        x = self.tok_emb(tokens) * self.embed_scale + self.pos_emb(positions)  # (B, t, D)
        if prefix is not None:
            prefix_positions = torch.arange(prefix.shape[1], device=prefix.device)  # (P,)
            p = self.prefix_emb(prefix) * self.embed_scale + self.prefix_pos_emb(prefix_positions)  # (B, P, D)
            x = torch.cat([p, x], dim=1)  # (B, P + t, D)
        return self.drop(x)

    def _inputs(self, idx: Tensor, labels: Optional[Tensor], prefix: Optional[Tensor]) -> Tensor:
        """Embedded `[prefix] + [BOS | class] + idx[:, :-1]`: input position t predicts idx[:, t]."""
        start = self._start_tokens(idx.shape[0], labels, idx.device)  # (B,)
        tokens = torch.cat([start[:, None], idx[:, :-1]], dim=1)  # (B, T)
        return self._embed(tokens, prefix)  # (B, P + T, D)

    # ------------------------------------------------------------------------------------------------ training
    def forward(self, idx: Tensor, labels: Optional[Tensor] = None, prefix: Optional[Tensor] = None) -> Tensor:
        """Logits (B, T, V) predicting `idx` (B, T) itself; the input is shifted internally. No prefix logits."""
        x = self._inputs(idx, labels, prefix)  # (B, P + T, D)
        for block in self.blocks:
            x = block(x)  # (B, P + T, D)
        x = self.ln_f(x[:, self.cfg.prefix_len:])  # (B, T, D): only the target segment is predicted
        return self.head(x)  # (B, T, V)

    def loss(self, idx: Tensor, labels: Optional[Tensor] = None, prefix: Optional[Tensor] = None,
             label_smoothing: float = 0.1) -> Tensor:
        """Token-mean cross-entropy with label smoothing (paper: 0.1), over the target tokens only."""
        logits = self(idx, labels, prefix)  # (B, T, V)
        return F.cross_entropy(logits.flatten(0, 1), idx.flatten(), label_smoothing=label_smoothing)

    def hidden_states(self, idx: Tensor, labels: Optional[Tensor] = None, prefix: Optional[Tensor] = None,
                      last_token: bool = False) -> list[Tensor]:
        """The embedding output and every block's output, each (B, P + T, D), for the linear probe (paper §4).

        The T input positions hold [BOS | class] and idx[:, :-1]. With `last_token` the last token idx[:, -1] is
        read too, at an extra input position T (states (B, P + T + 1, D)), so a probe pooling them sees every token,
        as the paper's 257 positions ([eos] + 256 tokens) do. NOTE: the paper's GPT is trained with that position;
        ours is trained without an end token, so position T has no learned embedding: the last token enters with
        its token embedding alone (no position term). Positions 0..T-1 are unchanged (causal attention).
        """
        x = self._inputs(idx, labels, prefix)  # (B, P + T, D)
        if last_token:
            last = self.tok_emb(idx[:, -1:]) * self.embed_scale  # (B, 1, D)
            x = torch.cat([x, self.drop(last)], dim=1)  # (B, P + T + 1, D)
        states = [x]
        for block in self.blocks:
            x = block(x)  # (B, P + T [+ 1], D)
            states.append(x)
        return states

    # ------------------------------------------------------------------------------------------------ sampling
    @torch.inference_mode()
    def generate(self, num: int, *, labels: Optional[Tensor] = None, prefix: Optional[Tensor] = None,
                 seeds: Sequence[int], top_k: int = 0, top_p: float = 1.0, temperature: float = 1.0,
                 cfg_scale: float = 1.0, prompt: Optional[Tensor] = None, use_cache: bool = True) -> Tensor:
        """Sample `num` sequences (num, seq_len) of data tokens; sample i depends only on seeds[i] and its inputs.

        Args:
            labels: (num,) class ids in [0, num_classes], num_classes = null class; required iff class-conditional.
            prefix: (num, prefix_len) conditioning tokens (stage 2); their keys/values are computed once.
            seeds: one seed per sample.
            top_k: keep the k most likely tokens (0 = all). top_p: nucleus mass (1.0 = all).
            cfg_scale: classifier-free guidance, logits = null + s * (cond - null); 1.0 = conditional only.
            prompt: (num, n) data tokens taken as the first n tokens instead of sampled ones (paper Fig. 4b).
            use_cache: False recomputes the whole sequence at every step (reference path for tests).
        """
        if len(seeds) != num:
            raise UserError(f"generate: {len(seeds)} seeds for {num} samples; pass one seed per sample")
        guided = cfg_scale != 1.0
        if guided and labels is None:
            raise UserError("cfg_scale != 1 needs a class-conditional GPT and labels")
        device = self.head.weight.device
        T, P = self.cfg.seq_len, self.cfg.prefix_len
        # One uniform per token per sample from the sample's own generator (on CPU, so streams match across devices).
        uniforms = torch.stack([torch.rand(T, generator=torch.Generator().manual_seed(int(s))) for s in seeds])
        uniforms = uniforms.to(device)  # (num, T)
        if guided:  # conditional rows first, null-class rows second
            labels = torch.cat([labels, torch.full_like(labels, self.cfg.num_classes)])  # (2 num,)
            prefix = None if prefix is None else torch.cat([prefix, prefix])  # (2 num, P)
        rows = 2 * num if guided else num
        out = torch.zeros(rows, T, dtype=torch.long, device=device)  # (rows, T), filled left to right

        n_prompt = 0 if prompt is None else prompt.shape[1]
        if n_prompt > T or (prompt is not None and len(prompt) != num):
            raise UserError(f"prompt {tuple(prompt.shape)} does not fit {num} samples of {T} tokens")

        def sample(logits: Tensor, t: int) -> None:  # logits (rows, V) for token t
            if t < n_prompt:
                out[:, t] = prompt[:, t].to(device).repeat(rows // num)
                return
            if guided:
                cond, null = logits.float().chunk(2)  # 2 x (num, V)
                logits = null + cfg_scale * (cond - null)  # (num, V)
            token = sample_next(logits, uniforms[:, t], top_k=top_k, top_p=top_p, temperature=temperature)  # (num,)
            out[:, t] = token.repeat(rows // num)

        was_training = self.training
        self.eval()
        if use_cache:
            hd = self.cfg.n_embd // self.cfg.n_head
            dtype = self.head.weight.dtype
            caches = [torch.empty(2, rows, self.cfg.n_head, P + T, hd, device=device, dtype=dtype)  # keys, values
                      for _ in self.blocks]
            start = self._start_tokens(rows, labels, device)  # (rows,)
            x = self._embed(start[:, None], prefix)  # (rows, P + 1, D): prefill prefix and start token at once
            for t in range(T):
                for block, cache in zip(self.blocks, caches):
                    x = block(x, cache, P + t if t else 0)  # (rows, L, D), L = P + 1 at t = 0, else 1
                sample(self.head(self.ln_f(x[:, -1])), t)
                if t + 1 < T:
                    x = self._embed(out[:, t:t + 1], None, start=t + 1)  # (rows, 1, D)
        else:
            for t in range(T):
                logits = self(out[:, :t + 1], labels, prefix)  # (rows, t + 1, V); position t sees out[:, :t] only
                sample(logits[:, t], t)
        self.train(was_training)
        return out[:num]


def sample_next(logits: Tensor, uniforms: Tensor, *, top_k: int, top_p: float, temperature: float) -> Tensor:
    """Draw one token per row of `logits` (B, V) by inverse-CDF sampling with `uniforms` (B,) in [0, 1).

    Tokens outside the top-k (logit below the k-th largest) or outside the nucleus (the most likely tokens whose mass
    first reaches top_p) get probability 0, and a zero-probability token is never drawn: the searched value lies in
    (0, total], so it lands on a step of the CDF, never on a flat part.
    """
    logits = logits.float() / temperature  # (B, V)
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))  # (B, V)
    probs = F.softmax(logits, dim=-1)  # (B, V)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)  # (B, V) each
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # (B, V): mass of the more likely tokens
        probs = torch.zeros_like(probs).scatter(1, order, sorted_probs.masked_fill(mass_before >= top_p, 0.0))
    cdf = probs.cumsum(dim=-1)  # (B, V)
    target = (1.0 - uniforms)[:, None] * cdf[:, -1:]  # (B, 1), in (0, total]
    return torch.searchsorted(cdf, target).squeeze(1)  # (B,)
