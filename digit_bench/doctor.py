"""Device check: the paper path's heavy pieces, timed on one device, as one table and one JSON file.

    python -m digit_bench.doctor --device cuda --random-weights --out results/gpu/<gpu>.json   (<= 8 min on an H200)
    python -m digit_bench.doctor --device cpu --tiny --random-weights                           (<= 2 min on 2 cores)

Sections (each in its own try/except: a failure is recorded in the JSON and the next section runs):
- features   DINOv2 ViT-B/14-reg4 (timm architecture, 224 px, layer -3) under bf16 autocast: images/s, TFLOP/s
             (counted by torch.utils.flop_counter) and the ratio to the device's bf16 peak (`plan.gpu_spec`).
- kmeans     one faiss K-Means iteration (K = 8192 on 2M x 768 random features; faiss-gpu when it sees a GPU) and
             the nearest-centroid assignment in GFLOP/s against a same-run torch.matmul of the same shape.
- gpt_train  digit-b and digit-l training steps at the largest micro-batch `plan.max_micro_batch` predicts fits:
             tokens/s, MFU, measured peak memory against the prediction, and the ops that dominate the step.
- kv_cache   sampling 256 tokens at batch 256 with and without the KV cache (digit-b).
- fid        torch-fidelity Inception features of 2 x 2500 synthetic images on the device and on the CPU (TF32
             off): |FID_device - FID_cpu| / max(1, FID_cpu) <= 1e-3.
- ddp        training.fit for 2 updates under torch.distributed: NCCL on GPUs (2 ranks if 2 GPUs), gloo on the CPU.
- paper_e2e  the real stages of the `paper` profile (`digit_bench.sweep --profile paper --set ...`) on a synthetic
             ImageNet-layout folder made here, with tiny step counts.

Weights: nothing is downloaded. The DiGIT backbone and the Inception network have no weights on an offline machine,
so those sections need `--random-weights` (random-init architectures, reported as such in every row they touch);
Inception weights are used when `--inception-weights FILE` or $TORCH_HOME/hub/checkpoints has them. The paper
micro-run gets its random-init DINOv2 and Inception as weight files passed through `backbone.weights` and
`eval.weights`, so the stages load them with their real code. `--tiny` shrinks every size so that the whole check
runs on a CPU (gpt-micro/gpt-mini stand in for digit-b/digit-l, batch 2 for 256, K = 256 on 20k points, ...); the
table has the same rows either way, and each row's note says what ran.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from digit_bench.errors import UserError
from digit_bench.plan import gpu_spec

SECTIONS = ("features", "kmeans", "gpt_train", "kv_cache", "fid", "ddp", "paper_e2e")
# Seconds each section needs at least (full size on one H200); the time guard skips a section that cannot finish.
MIN_SECONDS = {"features": 20, "kmeans": 60, "gpt_train": 60, "kv_cache": 30, "fid": 60, "ddp": 20, "paper_e2e": 60}
FEATURES_BACKBONE = "vit_base_patch14_reg4_dinov2"  # timm architecture of the paper's DINOv2 ViT-B/14-reg4


class Check:
    """Shared state of one doctor run: device, sizes, deadline, and the rows each section adds."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.device = torch.device(args.device)
        self.tiny = args.tiny
        self.deadline = time.monotonic() + args.time_budget_s
        cuda = self.device.type == "cuda"
        self.name = torch.cuda.get_device_name(self.device) if cuda else platform.processor() or "cpu"
        self.spec = gpu_spec(self.name) if self.device.type == "cuda" else None
        self.sections: dict[str, dict] = {}

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def timed(self, fn: Callable[[], object], repeats: int = 1, warmup: int = 1) -> float:
        """Mean seconds of `fn()` over `repeats` calls after `warmup` untimed ones."""
        for _ in range(warmup):
            fn()
        self.sync()
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        self.sync()
        return (time.perf_counter() - t0) / repeats

    def peak_ratio(self, tflops: float) -> tuple[Optional[float], str]:
        """(achieved / bf16 peak, note); None with the reason when the device has no known peak."""
        if self.spec is None:
            return None, f"no bf16 peak known for {self.name!r}: ratio omitted"
        return tflops / self.spec.bf16_tflops, f"peak {self.spec.bf16_tflops:g} TFLOP/s ({self.spec.name})"

    def random_weights(self, what: str) -> None:
        if not self.args.random_weights:
            raise UserError(f"{what} has no weights on an offline machine and this check downloads nothing; pass "
                            f"--random-weights to time its random-init architecture")


