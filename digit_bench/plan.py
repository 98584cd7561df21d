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
- `saved_activation_bytes(model, fn) -> int`: the measured counterpart (autograd's saved storages during `fn()`).
- `max_micro_batch(cfg, budget_bytes, **train_memory_kwargs) -> int`: the largest micro-batch whose `.total` fits
  (0 when even one sequence does not).
- `kv_cache_bytes(cfg, batch, dtype_bytes=4) -> int`: the sampling KV cache of `GPT.generate`.
- `gpu_spec(name) -> GPUSpec | None`: bf16 dense peak TFLOP/s and memory of a GPU named like
  `torch.cuda.get_device_name()` or a launcher's `gpu_type` ("h200", "NVIDIA H100 80GB HBM3"); None if unknown.

Sweep planning (what `digit-bench plan` prints and `sweep` checks before submitting):
- `plan_sweep(sweep, mfu=0.4, gpu_type=None) -> list[JobPlan]`: per unique artifact of the roles features, tokens,
  gpt (stage 1), stage2 and samples: params, total FLOPs, world x micro-batch x accumulation, memory per GPU, disk
  bytes, GPU-hours at `mfu` of the GPU's bf16 peak, and `fits_memory` / `fits_time` (None when the GPU type is
  unknown) with `advice` naming the setting to change. Reads `train.micro_batch_size` (None = global batch / world),
  `launcher.nodes`, `launcher.tasks_per_node` (ranks per node) and `launcher.gpu_type` (None = unknown GPU).
- `format_plan(jobs, gpu_type, mfu) -> str`: the table. `check_fits(sweep)`: UserError for the first job that
  cannot fit (memory, or time limit x (1 + requeues)).

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
    """Training FLOPs (forward + backward) of one sequence: prefix + target through the blocks, target through the
    head."""
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
        gib = {f.name: round(getattr(self, f.name) / GiB, 3) for f in fields(self)}
        return {**gib, "total": round(self.total / GiB, 3)}


def train_memory(cfg: GPTConfig, micro_batch: int, precision: str = "bf16", device_type: str = "cuda",
                 ema: bool = False) -> TrainMemory:
    """Memory of a training step of `GPT(cfg)` at `micro_batch` sequences per rank (AdamW, fp32 master weights)."""
    n = gpt_params(cfg)
    return TrainMemory(
        weights=4 * n, grads=4 * n, optimizer=8 * n, ema=4 * n if ema else 0,
        autocast_copies=2 * _linear_params(cfg) if precision == "bf16" else 0,
        activations=micro_batch * activation_bytes(cfg, precision, device_type),
        loss_peak=micro_batch * 2 * 4 * cfg.seq_len * cfg.vocab_size)


def saved_activation_bytes(model, fn) -> int:
    """Measured counterpart of `activation_bytes`: bytes of the distinct storages autograd saves while `fn()` runs,
    leaving out `model`'s parameters and (casts of) Linear weights (`TrainMemory.autocast_copies`)."""
    import torch

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        is_weight = t.grad_fn is not None and type(t.grad_fn).__name__ == "TBackward0"  # (a cast of) a Linear weight
        if ptr not in params and not is_weight:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


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


# ------------------------------------------------------------------------------------------------ sweep planning
# Train/test images of the registered datasets (ImageNet-1k: train and the official val); None = unknown (folders).
DATASET_SIZES: dict[str, tuple[int, int]] = {"imagenet": (1_281_167, 50_000), "fashion_mnist": (60_000, 10_000),
                                            "digits": (1_617, 180), "synthetic": (2_000, 500)}
MEMORY_HEADROOM = 0.92  # share of a GPU's memory a job may plan for (allocator caching, CUDA context, NCCL buffers)


@dataclass
class JobPlan:
    """What one artifact's job needs, and whether it fits its launcher block (None = not known)."""

    role: str  # role in the run DAG (gpt, stage2, features, ...)
    stage: str
    artifact: str  # artifact id
    params: Optional[int] = None
    flops: Optional[float] = None  # total FLOPs of the job
    world: int = 1  # data-parallel ranks
    micro_batch: Optional[int] = None  # sequences per rank per forward
    accum: Optional[int] = None  # micro-batches per update
    memory: Optional[TrainMemory] = None  # per GPU
    mem_bytes: Optional[int] = None  # per GPU (training: memory.total)
    disk_bytes: Optional[int] = None  # bytes the artifact writes
    gpu_hours: Optional[float] = None  # at `mfu` of the GPU's bf16 peak
    fits_memory: Optional[bool] = None
    fits_time: Optional[bool] = None
    advice: str = ""  # what to change when it does not fit


