"""Analytic size, FLOPs and memory of the GPT family (stage 1, the stage-2 AR decoder) before anything is allocated.

Everything here is arithmetic on a `models.gpt.GPTConfig`; no model is built. Used by `digit-bench plan` (per-job
FLOPs, memory, GPU-hours and whether a job fits its launcher block), by `sweep` (refuses jobs that cannot fit) and
by `digit_bench.doctor` (largest micro-batch that fits a device, then confirmed against the measured peak).

API
- `gpt_params(cfg) -> int`: exact parameter count of `GPT(cfg)` (tested equal to `sum(p.numel())`).
  `gpt_param_groups(cfg) -> dict`: the same split into embedding tables, blocks, final norm and head.
- `gpt_train_flops(cfg) -> float`: training FLOPs (forward + backward) per sequence: 6 x matmul params x tokens
  through them (blocks see prefix + target, the head only the target) + 12 x n_layer x d x L^2 for attention
  (nanoGPT/PaLM convention, causal mask not discounted). Divided by `cfg.seq_len` it equals
  `GPT.flops_per_token()` when there is no prefix.
- `activation_bytes(cfg, precision, device_type) -> int`: bytes autograd keeps per sequence in training
  (`precision` "bf16" = CUDA bf16 autocast, "fp32"; `device_type` "cuda" | "cpu": dropout masks are bool on CUDA,
  of the input dtype on CPU).
- `train_memory(cfg, micro_batch, precision="bf16", device_type="cuda", ema=False) -> TrainMemory`: bytes of
  weights, gradients, AdamW state, EMA copy, autocast's bf16 weight copies, saved activations and the loss peak
  (fp32 log-softmax and its gradient); `.total` is the predicted peak of `torch.cuda.max_memory_allocated`, a
  slight overestimate (gradients are counted as if they coexisted with all activations).
- `max_micro_batch(cfg, budget_bytes, **train_memory_kwargs) -> int`: the largest micro-batch whose `.total` fits
  (0 when even one sequence does not).
- `kv_cache_bytes(cfg, batch, dtype_bytes=4) -> int`: the sampling KV cache of `GPT.generate`.
- `gpu_spec(name) -> GPUSpec | None`: bf16 dense peak TFLOP/s and memory of a GPU named like
  `torch.cuda.get_device_name()` or a launcher's `gpu_type` ("h200", "NVIDIA H100 80GB HBM3"); None if unknown.

Accuracy: on CPU, activations are exact to the byte for fp32 and CPU bf16 autocast at tiny sizes (tests count
autograd's saved tensors); on CUDA the doctor compares `.total` with `torch.cuda.max_memory_allocated`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional

from digit_bench.models.gpt import GPTConfig

GiB = 2**30


def gpt_param_groups(cfg: GPTConfig) -> dict[str, int]:
    """Parameters of `GPT(cfg)` by part: embeddings (lookup tables), blocks, final_norm, head."""
    d, f = cfg.n_embd, cfg.n_ffn
    num_start = 1 + cfg.num_classes + (1 if cfg.num_classes else 0)  # BOS, classes, null class
    embeddings = (cfg.vocab_size + num_start) * d + cfg.seq_len * d + (cfg.prefix_vocab_size + cfg.prefix_len) * d
    # per block: 2 LayerNorms, qkv (d x 3d + 3d), proj (d x d + d), MLP (d x f + f, f x d + d)
    block = 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * f + f) + (f * d + d)
    return {"embeddings": embeddings, "blocks": cfg.n_layer * block, "final_norm": 0 if cfg.post_ln else 2 * d,
            "head": d * cfg.vocab_size}


def gpt_params(cfg: GPTConfig) -> int:
    """Exact parameter count of `GPT(cfg)`."""
    return sum(gpt_param_groups(cfg).values())


def _linear_params(cfg: GPTConfig) -> int:
    """Weights + biases of every nn.Linear (what bf16 autocast casts and caches)."""
    d, f = cfg.n_embd, cfg.n_ffn
    return cfg.n_layer * ((3 * d * d + 3 * d) + (d * d + d) + (d * f + f) + (f * d + d)) + d * cfg.vocab_size


def gpt_train_flops(cfg: GPTConfig) -> float:
    """Training FLOPs (forward + backward) of one sequence: prefix + target through the blocks, target through the head."""
    groups = gpt_param_groups(cfg)
    L = cfg.prefix_len + cfg.seq_len
    return (6 * (groups["blocks"] + groups["final_norm"]) * L + 6 * groups["head"] * cfg.seq_len
            + 12 * cfg.n_layer * cfg.n_embd * L * L)


def activation_bytes(cfg: GPTConfig, precision: str = "bf16", device_type: str = "cuda") -> int:
    """Bytes of the tensors autograd saves for one sequence of a training forward (no transient buffers).

    Per block (units of L x d, a = 2 under bf16 autocast else 4, r = 4 for the fp32 residual stream and LayerNorm
    inputs, m = dropout-mask bytes): qkv input a, q/k/v 3a, attention output a (the projection reads it as a view),
    two LayerNorm inputs 2r, MLP input a, GELU input and output 2a x f/d, two dropout masks 2m; plus the attention
    log-sum-exp (fp32, H x L) and two LayerNorms' mean and rstd (fp32, 4 x L). Outside the blocks: token ids,
    the embedding dropout mask, the head input (target positions), the final LayerNorm input (pre-LN) and the fp32
    log-softmax of the logits.
    """
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"precision must be bf16 or fp32, not {precision!r}")
    a = 2 if precision == "bf16" else 4
    r = 4
    mask_block = 1 if device_type == "cuda" else a  # dropout of a bf16 (autocast) or fp32 tensor
    mask_embed = 1 if device_type == "cuda" else 4  # the embeddings are fp32 under autocast
    d, f, H, T, P = cfg.n_embd, cfg.n_ffn, cfg.n_head, cfg.seq_len, cfg.prefix_len
    L = P + T
    drop = cfg.dropout > 0
    per_block = (L * d * (6 * a + 2 * r + (2 * mask_block if drop else 0)) + 2 * a * L * f
                 + 4 * H * L + 2 * 2 * 4 * L)
    ids = 8 * T + 8 * P + 8 * T + 8 * P  # token ids, position ids (int64; positions are shared but tiny)
    embed = L * d * (mask_embed if drop else 0)
    final_norm = 0 if cfg.post_ln else L * d * r + 2 * 4 * T
    head = T * d * a + 4 * T * cfg.vocab_size + 8 * T + T  # head input, fp32 log-softmax, targets, smoothing mask
    return cfg.n_layer * per_block + ids + embed + final_norm + head


@dataclass(frozen=True)
class TrainMemory:
    """Predicted bytes of one training rank; `total` is the predicted peak allocated memory."""

    weights: int  # fp32 parameters
    grads: int  # fp32 gradients
    optimizer: int  # AdamW exp_avg + exp_avg_sq (fp32)
    ema: int  # fp32 EMA copy of the weights (train.ema > 0)
    autocast_copies: int  # bf16 copies of every Linear weight/bias, cached by autocast for the forward
    activations: int  # saved tensors of the micro-batch
    loss_peak: int  # fp32 logits for the loss and their gradient, alive around the loss/backward boundary

    @property
    def total(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self))

    def as_gib(self) -> dict[str, float]:
        return {**{f.name: round(getattr(self, f.name) / GiB, 3) for f in fields(self)}, "total": round(self.total / GiB, 3)}


def train_memory(cfg: GPTConfig, micro_batch: int, precision: str = "bf16", device_type: str = "cuda",
                 ema: bool = False) -> TrainMemory:
    """Memory of a training step of `GPT(cfg)` at `micro_batch` sequences per rank (AdamW, fp32 master weights)."""
    n = gpt_params(cfg)
    return TrainMemory(
        weights=4 * n, grads=4 * n, optimizer=8 * n, ema=4 * n if ema else 0,
        autocast_copies=2 * _linear_params(cfg) if precision == "bf16" else 0,
        activations=micro_batch * activation_bytes(cfg, precision, device_type),
        loss_peak=micro_batch * 2 * 4 * cfg.seq_len * cfg.vocab_size)


def max_micro_batch(cfg: GPTConfig, budget_bytes: float, **kwargs) -> int:
    """Largest micro-batch whose predicted peak fits `budget_bytes` (0 if the fixed state alone does not)."""
    fixed = train_memory(cfg, 0, **kwargs).total
    per_seq = train_memory(cfg, 1, **kwargs).total - fixed
    return max(0, int((budget_bytes - fixed) // per_seq))


def kv_cache_bytes(cfg: GPTConfig, batch: int, dtype_bytes: int = 4) -> int:
    """Keys and values of every layer for `batch` sequences of prefix + target, as `GPT.generate` allocates them."""
    return cfg.n_layer * 2 * batch * (cfg.prefix_len + cfg.seq_len) * cfg.n_embd * dtype_bytes


@dataclass(frozen=True)
class GPUSpec:
    name: str
    bf16_tflops: float  # dense bf16 tensor-core peak (vendor datasheet, SXM where there are variants)
    memory_gb: float  # device memory, GB as the vendor states it


# Dense (no sparsity) bf16 peaks from NVIDIA's datasheets.
GPU_SPECS: dict[str, GPUSpec] = {s.name: s for s in [
    GPUSpec("h200", 989.4, 141), GPUSpec("h100", 989.4, 80), GPUSpec("h100-pcie", 756.0, 80),
    GPUSpec("a100", 312.0, 80), GPUSpec("a100-40gb", 312.0, 40), GPUSpec("l40s", 362.05, 48),
    GPUSpec("a10g", 70.0, 24), GPUSpec("l4", 121.0, 24), GPUSpec("v100", 125.0, 32),
]}


def gpu_spec(name: Optional[str]) -> Optional[GPUSpec]:
    """The spec of a launcher `gpu_type` or a `torch.cuda.get_device_name()` string; None when unknown or None."""
    if not name:
        return None
    key = name.lower().replace("nvidia", "").strip()
    if key in GPU_SPECS:
        return GPU_SPECS[key]
    words = key.replace("-", " ").split()
    for base in ("h200", "h100", "a100", "l40s", "a10g", "l4", "v100"):
        if base in words:
            if base == "h100" and "pcie" in words:
                return GPU_SPECS["h100-pcie"]
            if base == "a100" and any(w.startswith("40g") for w in words):
                return GPU_SPECS["a100-40gb"]
            return GPU_SPECS[base]
    return None