def row(metric: str, value, unit: str = "", ratio: Optional[float] = None, note: str = "") -> dict:
    return {"metric": metric, "value": value, "unit": unit, "ratio": ratio, "note": note}


# ------------------------------------------------------------------------------------------------------- sections
def features(c: Check) -> list[dict]:
    import timm
    from torch.utils.flop_counter import FlopCounterMode

    from digit_bench.backbones import FeatureBackbone

    c.random_weights(f"the DiGIT backbone ({FEATURES_BACKBONE})")
    batch, repeats = (2, 1) if c.tiny else (256, 5)
    model = timm.create_model(FEATURES_BACKBONE, pretrained=False, img_size=224, num_classes=0)
    backbone = FeatureBackbone.from_timm(model, name="dinov2_vitb14_reg4", layer=-3).to(c.device)
    images = torch.randint(0, 256, (batch, 256, 256, 3), dtype=torch.uint8, device=c.device)  # (B, 256, 256, 3)

    @torch.no_grad()
    def step():
        with torch.autocast(c.device.type, dtype=torch.bfloat16):
            return backbone(images)  # (B, 256, 768)

    with FlopCounterMode(display=False) as counter:
        feats = step()
    flops = counter.get_total_flops()
    seconds = c.timed(step, repeats)
    tflops = flops / seconds / 1e12
    ratio, note = c.peak_ratio(tflops)
    rows = [row("images_per_s", batch / seconds, "img/s", note=f"batch {batch}, 224 px, output {tuple(feats.shape)}"),
            row("tflops", tflops, "TFLOP/s", ratio, note + "; random-init weights")]
    rows.append(row("profile", None, note="top ops: " + top_ops(c, step)))
    return rows