def _grid(cfg) -> int:
    """Tokens per side of the DiGIT tokens of `cfg` (an ExperimentConfig): input side / backbone patch."""
    import re

    from digit_bench.registry import BACKBONES

    b = cfg.backbone
    if b.name in ("random_vit", "pixels"):
        return (b.img_size or 32) // b.patch_size
    target, kwargs = BACKBONES.entry(b.name)
    if target.endswith("pretrained_tiny"):
        return cfg.ssl.image_size // cfg.ssl.patch_size
    patch = int(re.search(r"patch(\d+)", kwargs["model_name"]).group(1))
    return (b.img_size or 224) // patch


def _vit_dims(cfg) -> tuple[int, int]:
    """(depth, width) of the backbone of `cfg`; ViT-B sizes for the registered timm models unless named L/H/S."""
    from digit_bench.registry import BACKBONES

    b = cfg.backbone
    if b.name in ("random_vit", "pixels"):
        return (b.depth, b.embed_dim) if b.name == "random_vit" else (0, 3 * b.patch_size**2)
    target, kwargs = BACKBONES.entry(b.name)
    if target.endswith("pretrained_tiny"):
        return cfg.ssl.depth, cfg.ssl.embed_dim
    name = kwargs["model_name"]
    return next((dims for key, dims in (("small", (12, 384)), ("large", (24, 1024)), ("huge", (32, 1280)))
                 if key in name), (12, 768))


def _num_images(cfg, split: str) -> Optional[int]:
    sizes = DATASET_SIZES.get(cfg.data.name)
    if split == "train":
        n = cfg.data.num_train or (sizes[0] - cfg.data.num_val if sizes else None)
    else:
        n = cfg.data.num_test or (sizes[1] if sizes else None)
    return n


def _stage_gpt(cfg, role: str) -> tuple[GPTConfig, object]:
    """The GPTConfig trained by a `gpt` (stage 1) or `stage2` node of run config `cfg`, and its TrainConfig."""
    from digit_bench.models.gpt import GPT_SIZES, gpt_config

    grid = _grid(cfg)
    vq_grid = cfg.data.image_size // 2 ** (len(cfg.vqgan.ch_mult) - 1)
    if role == "stage2":
        size = {k: v for k, v in GPT_SIZES[cfg.stage2.size].items() if k not in ("vocab_size", "seq_len")}
        return GPTConfig(**size, vocab_size=cfg.vqgan.n_embed, seq_len=vq_grid**2, prefix_vocab_size=cfg.tokenizer.k,
                         prefix_len=grid**2, post_ln=False, dropout=0.1), cfg.stage2.train
    digit = cfg.generator == "digit"
    return gpt_config(cfg.gpt.size, vocab_size=cfg.tokenizer.k if digit else cfg.vqgan.n_embed,
                      seq_len=(grid if digit else vq_grid) ** 2, post_ln=cfg.gpt.post_ln, dropout=cfg.gpt.dropout,
                      num_classes=1000 if cfg.gpt.class_conditional else 0), cfg.train


def _maskgit_params(g: GPTConfig) -> int:
    """Exact parameter count of the MaskGIT decoder with the widths of `g` (built on the meta device)."""
    import torch

    from digit_bench.models.maskgit import MaskGIT, MaskGITConfig

    with torch.device("meta"):
        model = MaskGIT(MaskGITConfig(vocab_size=g.vocab_size, seq_len=g.seq_len, prefix_vocab_size=g.prefix_vocab_size,
                                      prefix_len=g.prefix_len, n_layer=g.n_layer, n_head=g.n_head, n_embd=g.n_embd,
                                      n_ffn=g.n_ffn))
    return sum(p.numel() for p in model.parameters())


