"""The one training loop every trained model uses (GPTs, VQGAN, SSL backbones, LDM parts, the local FD classifier).

`fit(model, loss_fn, batch_fn, cfg, work_dir, seed=...)` trains `model` in place for `cfg.steps` updates:
- one AdamW per parameter group (decoupled weight decay on tensors with >= 2 dims, i.e. weight matrices and
  embedding tables; none on biases and norm gains), each with a LambdaLR of linear warmup then inverse_sqrt (fairseq,
  paper §2.3) | cosine | constant;
- gradient accumulation over the micro-batches `batch_fn` returns for a step, clipping, optional EMA of the weights;
- `work_dir/ckpt.pt` every `cfg.checkpoint_every` updates and at the end, `work_dir/log.jsonl` one line per update,
  a tqdm bar on stderr; a non-finite loss or gradient raises `TrainingDiverged` and leaves the last good ckpt.pt.

Exact resume: `batch_fn` is a pure function of (seed, step), and the loop reseeds torch's global generator (dropout,
label dropout) from (seed, step, rank) before every update, so randomness never depends on where a run started.
With model, EMA, optimizer and scheduler states restored from ckpt.pt, a killed-and-resumed run ends bit-identical
(on CPU) to an uninterrupted one; this is why ckpt.pt stores no RNG states. On resume log.jsonl is cut back to the
checkpoint's step. SIGTERM/SIGUSR2 (SLURM pre-emption or time limit) make fit checkpoint after the running update
and then hand the signal to the previous handler (submitit requeues the job), so a requeue loses at most one update.

Data parallel when torch.distributed is initialized (gloo on CPU, nccl on GPU): rank 0's weights are broadcast at
the start, each rank backpropagates its own micro-batches, and each group's gradients are averaged with one
all_reduce before clipping. This is DDP's arithmetic without its reducer, which assumes one backward per forward and
so does not fit multi-group (GAN) losses. Rank 0 writes the files.

The contracts every recipe shares are written here once: `shard` (which positions of a global batch a rank's
micro-batches hold), `step_seed` / `step_rng` (a step's randomness as a pure function of (seed, step)),
`seeded_init` (a model's random init from a seed, leaving the caller's generator alone) and `device_for` (the one
device picker).

Ideas from: karpathy/nanoGPT train.py (MIT; loop, weight-decay split, MFU bookkeeping), facebookresearch/fairseq
(MIT; inverse_sqrt schedule), facebookresearch/DiT train.py (EMA update).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR
from tqdm import tqdm

from digit_bench.config import TrainConfig
from digit_bench.errors import UserError
from digit_bench.weights import load_weights

LossFn = Callable[[nn.Module, Any], tuple[dict[str, Tensor], dict[str, float]]]
BatchFn = Callable[[int, int, int], Any]


class TrainingDiverged(UserError):
    """The loss or gradient became NaN/inf; the message names the step, and the last good ckpt.pt is kept."""


def lr_multiplier(cfg: TrainConfig) -> Callable[[int], float]:
    """Factor on cfg.lr for the update that follows `step` completed ones (LambdaLR's argument).

    Linear warmup (step + 1) / warmup_steps, reaching 1 at update `warmup_steps`, then inverse_sqrt
    sqrt(warmup_steps / step) (fairseq), cosine decay towards 0 at cfg.steps, or constant 1.
    """
    warmup = cfg.warmup_steps

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "inverse_sqrt":
            return math.sqrt(max(warmup, 1) / max(step, 1))
        if cfg.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, cfg.steps - warmup)))
        return 1.0

    return multiplier


def save_checkpoint(path: Path, obj: dict) -> None:
    """torch.save to a temporary file beside `path`, fsync, then os.replace: a reader never sees a half-written file,
    a node crash never leaves an empty one, and a failed write (no space) leaves the previous checkpoint and no
    temporary file."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _PreemptionSignals:
    """SIGTERM / SIGUSR2 (SLURM pre-emption, time limit, `scontrol requeue`; submitit asks for USR2 before the time
    limit) received during `fit`: remembered by a handler, acted on after the current update. `fit` then saves a
    checkpoint and passes the signals on, in the order they came, to the handlers that were there before (submitit's:
    `checkpoint()`, requeue, exit; none: the default action), so a requeued job loses at most the update that was
    running. If those handlers return (submitit bypasses SIGTERM, and does not requeue from a rank > 0), fit goes on
    and keeps remembering signals."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR2)

    def __init__(self) -> None:
        self.received: list[int] = []
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> "_PreemptionSignals":
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in self.SIGNALS:
                self.previous[sig] = signal.signal(sig, self._remember)
        return self

    def _remember(self, signum: int, frame: Any) -> None:
        if signum not in self.received:  # two pending signals run their handlers back to back: keep both
            self.received.append(signum)

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}

    def pass_on(self) -> None:
        """Deliver the remembered signals to the handlers they had before fit, then remember again."""
        received, previous = self.received, dict(self.previous)
        self.received = []
        self.__exit__()
        for signum in received:
            handler = previous.get(signum, signal.SIG_DFL)
            if callable(handler):
                handler(signum, None)
            elif handler in (signal.SIG_DFL, None):
                os.kill(os.getpid(), signum)
        self.__enter__()

    def close(self) -> None:
        """Restore the earlier handlers; signals remembered but not yet acted on go to them."""
        self.__exit__()
        received, self.received = self.received, []
        for signum in received:
            os.kill(os.getpid(), signum)


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint onto the CPU, tensors and plain containers only (weights.load_weights); a truncated one is
    a UserError saying how to recover."""
    return load_weights(path, "checkpoint", fix="if it is inside a published artifact run `digit-bench verify --repair`;"
                        " in a .work directory delete it to restart that training")


def device_for(precision: str = "auto") -> torch.device:
    """The device of this task: CUDA (its LOCAL_RANK's GPU, else the current one) if there is one, else the CPU;
    bf16 asked on a GPU without bf16 is a UserError."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise UserError("train precision bf16 asked on a GPU without bf16 support; set precision: fp32 or auto")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))


def shard(batch: int, accum: int, rank: int, world: int) -> list[slice]:
    """Positions in a global batch of `batch` items of the `accum` micro-batches of `rank` of `world`.

    Rank r takes the r-th contiguous block of batch / world items and splits it into `accum` consecutive
    micro-batches, so every item lands on exactly one rank and one micro-batch, and any world x accum factorisation
    of one global batch trains on the same items. Draw the whole global batch (indices, noise) from `step_rng`, then
    slice it: a sample's randomness then never depends on world or accum.
    """
    micro = batch // (world * accum) if world > 0 and accum > 0 else 0
    if micro < 1 or micro * world * accum != batch or not 0 <= rank < world:
        raise UserError(f"a global batch of {batch} does not split into {world} ranks x {accum} micro-batches (rank "
                        f"{rank}); make train.batch_size a multiple of world x micro_batch_size")
    start = rank * accum * micro
    return [slice(start + i * micro, start + (i + 1) * micro) for i in range(accum)]


def step_seed(seed: int, *keys: int) -> int:
    """A 32-bit seed that is a pure function of (seed, *keys), e.g. (seed, step) or (seed, step, rank)."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])


def step_rng(seed: int, step: int) -> np.random.Generator:
    """The numpy generator of one training step's global batch: a pure function of (seed, step), which makes resume
    exact and the batch independent of world and accum (torch generators: `manual_seed(step_seed(seed, step))`)."""
    return np.random.default_rng([seed, step])


@contextlib.contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Seed torch's global generator for a model's random init (torch, timm and diffusers init from it), then give
    the caller its generator back: `with seeded_init(seed): model = Net()`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def fit(model: nn.Module, loss_fn: LossFn, batch_fn: BatchFn, cfg: TrainConfig, work_dir: Path, *, seed: int,
        param_groups: Optional[dict[str, list[nn.Parameter]]] = None,
        after_step: Optional[Callable[[nn.Module, int], None]] = None, desc: str = "train") -> dict:
    """Train `model` in place for cfg.steps updates, resuming from work_dir/ckpt.pt when it exists.

    Args:
        loss_fn: (model, micro_batch) -> ({group: loss}, {name: float to log}); one loss per parameter group.
        batch_fn: (step, rank, world_size) -> list of `cfg.accumulation(world_size)[1]` micro-batches of this rank
            (tensors, or tuples/lists/dicts of tensors, moved to the device here); must be a pure function of
            (seed, step) for exact resume. `shard(batch_size, accum, rank, world)` splits a global batch for it.
        cfg: optimizer, schedule, accumulation, clipping, EMA, checkpoint and precision settings.
        work_dir: holds ckpt.pt and log.jsonl; created if missing.
        seed: seeds each update's dropout randomness together with the step and rank.
        param_groups: one AdamW + scheduler per name; None = {"main": every trainable parameter}.
        after_step: called as after_step(model, completed_updates) after each update (e.g. an EMA teacher).
        desc: progress-bar label.

    Returns:
        steps, start_step, losses (the last update's "loss/<group>" values and loss_fn's logged scalars, averaged
        over micro-batches and ranks), wall_s, items_per_s, world_size x micro_batch_size x grad_accum (= batch_size),
        tokens_per_s (None unless micro-batches start with an integer tensor of token ids).
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path = work_dir / "ckpt.pt", work_dir / "log.jsonl"
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    micro, accum = cfg.accumulation(world)
    device = device_for(cfg.precision)
    model.to(device)

    groups = {name: [p for p in params if p.requires_grad]
              for name, params in (param_groups or {"main": list(model.parameters())}).items()}
    optimizers = {name: _adamw(params, cfg, device) for name, params in groups.items()}
    schedulers = {name: LambdaLR(opt, lr_multiplier(cfg)) for name, opt in optimizers.items()}
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()} if cfg.ema > 0 else None

    step = 0
    if ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        model.load_state_dict(ckpt["model"])
        for name in groups:
            optimizers[name].load_state_dict(ckpt["optimizer"][name])
            schedulers[name].load_state_dict(ckpt["scheduler"][name])
        if ema is not None:
            ema = {k: v.to(device) for k, v in ckpt["ema"].items()}
        step = ckpt["step"]
    elif distributed:
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, src=0)
    if rank == 0:  # lines of updates after the checkpoint (all of them without one) are written again below
        _truncate_log(log_path, step)

    def checkpoint() -> None:
        if rank == 0:
            save_checkpoint(ckpt_path, {
                "model": model.state_dict(),
                **({"ema": ema} if ema is not None else {}),
                "optimizer": {name: opt.state_dict() for name, opt in optimizers.items()},
                "scheduler": {name: sched.state_dict() for name, sched in schedulers.items()},
                "step": step, "seed": seed, "config": dataclasses.asdict(cfg),
            })

    bf16 = device.type == "cuda" and cfg.precision != "fp32"
    start_step, tokens_per_item, losses = step, None, {}
    log_file = open(log_path, "a") if rank == 0 else None
    board = tensorboard_writer(work_dir) if rank == 0 else None
    # rank 0 only; leaving `disable` unset there lets TQDM_DISABLE=1 silence the bar (tests)
    bar = tqdm(total=cfg.steps, initial=step, desc=desc, file=sys.stderr, dynamic_ncols=True,
               **({} if rank == 0 else {"disable": True}))
    model.train()
    t_start = time.perf_counter()
    signals = _PreemptionSignals()
    try:
        signals.__enter__()
        while step < cfg.steps:
            t_step = time.perf_counter()
            torch.manual_seed(step_seed(seed, step, rank))
            micro_batches = batch_fn(step, rank, world)
            if len(micro_batches) != accum:
                raise UserError(f"batch_fn gave {len(micro_batches)} micro-batches for step {step}; batch_size "
                                f"{cfg.batch_size} on {world} ranks x micro_batch_size {micro} needs {accum}")
            if tokens_per_item is None:
                tokens_per_item = _tokens_per_item(micro_batches[0])
            for opt in optimizers.values():
                opt.zero_grad(set_to_none=True)
            sums: dict[str, float] = {}
            for micro_batch in micro_batches:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    group_losses, logs = loss_fn(model, _to_device(micro_batch, device))
                if set(group_losses) != set(groups):
                    raise UserError(f"loss_fn returned losses {sorted(group_losses)} but the parameter groups are "
                                    f"{sorted(groups)}; return one loss per group")
                _accumulate_grads(group_losses, groups, scale=1.0 / len(micro_batches))
                for name, value in [*((f"loss/{k}", v.item()) for k, v in group_losses.items()), *logs.items()]:
                    sums[name] = sums.get(name, 0.0) + float(value) / len(micro_batches)
            losses = _mean_over_ranks(sums, device, world) if distributed else sums
            norms = {}
            for name, params in groups.items():
                for p in params:  # a parameter its loss never reached: zero, so every rank reduces the same tensors
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                if distributed:
                    _average_over_ranks([p.grad for p in params], world)
                max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
                norms[f"grad_norm/{name}"] = nn.utils.clip_grad_norm_(params, max_norm).item()
            checked = {**{k: v for k, v in losses.items() if k.startswith("loss/")}, **norms}
            if not all(math.isfinite(v) for v in checked.values()):
                raise TrainingDiverged(f"{desc}: non-finite {checked} at step {step + 1}, not applied; {ckpt_path} "
                                       f"holds the last good checkpoint; lower train.lr or raise train.warmup_steps")
            record = {"step": step + 1, **norms}
            for name in groups:
                record[f"lr/{name}"] = schedulers[name].get_last_lr()[0]
                optimizers[name].step()
                schedulers[name].step()
            step += 1
            if ema is not None:
                _update_ema(ema, model, cfg.ema)
            if after_step is not None:
                after_step(model, step)
            record.update(losses, items_per_s=cfg.batch_size / (time.perf_counter() - t_step))
            if log_file is not None:
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()
            if board is not None:
                for name, value in record.items():
                    if name != "step":
                        board.add_scalar(name, value, record["step"])
            bar.update(1)
            bar.set_postfix({k: f"{v:.4g}" for k, v in losses.items() if k.startswith("loss/")}, refresh=False)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                checkpoint()
            elif signals.received:
                checkpoint()
            if signals.received:
                bar.write(f"{desc}: signal {'+'.join(str(int(s)) for s in signals.received)} at update {step}: "
                          "checkpoint saved, passing it on", file=sys.stderr)
                signals.pass_on()
    finally:
        signals.close()
        bar.close()
        if log_file is not None:
            log_file.close()
        if board is not None:
            board.close()
    if distributed:  # other ranks may read the final ckpt.pt (EMA weights) once fit returns: wait until it is written
        dist.barrier()
    wall_s = time.perf_counter() - t_start
    items_per_s = cfg.batch_size * (step - start_step) / wall_s if step > start_step else None
    return {
        "steps": step, "start_step": start_step, "losses": losses, "wall_s": wall_s, "items_per_s": items_per_s,
        "world_size": world, "micro_batch_size": micro, "grad_accum": accum,
        "tokens_per_s": items_per_s * tokens_per_item if items_per_s and tokens_per_item else None,
    }


def _adamw(params: list[nn.Parameter], cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with decoupled weight decay on >= 2-dim tensors (matrices, embeddings) and none on biases/norms."""
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=cfg.lr, betas=tuple(cfg.betas), fused=device.type == "cuda")