def kmeans(c: Check) -> list[dict]:
    import faiss

    n, k, d = (20_000, 256, 768) if c.tiny else (2_000_000, 8192, 768)
    gpu = c.device.type == "cuda" and hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0
    x = np.random.default_rng(0).standard_normal((n, d), dtype=np.float32)  # (N, D)
    km = faiss.Kmeans(d, k, niter=1, seed=1234, gpu=gpu, max_points_per_centroid=n // k + 1, verbose=False)
    t0 = time.perf_counter()
    km.train(x)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    km.index.search(x, 1)
    assign_s = time.perf_counter() - t0
    flops = 2.0 * n * k * d
    xt = torch.from_numpy(x).to(c.device)  # (N, D)
    ct = torch.from_numpy(km.centroids).to(c.device).T.contiguous()  # (D, K)
    chunk = 65536

    def matmul():
        for start in range(0, n, chunk):
            xt[start:start + chunk] @ ct  # (chunk, K)

    mm_s = c.timed(matmul)
    backend = "faiss-gpu" if gpu else "faiss-cpu" + (" (no GPU faiss installed)" if c.device.type == "cuda" else "")
    return [row("iteration_s", fit_s, "s", note=f"{backend}, K={k}, {n}x{d}, 1 iteration incl. index build"),
            row("assign_gflops", flops / assign_s / 1e9, "GFLOP/s", (flops / assign_s) / (flops / mm_s),
                f"vs same-run torch.matmul fp32 ({flops / mm_s / 1e9:.1f} GFLOP/s, {chunk}-row chunks)")]


def gpt_train(c: Check) -> list[dict]:
    from digit_bench.config import TrainConfig
    from digit_bench.models.gpt import GPT, gpt_config
    from digit_bench.plan import GiB, gpt_train_flops, max_micro_batch, saved_activation_bytes, train_memory
    from digit_bench.training import _adamw

    rows = []
    cuda = c.device.type == "cuda"
    precision = "bf16" if cuda else "fp32"
    for name, tiny_size in (("digit-b", "gpt-micro"), ("digit-l", "gpt-mini")):
        size = tiny_size if c.tiny else name  # rows keep the paper names; --tiny says which model stands in
        cfg = gpt_config(size)
        if cuda:
            torch.cuda.empty_cache()
            free, total = torch.cuda.mem_get_info(c.device)
            budget = min(free, 0.92 * total)
        else:
            budget = 0.25 * GiB
        planned = min(max_micro_batch(cfg, budget, precision=precision, device_type=c.device.type), 1024)
        micro = planned - planned % 8 if planned >= 16 else planned
        if micro == 0:
            rows.append(row(f"{name}.micro_batch", 0, note=f"nothing fits {budget / GiB:.1f} GiB"))
            continue
        torch.manual_seed(0)
        model = GPT(cfg).to(c.device).train()
        opt = _adamw(list(model.parameters()), TrainConfig(), c.device)
        idx = torch.randint(0, cfg.vocab_size, (micro, cfg.seq_len), device=c.device)  # (B, T)

        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast(c.device.type, dtype=torch.bfloat16, enabled=cuda):
                loss = model.loss(idx)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()

        try:
            step()  # AdamW state exists from here on, as in a long run
            if cuda:
                torch.cuda.reset_peak_memory_stats(c.device)
            seconds = c.timed(step, repeats=1 if c.tiny else 3)
        except torch.cuda.OutOfMemoryError:  # the memory model under-predicted: the finding, not a crash
            predicted = train_memory(cfg, micro, precision=precision, device_type=c.device.type).total
            rows.append(row(f"{name}.micro_batch", micro, "seq", note=f"OUT OF MEMORY at the planned micro-batch "
                            f"(predicted {predicted / GiB:.2f} GiB of {budget / GiB:.1f} GiB)"))
            model = opt = idx = None  # free the device memory before the next size
            continue
        flops = gpt_train_flops(cfg) * micro
        tflops = flops / seconds / 1e12
        ratio, note = c.peak_ratio(tflops)
        plan = train_memory(cfg, micro, precision=precision, device_type=c.device.type)
        predicted = plan.total
        if cuda:
            measured, how = torch.cuda.max_memory_allocated(c.device), "max_memory_allocated"
        else:  # no allocator peak on the CPU: exact state + the activations autograd saved, counted
            with torch.autocast("cpu", enabled=False):
                saved = saved_activation_bytes(model, lambda: model.loss(idx))
            measured = plan.weights + plan.grads + plan.optimizer + saved + plan.loss_peak
            how = "CPU: state + counted saved activations + loss peak"
        rows += [row(f"{name}.micro_batch", micro, "seq", note=f"{size} ({cfg.n_layer}L/{cfg.n_embd}), planned "
                     f"{planned} for {budget / GiB:.1f} GiB, {precision}"),
                 row(f"{name}.tokens_per_s", micro * cfg.seq_len / seconds, "tok/s", note=f"{seconds:.3f} s/step"),
                 row(f"{name}.tflops", tflops, "TFLOP/s", ratio, "ratio = MFU; " + note),
                 row(f"{name}.peak_mem", measured / GiB, "GiB", measured / predicted,
                     f"ratio = measured / predicted {predicted / GiB:.2f} GiB ({how})")]
        rows.append(row(f"{name}.profile", None, note="top ops: " + top_ops(c, step)))
        model = opt = idx = None  # free the device memory before the next size
    return rows


def kv_cache(c: Check) -> list[dict]:
    from digit_bench.models.gpt import GPT, gpt_config

    size, batch = ("gpt-nano", 8) if c.tiny else ("digit-b", 256)
    cfg = gpt_config(size)
    torch.manual_seed(0)
    model = GPT(cfg).to(c.device).eval()
    if c.device.type == "cuda":
        model = model.to(torch.bfloat16)
    seeds = list(range(batch))
    cached = c.timed(lambda: model.generate(batch, seeds=seeds, top_k=200), warmup=1)
    uncached = c.timed(lambda: model.generate(batch, seeds=seeds, top_k=200, use_cache=False), warmup=0)
    same = torch.equal(model.generate(2, seeds=[0, 1], top_k=200), model.generate(2, seeds=[0, 1], top_k=200,
                                                                                  use_cache=False))
    return [row("cached_s", cached, "s", note=f"{size}, batch {batch}, {cfg.seq_len} tokens, "
                f"{batch * cfg.seq_len / cached:.0f} tok/s, {next(model.parameters()).dtype}"),
            row("uncached_s", uncached, "s", uncached / cached, f"ratio = speed-up of the cache; "
                f"2 samples identical with and without cache: {same}")]


def fid(c: Check) -> list[dict]:
    from torch_fidelity.metric_fid import fid_features_to_statistics

    from digit_bench.eval.fidelity import (INCEPTION_FILE, extract_features, frechet_distance, inception_extractor,
                                           random_inception_extractor)

    n, side = (16, 64) if c.tiny else (2500, 256)
    hub = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    if c.args.inception_weights or hub.is_file():
        extractor, weights_note = inception_extractor(c.args.inception_weights), "pretrained Inception weights"
    else:
        c.random_weights(f"the Inception network ({INCEPTION_FILE} is not in {hub.parent})")
        extractor = random_inception_extractor(Path(tempfile.mkdtemp(prefix="doctor-inception-")) / "random.pth")
        weights_note = "random-init Inception (FeatureExtractorInceptionV3 architecture)"
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8)  # (N, S, S, 3) noise
    b = np.clip(a.astype(np.int16) // 2 + 64 + rng.integers(-20, 21, a.shape), 0, 255).astype(np.uint8)  # (N, S, S, 3)
    cudnn_tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # fp32 convolutions on both sides: compare devices, not precisions
    try:
        values, seconds = {}, {}
        for where in dict.fromkeys([c.device.type, "cpu"]):
            t0 = time.perf_counter()
            stats = [fid_features_to_statistics(extract_features(x, extractor, 100, cuda=where == "cuda")[
                extractor.feature_layer]) for x in (a, b)]
            seconds[where] = time.perf_counter() - t0
            values[where] = frechet_distance(*stats)
    finally:
        torch.backends.cudnn.allow_tf32 = cudnn_tf32
    dev, cpu = values[c.device.type], values["cpu"]
    rel = abs(dev - cpu) / max(1.0, abs(cpu))
    return [row("fid_device", dev, "", note=f"{2 * n} synthetic images at {side} px, {weights_note}, "
                f"{seconds[c.device.type]:.1f} s"),
            row("fid_cpu", cpu, "", note=f"{seconds['cpu']:.1f} s"),
            row("fid_rel_diff", rel, "", note=f"|device - cpu| / max(1, cpu); pass <= 1e-3: {rel <= 1e-3}")]


def _ddp_worker(rank: int, world: int, backend: str, rdzv: str, size: str, batch: int, out: str) -> None:
    import torch.distributed as dist

    from digit_bench.config import TrainConfig
    from digit_bench.models.gpt import GPT, gpt_config
    from digit_bench.training import fit

    if backend == "nccl":
        torch.cuda.set_device(rank)
        os.environ["LOCAL_RANK"] = str(rank)
    dist.init_process_group(backend, init_method=f"file://{rdzv}", rank=rank, world_size=world)
    try:
        cfg = gpt_config(size)
        torch.manual_seed(0)
        model = GPT(cfg)
        dev = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")

        def batch_fn(step: int, r: int, w: int):
            g = torch.Generator().manual_seed(step)
            idx = torch.randint(0, cfg.vocab_size, (batch, cfg.seq_len), generator=g)  # (B, T), same on every rank
            return [idx.chunk(w)[r].to(dev)]  # (B / w, T)

        def loss_fn(m, idx):
            loss = m.loss(idx)
            return {"main": loss}, {"loss": loss.item()}

        tcfg = TrainConfig(steps=2, batch_size=batch, warmup_steps=1, checkpoint_every=10_000, lr=1e-4)
        t0 = time.perf_counter()
        stats = fit(model, loss_fn, batch_fn, tcfg, Path(out) / f"work{rank}", seed=0, desc="ddp")
        if rank == 0:
            Path(out, "stats.json").write_text(json.dumps({**{k: v for k, v in stats.items()
                                                             if isinstance(v, (int, float, dict))},
                                                          "wall_s": time.perf_counter() - t0}))
    finally:
        dist.destroy_process_group()


def ddp(c: Check) -> list[dict]:
    import torch.multiprocessing as mp

    cuda = c.device.type == "cuda"
    world = min(2, torch.cuda.device_count()) if cuda else 1
    backend = "nccl" if cuda else "gloo"
    size, batch = ("gpt-nano", 8) if c.tiny else ("digit-b", 32)
    out = tempfile.mkdtemp(prefix="doctor-ddp-")
    rdzv = os.path.join(out, "rendezvous")
    mp.spawn(_ddp_worker, args=(world, backend, rdzv, size, batch, out), nprocs=world, join=True)
    stats = json.loads(Path(out, "stats.json").read_text())
    loss = stats["losses"].get("loss/main")
    return [row("world_size", world, "ranks", note=f"{backend}, {size}, global batch {batch}, 2 updates through "
                "training.fit (weights broadcast, all_reduce of gradients)"),
            row("loss", loss, "", note=f"finite: {loss is not None and math.isfinite(loss)}; "
                f"{stats['wall_s']:.1f} s incl. checkpoint")]


def synthetic_imagenet(root: Path, classes: int, train_per_class: int, val_per_class: int, seed: int = 0) -> Path:
    """An ImageNet-layout folder: root/{train,val}/<wnid>/<name>.JPEG, JPEGs of random size around 256 px."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                w, h = (int(v) for v in rng.integers(240, 340, 2))
                im = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(0, 256, 3)))
                draw = ImageDraw.Draw(im)
                for _ in range(4):
                    x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
                    box = (x0, y0, x0 + int(rng.integers(20, w // 2)), y0 + int(rng.integers(20, h // 2)))
                    draw.ellipse(box, fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
                im.save(folder / f"{split}_{c}_{i}.JPEG", quality=90)
    return root


def micro_run_sets(tiny: bool, data: Path, backbone_weights: Path, inception_weights: Path, num_val: int) -> dict:
    """The paper profile's `--set` overrides for the device check's micro-run: every step count 2 or less."""
    sets = {
        "data.root": data, "data.num_val": 6, "backbone.weights": backbone_weights,
        "backbone.batch_size": 16, "features.fraction": 1.0, "tokenizer.k": 16, "tokenizer.niter": 2,
        "train.steps": 2, "train.batch_size": 8, "train.warmup_steps": 1, "train.checkpoint_every": 2,
        "sample.num_samples": 6, "sample.batch_size": 6,  # precision/recall need > k + 1 = 4
        "vqgan.weights": "null", "vqgan.train.steps": 2, "vqgan.train.batch_size": 2, "vqgan.disc_start": 1,
        "vqgan.train.checkpoint_every": 2,
        "stage2.train.steps": 2, "stage2.train.batch_size": 8, "stage2.train.warmup_steps": 1,
        "stage2.train.checkpoint_every": 2,
        "eval.weights": inception_weights, "eval.num_reference": num_val, "eval.bootstrap": 2,
        "eval.kid_subset_size": 4, "eval.local_train.steps": 2, "eval.local_train.batch_size": 8,
        "probe.max_iter": 5, "probe.steps": 2, "probe.batch_size": 8, "stability.num_images": 2,
        "stability.snrs_db": "[20]",
        # one device: the profile's 4-GPU DDP shape (4 x micro-batch 128) does not apply to this micro-run
        "launcher.gpus_per_node": 1, "launcher.tasks_per_node": 1, "train.micro_batch_size": "null",
        "stage2.train.micro_batch_size": "null",
    }
    if tiny:  # CPU: the paper's layout and paths, narrower networks
        sets.update({"gpt.size": "gpt-nano", "stage2.size": "gpt-nano", "vqgan.ch": 32, "data.image_size": 128,
                     "backbone.img_size": 112})
    return sets


def paper_e2e(c: Check) -> list[dict]:
    """`python -m digit_bench.sweep` on the paper profile: every stage, tiny step counts, a synthetic ImageNet."""
    import subprocess

    import timm

    from digit_bench.eval.fidelity import random_inception_extractor

    c.random_weights(f"the paper profile's backbone ({FEATURES_BACKBONE}) and Inception network")
    work = Path(tempfile.mkdtemp(prefix="doctor-paper-"))
    classes, per_class, val = (2, 8, 4) if c.tiny else (4, 16, 4)
    data = synthetic_imagenet(work / "imagenet", classes, per_class, val)
    # random-init weights written to files and passed as explicit weight files, so the real loading code runs
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        backbone = timm.create_model(FEATURES_BACKBONE, pretrained=False, img_size=224, num_classes=0)
    torch.save(backbone.state_dict(), work / "dinov2_random.pth")
    inception = random_inception_extractor(work / "inception_random.pth")
    repo = Path(__file__).resolve().parents[1]
    (work / "doctor.yaml").write_text(f"include: {repo / 'ablations' / '_base.yaml'}\nname: doctor_paper\nseeds: [0]\n")
    n_train = classes * per_class
    sets = micro_run_sets(c.tiny, data, work / "dinov2_random.pth", inception.weights, classes * val)
    cmd = [sys.executable, "-m", "digit_bench.sweep", str(work / "doctor.yaml"), "--profile", "paper", "--cluster",
           "debug", "--root", str(work / "runs"), "--results", str(work / "results")]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={value}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]),
           "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    left = max(10.0, c.deadline - time.monotonic())
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=left)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"sweep exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1:] or proc.stdout}")
    summary = json.loads(lines[-1])
    stages = sorted(p.parent.parent.name for p in (work / "runs").glob("*/*/DONE"))
    return [row("runs_ok", summary["ok"], "runs", note=f"{summary['failed']} failed; {n_train} train + "
                f"{classes * val} val synthetic JPEGs; random-init DINOv2 and Inception weight files"),
            row("wall_s", summary["wall_s"], "s", note=f"{len(stages)} artifacts: {', '.join(sorted(set(stages)))}")]


def top_ops(c: Check, fn: Callable[[], object], n: int = 5) -> str:
    """The `n` ops with the most self time in one call of `fn`, as 'name ms (share%)'."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if c.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        c.sync()
    key = "self_device_time_total" if c.device.type == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, key, 0) > 0]
    total = sum(getattr(e, key) for e in events) or 1
    events.sort(key=lambda e: getattr(e, key), reverse=True)
    return ", ".join(f"{e.key} {getattr(e, key) / 1e3:.1f} ms ({100 * getattr(e, key) / total:.0f}%)"
                     for e in events[:n])