def plan_job(cfg, role: str, node, mfu: float = 0.4, gpu_type: Optional[str] = None) -> JobPlan:
    """The plan of node `node` playing `role` in run config `cfg` (an ExperimentConfig); `gpu_type` overrides
    `launcher.gpu_type`."""
    launcher = cfg.launcher
    spec = gpu_spec(gpu_type or launcher.gpu_type)
    job = JobPlan(role=role, stage=node.stage, artifact=node.id)
    n_train = _num_images(cfg, "train")
    if role in ("gpt", "stage2"):
        gcfg, tcfg = _stage_gpt(cfg, role)
        world = launcher.nodes * max(1, launcher.tasks_per_node)
        micro = tcfg.micro_batch_size or max(1, tcfg.batch_size // world)
        job.world, job.micro_batch = world, micro
        job.accum = -(-tcfg.batch_size // (world * micro))
        job.params = gpt_params(gcfg)
        if role == "stage2" and cfg.stage2.kind == "maskgit":  # same widths, bidirectional: GPT formulas, exact params
            job.params = _maskgit_params(gcfg)
            job.advice = "memory: GPT formula (MaskGIT not modeled separately)"
        job.flops = gpt_train_flops(gcfg) * tcfg.batch_size * tcfg.steps
        job.memory = train_memory(gcfg, micro, ema=tcfg.ema > 0)
        job.mem_bytes = job.memory.total
        job.disk_bytes = 4 * job.params * (4 if tcfg.ema > 0 else 3)  # ckpt.pt: weights, AdamW state, (EMA)
        key = "stage2.train" if role == "stage2" else "train"
        if spec is not None:
            budget = spec.memory_gb * 1e9 * MEMORY_HEADROOM
            job.fits_memory = job.mem_bytes <= budget
            if not job.fits_memory:
                best = max_micro_batch(gcfg, budget, ema=tcfg.ema > 0)
                fix = (f"set {key}.micro_batch_size <= {best} (gradient accumulation keeps the global batch "
                       f"{tcfg.batch_size})" if best else f"{job.params / 1e6:.0f}M parameters do not fit one "
                       f"{spec.name}: choose a smaller {'stage2.size' if role == 'stage2' else 'gpt.size'}")
                job.advice = (job.advice + "; " if job.advice else "") + fix
    elif role in ("features", "tokens"):
        depth, width = _vit_dims(cfg)
        T = _grid(cfg) ** 2
        images = None if n_train is None else (round(n_train * cfg.features.fraction) if role == "features"
                                               else len(cfg.tokenizer.views) * n_train)
        if images is not None:
            job.flops = images * depth * (24 * width * width * T + 4 * T * T * width)
            job.disk_bytes = images * T * (2 * width if role == "features" else 2)  # float16 features / uint16 ids
    elif role == "samples":
        gcfg, _ = _stage_gpt(cfg, "gpt")
        job.params = gpt_params(gcfg)
        job.flops = 2.0 * (job.params - gpt_param_groups(gcfg)["embeddings"]) * gcfg.seq_len * cfg.sample.num_samples
        job.mem_bytes = 4 * job.params + kv_cache_bytes(gcfg, cfg.sample.batch_size)
        job.disk_bytes = 2 * gcfg.seq_len * cfg.sample.num_samples
        if spec is not None:
            job.fits_memory = job.mem_bytes <= spec.memory_gb * 1e9 * MEMORY_HEADROOM
            if not job.fits_memory:
                job.advice = "lower sample.batch_size (the KV cache grows with it)"
    elif role == "probe" and cfg.probe.protocol == "paper":  # online: every view through the tokenizer and the GPT
        gcfg, _ = _stage_gpt(cfg, "gpt")
        L = gcfg.seq_len + 1  # [BOS] + every token
        job.params = gpt_params(gcfg)
        gpt = 2.0 * (job.params - gpt_param_groups(gcfg)["embeddings"]) * L + 4.0 * gcfg.n_layer * gcfg.n_embd * L * L
        depth, width = _vit_dims(cfg)
        T = _grid(cfg) ** 2
        vit = depth * (24 * width * width * T + 4 * T * T * width) if cfg.generator == "digit" else 0.0
        job.flops = cfg.probe.steps * cfg.probe.batch_size * (gpt + vit)  # forward only: the heads are negligible
        job.mem_bytes = 4 * job.params + 4 * cfg.probe.batch_size * L * gcfg.n_embd * (gcfg.n_layer + 2)  # + states
        if spec is not None:
            job.fits_memory = job.mem_bytes <= spec.memory_gb * 1e9 * MEMORY_HEADROOM
            if not job.fits_memory:
                job.advice = "lower probe.batch_size"
    if job.flops is not None and spec is not None:
        gpus = job.world if role in ("gpt", "stage2") else 1
        job.gpu_hours = job.flops / (mfu * spec.bf16_tflops * 1e12) / 3600
        limit_h = launcher.timeout_min / 60 * (1 + launcher.max_num_timeout)  # requeues resume from ckpt.pt
        job.fits_time = job.gpu_hours / gpus <= limit_h
        if not job.fits_time:
            job.advice = (job.advice + "; " if job.advice else "") + (
                f"needs {job.gpu_hours / gpus:.0f} h on {gpus} GPU(s) > {limit_h:.0f} h (launcher.timeout_min x "
                f"(1 + launcher.max_num_timeout requeues)): raise launcher.gpus_per_node/tasks_per_node, "
                f"launcher.nodes or launcher.timeout_min")
    return job


PLANNED_ROLES = ("features", "tokens", "gpt", "stage2", "samples")


def plan_sweep(sweep, mfu: float = 0.4, gpu_type: Optional[str] = None) -> list[JobPlan]:
    """One JobPlan per unique artifact of `sweep` (a config.Sweep) whose role is in PLANNED_ROLES, in DAG order."""
    from digit_bench.engine.dag import run_dag

    seen: dict[str, JobPlan] = {}
    for run in sweep.runs:
        for role, node in run_dag(run.cfg).items():
            if node.id not in seen and (role in PLANNED_ROLES or role == "probe" and run.cfg.probe.protocol == "paper"):
                seen[node.id] = plan_job(run.cfg, role, node, mfu, gpu_type)
    return list(seen.values())


def format_plan(jobs: list[JobPlan], gpu_type: Optional[str], mfu: float) -> str:
    spec = gpu_spec(gpu_type)
    head = (f"GPU: {spec.name} ({spec.memory_gb:g} GB, bf16 peak {spec.bf16_tflops:g} TFLOP/s), GPU-hours at "
            f"{mfu:.0%} MFU" if spec else f"GPU type {gpu_type!r} unknown: set launcher.gpu_type (h200, h100, a100, "
            f"...) for GPU-hours and fits; MFU/peaks unknown")
    head += f"\nmodeled roles: {', '.join(PLANNED_ROLES)}, probe (paper protocol) (other stages are not in the plan)"
    lines = [head, f"{'role':<9} {'artifact':<44} {'params':>8} {'world x micro x accum':>22} {'GiB/GPU':>8} "
             f"{'PFLOP':>10} {'GPU-h':>8} {'disk GB':>8}  fits"]

    def num(x, fmt):
        return "-" if x is None else format(x, fmt)

    for j in jobs:
        shape = f"{j.world} x {j.micro_batch} x {j.accum}" if j.micro_batch else "-"
        fits = {None: "?", True: "yes", False: "NO"}
        verdict = "yes" if j.fits_memory is not False and j.fits_time is not False else "NO"
        if j.fits_memory is None and j.fits_time is None:
            verdict = "?"
        params = f"{j.params / 1e6:.1f}M" if j.params else "-"
        lines.append(f"{j.role:<9} {j.artifact[:44]:<44} {params:>8} "
                     f"{shape:>22} {num(j.mem_bytes and j.mem_bytes / GiB, '.1f'):>8} "
                     f"{num(j.flops and j.flops / 1e15, '.3g'):>10} {num(j.gpu_hours, '.1f'):>8} "
                     f"{num(j.disk_bytes and j.disk_bytes / 1e9, '.2f'):>8}  {verdict} (mem {fits[j.fits_memory]}, "
                     f"time {fits[j.fits_time]}){'  -> ' + j.advice if j.advice else ''}")
    return "\n".join(lines)


def check_fits(sweep, mfu: float = 0.4) -> None:
    """Raise a UserError naming the first job of `sweep` that cannot fit its launcher block, and the fix.

    Silent when `launcher.gpu_type` is unset or unknown (nothing to check against)."""
    from digit_bench.errors import UserError

    for j in plan_sweep(sweep, mfu):
        if j.fits_memory is False or j.fits_time is False:
            what = "memory" if j.fits_memory is False else "time limit"
            raise UserError(f"{j.role} job {j.artifact} does not fit its launcher block ({what}): {j.advice}; "
                            f"`digit-bench plan` shows every job")