def _accumulate_grads(losses: dict[str, Tensor], groups: dict[str, list[nn.Parameter]], scale: float) -> None:
    """Add d(scale * loss_g)/d(params_g) to .grad for each group g, and nothing to other groups' parameters.

    A GAN's generator loss also reaches the discriminator's weights; `backward(inputs=...)` accumulates each loss's
    gradient only into its own group, so the groups stay apart.
    """
    names = list(losses)
    for i, name in enumerate(names):
        (losses[name] * scale).backward(inputs=groups[name], retain_graph=i < len(names) - 1)


def _average_over_ranks(grads: list[Tensor], world: int) -> None:
    """Average gradients over ranks in place with one all_reduce of their concatenation."""
    flat = torch.cat([g.flatten() for g in grads])  # (sum of numels,)
    dist.all_reduce(flat)
    flat /= world
    for g, chunk in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(chunk.view_as(g))


def _mean_over_ranks(values: dict[str, float], device: torch.device, world: int) -> dict[str, float]:
    """Average logged scalars over ranks (every rank then agrees on whether training diverged)."""
    names = sorted(values)
    t = torch.tensor([values[k] for k in names], dtype=torch.float64, device=device)  # (n,)
    dist.all_reduce(t)
    return {k: v / world for k, v in zip(names, t.tolist())}