RUNNERS = {"features": features, "kmeans": kmeans, "gpt_train": gpt_train, "kv_cache": kv_cache, "fid": fid,
           "ddp": ddp, "paper_e2e": paper_e2e}


# ------------------------------------------------------------------------------------------------------- driver
def run_sections(c: Check, names: list[str]) -> None:
    for name in names:
        left = c.deadline - time.monotonic()
        need = MIN_SECONDS[name] / (10 if c.tiny else 1)
        if left < need:
            c.sections[name] = {"status": "skipped", "wall_s": 0.0, "rows": [],
                                "error": f"time guard: {left:.0f} s left, section needs >= {need:.0f} s"}
            continue
        t0 = time.perf_counter()
        try:
            c.sections[name] = {"status": "ok", "rows": RUNNERS[name](c)}
        except Exception as e:  # noqa: BLE001 -- every failure is a result of the check, not a crash of it
            c.sections[name] = {"status": "error", "rows": [],
                                "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                                "traceback": traceback.format_exc(limit=6)}
        c.sections[name]["wall_s"] = time.perf_counter() - t0
        print(f"[doctor] {name}: {c.sections[name]['status']} in {c.sections[name]['wall_s']:.1f} s", file=sys.stderr)


def table(result: dict) -> str:
    """One line per row: section, metric, value, unit, ratio, note (same columns on every device)."""
    lines = [f"{'section':<10} {'metric':<22} {'value':>12} {'unit':<8} {'ratio':>7}  note",
             "-" * 100]
    for section, s in result["sections"].items():
        if s["status"] != "ok":
            lines.append(f"{section:<10} {'(' + s['status'] + ')':<22} {'-':>12} {'':<8} {'-':>7}  {s['error']}")
            continue
        for r in s["rows"]:
            value = r["value"]
            text = "-" if value is None else (f"{value:.4g}" if isinstance(value, float) else str(value))
            ratio = "-" if r["ratio"] is None else f"{r['ratio']:.3f}"
            lines.append(f"{section:<10} {r['metric']:<22} {text:>12} {r['unit']:<8} {ratio:>7}  {r['note']}")
    return "\n".join(lines)


def device_slug(device: torch.device) -> str:
    if device.type != "cuda":
        return "cpu"
    return "".join(ch if ch.isalnum() else "-" for ch in torch.cuda.get_device_name(device).lower()).strip("-")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m digit_bench.doctor", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="CPU-sized versions of every section (<= 2 min on 2 cores)")
    p.add_argument("--only", action="append", choices=SECTIONS, help="run only this section (repeatable)")
    p.add_argument("--random-weights", action="store_true",
                   help="allow random-init DINOv2 and Inception architectures (no weights are downloaded)")
    p.add_argument("--inception-weights", default=None,
                   help="torch-fidelity Inception weight file (default: the torch.hub cache)")
    p.add_argument("--time-budget-s", type=float, default=480.0, help="global time guard (default 480 = 8 min)")
    p.add_argument("--out", default=None, help="JSON path (default results/gpu/<device>.json)")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("doctor: --device cuda but torch sees no CUDA device; nothing to check (use --device cpu --tiny)",
              file=sys.stderr)
        return 0
    torch.set_float32_matmul_precision("highest")
    c = Check(args)
    started = time.time()
    run_sections(c, list(dict.fromkeys(args.only or SECTIONS)))
    import faiss

    result = {"device": args.device, "device_name": c.name, "tiny": args.tiny, "random_weights": args.random_weights,
              "bf16_peak_tflops": None if c.spec is None else c.spec.bf16_tflops,
              "versions": {"torch": torch.__version__, "cuda": torch.version.cuda, "faiss": faiss.__version__,
                           "python": platform.python_version()},
              "started_unix": started, "wall_s": time.time() - started, "sections": c.sections}
    out = Path(args.out or f"results/gpu/{device_slug(c.device)}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    print(table(result))
    print(f"[doctor] wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