@torch.no_grad()
def _update_ema(ema: dict[str, Tensor], model: nn.Module, decay: float) -> None:
    """Step the EMA weights towards the model's (floating tensors); copy integer buffers."""
    for name, value in model.state_dict().items():
        if value.is_floating_point():
            ema[name].lerp_(value, 1.0 - decay)
        else:
            ema[name].copy_(value)


def _to_device(batch: Any, device: torch.device) -> Any:
    """Move the tensors of a micro-batch (a tensor, or a tuple/list/dict of them) to `device`."""
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def _tokens_per_item(micro_batch: Any) -> Optional[int]:
    """Tokens per sequence when the micro-batch is (or starts with) an integer (B, T) tensor of token ids."""
    first = micro_batch
    while isinstance(first, (tuple, list, dict)) and len(first):
        first = next(iter(first.values())) if isinstance(first, dict) else first[0]
    if isinstance(first, Tensor) and first.dim() == 2 and not first.is_floating_point():
        return first.shape[1]
    return None


def tensorboard_writer(work_dir: Path):
    """A TensorBoard SummaryWriter under $DIGIT_BENCH_TENSORBOARD/<artifact id> when that variable is set, else None.
    log.jsonl stays the record; TensorBoard is a live view of it (`tensorboard --logdir $DIGIT_BENCH_TENSORBOARD`)."""
    root = os.environ.get("DIGIT_BENCH_TENSORBOARD")
    if not root:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("DIGIT_BENCH_TENSORBOARD is set but TensorBoard is not installed; "
                        "pip install 'digit_bench[tensorboard]' or unset the variable") from None
    return SummaryWriter(str(Path(root) / Path(work_dir).name.removesuffix(".work")))


def _truncate_log(log_path: Path, step: int) -> None:
    """Keep the log lines of updates 1..`step` (once each); drop later ones, written by a run that died before its
    next checkpoint, and any line a crash cut off or garbled."""
    if not log_path.exists():
        return
    kept: dict[int, str] = {}
    for line in log_path.read_text(errors="replace").split("\n")[:-1]:  # a line cut off by a crash has no newline
        try:
            s = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            continue
        if isinstance(s, int) and 1 <= s <= step:
            kept[s] = line
    tmp = log_path.with_name(f"{log_path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(kept[s] + "\n" for s in sorted(kept)))
    os.replace(tmp, log_path)
