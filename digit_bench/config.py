"""Typed, frozen, strict configs: one dataclass per stage, composed into `ExperimentConfig`.

YAML files hold values only. `load_sweep(path, profile, overrides)` reads a sweep file (one level of `include:`),
applies the profile's dotted overrides, then `--set` overrides, then expands `grid:` and `seeds:` into runs. Every
key is checked against the dataclasses: unknown keys, wrong types and impossible values raise `UserError` naming
the key, the file and line, and the valid choices.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from digit_bench.errors import UserError
from digit_bench.registry import did_you_mean


# ----------------------------------------------------------------------------------------------------- stages
@dataclass(frozen=True)
class DataConfig:
    name: str = "fashion_mnist"  # registered dataset (`digit-bench ls datasets`)
    root: Optional[str] = None  # data folder; None = the dataset's default places ($DIGIT_BENCH_DATA, Debian files)
    image_size: int = 32  # square side in pixels the images are given at (paper: 256)
    num_train: Optional[int] = None  # first-N of a seeded permutation of train (None = all)
    num_val: int = 5000  # images carved from train for validation (stage-2 ceiling); never test
    num_test: Optional[int] = None  # first-N of a seeded permutation of test (None = all)
    split_seed: int = 0  # seed of the permutations above


@dataclass(frozen=True)
class BackboneConfig:
    name: str = "random_vit"  # registered backbone (`digit-bench ls backbones`)
    layer: int = -3  # block to read: -3 = the paper's "layer 3" (third-from-last, final norm, prefix tokens dropped)
    weights: Optional[str] = None  # explicit weight file (.pth/.safetensors); None = timm/HF cache or a stage artifact
    img_size: Optional[int] = None  # input side the backbone sees; None = the backbone's own (paper: 224 for /14)
    patch_size: int = 4  # random_vit / pixels only: patch side in pixels
    embed_dim: int = 192  # random_vit only: width
    depth: int = 6  # random_vit only: number of blocks
    num_heads: int = 3  # random_vit only
    init_seed: int = 0  # random_vit only: seed of the random init
    batch_size: int = 256  # images per forward pass


@dataclass(frozen=True)
class FeaturesConfig:
    split: Literal["train", "val", "test"] = "train"  # split the K-Means training features come from
    fraction: float = 0.1  # seeded fraction of the split's images kept (paper: ~10% of ImageNet-train)
    seed: int = 0  # which images are kept


@dataclass(frozen=True)
class TokenizerConfig:
    kind: Literal["kmeans", "vqgan"] = "kmeans"  # kmeans = DiGIT tokens; vqgan = the reconstructive baseline
    k: int = 8192  # codebook size (paper: 8192 base, 16384 large)
    niter: int = 20  # K-Means iterations (paper: 20, faiss)
    backend: Literal["faiss", "torch"] = "faiss"  # faiss = paper; torch = chunked matmul argmin, GPU-capable
    spherical: bool = False  # cosine K-Means (paper: False)
    seed: int = 1234  # K-Means seed (paper: faiss default 1234)
    max_points_per_centroid: int = 256  # faiss subsampling cap: at most k * this points are used (paper: 256)
    init: Literal["random", "kmeans++"] = "random"  # centroid init (paper: faiss's random points)
    views: tuple[str, ...] = ("identity", "hflip")  # token views per image; training picks one at random.
    # identity/hflip: the centre crop and its mirror; crop<i>: the i-th seeded RandomCrop + flip of the resized image
    # (the paper's online augmentation, pre-tokenized as N views). The first view must be identity (probe, ceilings)
    centroids: Optional[str] = None  # id of imported centroids (`digit-bench import centroids km_8k.npy`); None = fit
    #   here. Set k to the file's K as well: it names the token artifacts.


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 125_000  # optimizer updates (paper stage 1: 125k at global batch 1024)
    batch_size: int = 1024  # GLOBAL batch (sequences or images per update), whatever the number of GPUs
    micro_batch_size: Optional[int] = None  # per rank per forward; None = batch_size / world (no accumulation).
    # Gradient accumulation = batch_size / (world x micro_batch_size), world = launcher.nodes x tasks_per_node
    lr: float = 3e-4  # peak learning rate (paper stage 1: 3e-4)
    schedule: Literal["inverse_sqrt", "cosine", "constant"] = "inverse_sqrt"  # after linear warmup
    warmup_steps: int = 6250  # linear warmup updates (paper: 6250)
    betas: tuple[float, float] = (0.9, 0.98)  # AdamW betas (paper: 0.9, 0.98)
    weight_decay: float = 0.01  # decoupled weight decay (paper: 0.01)
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    label_smoothing: float = 0.1  # cross-entropy smoothing (paper: 0.1)
    ema: float = 0.0  # EMA decay of weights kept beside the model; 0 = none
    checkpoint_every: int = 1000  # updates between resumable checkpoints
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto = bf16 autocast on CUDA, fp32 on CPU

    def accumulation(self, world: int = 1) -> tuple[int, int]:
        """(micro-batch per rank, micro-batches per update) that make the global `batch_size` on `world` ranks."""
        micro = self.micro_batch_size or self.batch_size // world
        if micro < 1 or micro * world > self.batch_size or self.batch_size % (micro * world):
            raise UserError(f"batch_size {self.batch_size} is not world {world} x micro_batch_size {micro} x a whole "
                            f"number of accumulation steps; pick a micro_batch_size dividing {self.batch_size // world}"
                            if self.batch_size % world == 0 else
                            f"batch_size {self.batch_size} does not split over {world} ranks; make it a multiple of {world}")
        return micro, self.batch_size // (micro * world)


@dataclass(frozen=True)
class GPTModelConfig:
    size: str = "digit-b"  # registered GPT size (`digit-bench ls gpt_sizes`: gpt-nano ... digit-b, digit-l)
    post_ln: bool = True  # paper stage 1 is post-LN (fairseq decoder_normalize_before=False)
    dropout: float = 0.1  # residual/embedding dropout (paper: 0.1)
    class_conditional: bool = False  # a class token replaces BOS (paper Table 4)
    label_dropout: float = 0.0  # classifier-free guidance training (beyond the paper; 0 = off)
    checkpoint: Optional[str] = None  # id of an imported GPT (`digit-bench import gpt <fairseq .pt>`); None = train here


@dataclass(frozen=True)
class SampleConfig:
    num_samples: int = 50_000  # generated images (paper: 50k, one per ImageNet-val image)
    batch_size: int = 256  # sequences sampled together (results do not depend on it)
    top_k: int = 200  # stage-1 top-k (paper: 200 base, 400 large); 0 = off
    top_p: float = 1.0  # stage-1 nucleus; 1.0 = off (paper: off)
    temperature: float = 1.0  # (paper: 1.0)
    cfg_scale: float = 1.0  # classifier-free guidance scale; 1.0 = off (paper: off)
    seed: int = 0  # base of the per-sample seeds
    prefix_len: int = 0  # tokens of a held-out (val) image's sequence given as a prompt (paper Fig. 4b); 0 = none


@dataclass(frozen=True)
class VQGANConfig:
    weights: Optional[str] = None  # external taming-format checkpoint (paper: MAGE vqgan_jax_strongaug.ckpt); None = train here
    arch: Literal["taming", "maskgit"] = "taming"  # module layout: taming-transformers, or MAGE's MaskGIT port (paper)
    ch: int = 64  # base channels (paper: 128)
    ch_mult: tuple[int, ...] = (1, 2)  # per-resolution multipliers; len-1 downsamplings (paper: 1,1,2,2,4 -> f16)
    num_res_blocks: int = 1  # (paper: 2)
    z_channels: int = 64  # (paper: 256)
    n_embed: int = 512  # codebook size (paper: 1024)
    embed_dim: int = 64  # code dimension (paper: 256)
    beta: float = 0.25  # commitment loss weight
    l2_codes: bool = False  # l2-normalised codes and lookups
    disc_start: int = 1000  # updates before the patch-GAN loss switches on
    disc_weight: float = 0.1  # scale of the adaptive GAN weight
    perceptual_weight: float = 1.0  # LPIPS weight when its weights are available (recorded when not)
    train: TrainConfig = TrainConfig(steps=3000, batch_size=64, lr=2e-4, schedule="constant", warmup_steps=100,
                                     betas=(0.5, 0.9), weight_decay=0.0, label_smoothing=0.0, checkpoint_every=500)


@dataclass(frozen=True)
class Stage2Config:
    kind: Literal["ar", "maskgit"] = "ar"  # AR = "DiGIT (+VQGAN)", maskgit = "DiGIT (+MaskGIT)"
    size: str = "digit-b"  # registered GPT size of the decoder (pre-LN; `digit-bench ls gpt_sizes`)
    top_p: float = 0.8  # AR decoding nucleus (paper: 0.8)
    temperature: float = 1.0  # AR decoding temperature (paper: 1.0)
    maskgit_steps: int = 8  # MaskGIT decoding steps (paper: 8)
    choice_temperature: float = 4.5  # MaskGIT Gumbel choice temperature, annealed to 0 (paper: 4.5)
    train: TrainConfig = TrainConfig(steps=250_000, batch_size=1024, lr=5e-4)


@dataclass(frozen=True)
class EvalConfig:
    extractor: str = "inception"  # FD feature extractor (`digit-bench ls extractors`: local, inception, dinov2)
    extra_extractors: tuple[str, ...] = ()  # more registered extractors, each its own columns (fd_dinov2, ...)
    reference: str = "dataset:imagenet:val"  # dataset:<name>:<split> or npz:<file> (ADM-style mu/sigma)
    num_reference: Optional[int] = None  # real images in the reference set (None = the whole split)
    reference_resize: Literal["bicubic", "bilinear"] = "bicubic"  # short-side resize of folder reference images
    # (paper: torchvision Resize(256) default, bilinear, + CenterCrop 256)
    ceiling_split: Literal["val", "test"] = "val"  # images the "VQ only" / "DiGIT + VQ" ceilings re-render
    # (val = carved from train; test = the dataset's test part, ImageNet val for the paper's "validation data" rows)
    weights: Optional[str] = None  # explicit extractor weight file (inception/dinov2)
    bootstrap: int = 200  # bootstrap resamples of the generated set for the FD confidence interval
    kid_subset_size: int = 1000  # torch-fidelity KID subset size (clipped to the sample count)
    prc_neighborhood: int = 3  # k of the improved precision/recall
    local_train: TrainConfig = TrainConfig(steps=1500, batch_size=128, lr=2e-3, schedule="cosine", warmup_steps=50,
                                           betas=(0.9, 0.999), weight_decay=5e-4, label_smoothing=0.0, checkpoint_every=500)


@dataclass(frozen=True)
class ProbeConfig:
    enabled: bool = True  # linear probe of the stage-1 GPT (and of the backbone: Acc@OL)
    l2s: tuple[float, ...] = (1e-3, 1e-2, 1e-1)  # starting L2 grid (grows 10x past an edge until the choice is interior)
    max_iter: int = 500  # L-BFGS iterations of each (convex) logistic-regression fit
    holdout_fraction: float = 0.1  # part of train held out to choose the l2 and layer (never test)
    num_train: Optional[int] = None  # probe train images (None = all of train)
    # converged: the settings above (convex solve on pooled identity-view features); paper: the released SGD probe
    # (online RandomResizedCrop + flip views tokenized on the fly, 224/256 centre crop at test, embedding output +
    # blocks 1..L-1, the settings below)
    protocol: Literal["converged", "paper"] = "converged"
    lr: float = 0.4  # paper protocol: SGD learning rate (cosine to 0, no warm-up)
    momentum: float = 0.9
    weight_decay: float = 0.0
    steps: int = 100_000  # SGD updates (paper: 100k at batch 1024, ~80 epochs)
    batch_size: int = 1024
    crop_scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop area range (torchvision default)
    eval_crop: float = 0.875  # test: centre crop of this fraction of the image side (paper: 224 of 256)


PROBE_PAPER_FIELDS = ("protocol", "lr", "momentum", "weight_decay", "steps", "batch_size", "crop_scale", "eval_crop")


def probe_hashed(probe: ProbeConfig) -> dict:
    """The probe section as ids hash it: the paper protocol's fields only when that protocol is chosen, so they never
    re-key a converged probe."""
    d = to_dict(probe)
    return d if probe.protocol == "paper" else {k: v for k, v in d.items() if k not in PROBE_PAPER_FIELDS}


@dataclass(frozen=True)
class StabilityConfig:
    snrs_db: tuple[float, ...] = (30, 25, 20, 15, 10, 5, 1, 0.01)  # Table 1's SNRs, in dB of signal power / noise power
    num_images: int = 512  # held-out (test) images the noise is applied to
    seed: int = 0


@dataclass(frozen=True)
class SSLConfig:
    image_size: int = 32  # pretraining resolution
    patch_size: int = 4  # 8x8 tokens at 32 px
    embed_dim: int = 192
    depth: int = 6
    num_heads: int = 3
    mask_ratio: float = 0.75  # MAE
    out_dim: int = 1024  # DINO head prototypes; MoCo v3's projection width (MoCo v3: 256)
    teacher_momentum: float = 0.996  # DINO EMA teacher, MoCo v3 momentum encoder (MoCo v3 ViT: 0.99), cosine to 1
    teacher_temp: float = 0.04
    student_temp: float = 0.1
    center_momentum: float = 0.9
    moco_temp: float = 0.2  # MoCo v3 InfoNCE temperature (its ViT setting)
    local_crops: int = 4  # DINO (and MoCo) multi-crop small views
    crop_size: Optional[int] = None  # side of DINO's global crops and the supervised crops (DINO's local crops:
    # half of it); None = image_size. Below image_size a step costs about (crop_size / image_size)^2 as much, and
    # the backbone is still read at image_size (train low, test high). MAE keeps image_size: its encoder already
    # sees a quarter of the patches
    head_input: Literal["cls", "patch_mean"] = "cls"  # what the DINO / MoCo / supervised head reads: the CLS token (DINO),
    # or the mean of the final-norm patch tokens, the features the tokenizer and kNN@OL use
    train: TrainConfig = TrainConfig(steps=3000, batch_size=256, lr=1e-3, schedule="cosine", warmup_steps=200,
                                     betas=(0.9, 0.95), weight_decay=0.05, label_smoothing=0.0, checkpoint_every=500)


@dataclass(frozen=True)
class LDMConfig:
    vae_weights: Optional[str] = None  # local diffusers AutoencoderKL folder (paper profile: sd-vae-ft-ema); None = train here
    latent_channels: int = 4
    vae_channels: tuple[int, ...] = (32, 64)  # AutoencoderKL block_out_channels (f = 2^(len-1))
    kl_weight: float = 1e-6
    denoiser: Literal["unet", "dit"] = "unet"  # diffusers UNet2DModel or DiTTransformer2DModel
    dit_size: str = "dit-xl"  # registered DiT size (`digit-bench ls dit_sizes`: dit-tiny ... dit-xl = DiT-XL/2)
    unet_channels: tuple[int, ...] = (64, 128)  # UNet2DModel block_out_channels
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    num_train_timesteps: int = 1000
    scheduler: str = "DDIMScheduler"  # registered diffusers sampler (`digit-bench ls schedulers`)
    num_inference_steps: int = 50
    cfg_scale: float = 1.0  # classifier-free guidance at sampling (1.0 = off)
    label_dropout: float = 0.1  # class label dropped to the null class in training (enables CFG)
    vae_train: TrainConfig = TrainConfig(steps=2000, batch_size=64, lr=2e-4, schedule="constant", warmup_steps=100,
                                         betas=(0.5, 0.9), weight_decay=0.0, label_smoothing=0.0, checkpoint_every=500)
    train: TrainConfig = TrainConfig(steps=3000, batch_size=128, lr=2e-4, schedule="constant", warmup_steps=100,
                                     betas=(0.9, 0.999), weight_decay=0.0, label_smoothing=0.0, ema=0.999,
                                     checkpoint_every=500)


@dataclass(frozen=True)
class MaskGITVQConfig:
    """The MaskGIT-over-VQGAN-tokens baseline (the paper's MIM row: MaskGIT 227M, 300 epochs, FID 20.7 uncond)."""

    size: str = "digit-b"  # GPT_SIZES row giving the widths of the bidirectional transformer (MaskGIT: 24 x 768)
    dropout: float = 0.1  # (MaskGIT: 0.1)
    steps: int = 8  # decoding steps (MaskGIT: 8)
    choice_temperature: float = 4.5  # Gumbel choice temperature, annealed to 0 (MaskGIT: 4.5)
    temperature: float = 1.0  # sampling temperature of the token draws
    train: TrainConfig = TrainConfig(steps=1_500_000, batch_size=256, lr=1e-4, schedule="cosine", warmup_steps=5000,
                                     betas=(0.9, 0.96), weight_decay=0.045, label_smoothing=0.1)  # MaskGIT: 300 ep


@dataclass(frozen=True)
class LauncherConfig:
    cluster: Literal["debug", "local", "slurm"] = "debug"  # submitit executor (debug = in-process)
    partition: Optional[str] = None  # slurm_partition
    gpus_per_node: int = 0
    tasks_per_node: int = 1  # DDP ranks per node of a SLURM training job (= gpus_per_node with GPUs); other jobs 1 task
    nodes: int = 1  # nodes of a SLURM training job (multi-node DDP: world = nodes x tasks_per_node); other jobs 1
    gpu_type: Optional[str] = None  # GPU model of the partition (h200, h100, a100, ...): `plan` and `sweep` check each
    #   job's memory against it; None = unknown, nothing is checked
    cpus_per_task: int = 2
    mem_gb: int = 8
    timeout_min: int = 60  # wall-clock limit per job, minutes
    array_parallelism: int = 64  # jobs of one array running at once
    account: Optional[str] = None  # slurm_account
    qos: Optional[str] = None  # slurm_qos
    max_retries: int = 1  # re-submissions of a failed job before it is reported
    max_num_timeout: int = 3  # requeues on preemption/time limit (submitit)
    local_workers: int = 2  # --cluster local: jobs at once


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "experiment"  # sweep name (results/<name>/<profile>/)
    profile: str = "tiny"
    seed: int = 0  # run seed: what it re-keys is seed_scope's choice
    # full: the run seed offsets the seed of every stochastic stage (SSL pretraining / random init, K-Means images and
    # init, VQGAN, stage 2, GPT, sampling, VAE + LDM, the local FD classifier), so the std over seeds covers the whole
    # pipeline; seed 0 is the configured seeds. generator: only the GPT / LDM, its samples and the probe (the
    # tokenizer, decoders and judge are shared instruments), cheaper but blind to their variance. downstream: as full
    # but the encoder (SSL pretraining, random ViT init) is trained once and shared, as a frozen pretrained encoder is.
    seed_scope: Literal["full", "downstream", "generator"] = "full"
    threads: int = 1  # CPU threads of every stage; in every artifact id: bit-identical reruns need the same count
    generator: str = "digit"  # registered generator (`digit-bench ls generators`)
    # backbone name -> weight file, for every grid point at once (a mapping in YAML); used where backbone.weights
    # is unset. Relative files resolve in $DIGIT_BENCH_WEIGHTS, else beside the YAML file that names them.
    weights: tuple[tuple[str, str], ...] = ()
    data: DataConfig = DataConfig()
    backbone: BackboneConfig = BackboneConfig()
    features: FeaturesConfig = FeaturesConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    gpt: GPTModelConfig = GPTModelConfig()
    train: TrainConfig = TrainConfig()
    sample: SampleConfig = SampleConfig()
    vqgan: VQGANConfig = VQGANConfig()
    stage2: Stage2Config = Stage2Config()
    eval: EvalConfig = EvalConfig()
    probe: ProbeConfig = ProbeConfig()
    stability: StabilityConfig = StabilityConfig()
    ssl: SSLConfig = SSLConfig()
    ldm: LDMConfig = LDMConfig()
    maskgit_vq: MaskGITVQConfig = MaskGITVQConfig()
    launcher: LauncherConfig = LauncherConfig()


# ----------------------------------------------------------------------------------------------- strict loading
@dataclass(frozen=True)
class Override:
    """One dotted assignment and where it came from (for error messages)."""

    key: str  # "tokenizer.k"
    value: Any
    where: str  # "ablations/_base.yaml:12" or "--set"


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        return f"list of {_type_name(args[0])}" if len(args) == 2 and args[1] is Ellipsis else f"list of {len(args)}"
    return getattr(tp, "__name__", str(tp))


def coerce(tp: Any, value: Any, key: str, where: str) -> Any:
    """`value` converted to type `tp`, or a UserError naming key, place, expected type and the value."""
    origin = typing.get_origin(tp)
    bad = UserError(f"{where}: {key}: expected {_type_name(tp)}, got {value!r}")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return coerce(inner[0], value, key, where)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise UserError(f"{where}: {key}: {value!r} is not allowed{did_you_mean(str(value), [str(a) for a in typing.get_args(tp)])}; "
                            f"choose one of: {', '.join(str(a) for a in typing.get_args(tp))}")
        return value
    if origin is tuple and isinstance(value, dict):  # a mapping field (`weights:`), kept as sorted (key, value) pairs
        value = sorted((str(k), v) for k, v in value.items())
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(args[0], v, key, where) for v in value)
        if len(value) != len(args):
            raise bad
        return tuple(coerce(a, v, key, where) for a, v in zip(args, value))
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        try:
            return float(value)
        except OverflowError:
            raise UserError(f"{where}: {key}: {value} is too large for a float") from None
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise bad


def apply_overrides(cfg: Any, overrides: list[Override]) -> Any:
    """A copy of the (nested, frozen) dataclass `cfg` with the dotted overrides applied, strictly."""
    for ov in overrides:
        cfg = _set(cfg, ov.key.split("."), ov.value, ov)
    return cfg


def _set(obj: Any, parts: list[str], value: Any, ov: Override) -> Any:
    fields = _fields(type(obj))
    name = parts[0]
    prefix = ov.key[: len(ov.key) - len(".".join(parts))].rstrip(".")
    if name not in fields:
        full = f"{prefix}.{name}" if prefix else name
        valid = [f"{prefix}.{f}" if prefix else f for f in fields]
        raise UserError(f"{ov.where}: unknown key {full!r}{did_you_mean(full, valid)}; valid keys here: {', '.join(fields)}")
    tp = _hints(type(obj))[name]
    if len(parts) > 1:
        if not dataclasses.is_dataclass(tp):
            raise UserError(f"{ov.where}: {ov.key}: {prefix + '.' if prefix else ''}{name} has no sub-keys")
        return dataclasses.replace(obj, **{name: _set(getattr(obj, name), parts[1:], value, ov)})
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"{ov.where}: {ov.key}: expected a mapping of {', '.join(_fields(tp))}, got {value!r}")
        sub = getattr(obj, name)
        for k, v in value.items():
            sub = _set(sub, [str(k)], v, Override(f"{ov.key}.{k}", v, ov.where))
        return dataclasses.replace(obj, **{name: sub})
    return dataclasses.replace(obj, **{name: coerce(tp, value, ov.key, ov.where)})


def to_dict(cfg: Any) -> dict:
    """Plain nested dict of a config (tuples become lists), JSON-ready."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_hash(d: dict, n: int = 10) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:n]


# ------------------------------------------------------------------------------------------- impossible values
_INT_MAX = 2**31 - 1  # no count, size or seed of any stage comes near it; larger values overflow int32 tensors
# field name -> (low, high, low included, high included); every int/float field of ExperimentConfig has a row
# (tests/test_validation.py checks this), so a new field cannot skip the check.
_RANGES: dict[str, tuple[float, float, bool, bool]] = {}


def _set_range(names: str, lo: float, hi: float, lo_in: bool = True, hi_in: bool = True) -> None:
    for name in names.split():
        _RANGES[name] = (lo, hi, lo_in, hi_in)


_set_range("image_size batch_size steps k niter num_samples embed_dim depth num_heads patch_size ch n_embed z_channels "
     "maskgit_steps epochs num_images max_points_per_centroid num_train_timesteps num_inference_steps out_dim micro_batch_size nodes "
     "checkpoint_every num_res_blocks cpus_per_task mem_gb timeout_min array_parallelism local_workers tasks_per_node "
     "latent_channels bootstrap kid_subset_size prc_neighborhood local_crops crop_size ch_mult vae_channels unet_channels "
     "num_train num_test num_reference img_size max_iter threads", 1, _INT_MAX)
_set_range("num_val warmup_steps gpus_per_node max_retries max_num_timeout top_k disc_start seed split_seed init_seed "
     "prefix_len",
     0, _INT_MAX)
_set_range("layer", -1000, 1000)
_set_range("lr lrs", 0, 10, lo_in=False)
_set_range("weight_decay grad_clip beta disc_weight perceptual_weight kl_weight", 0, 1e6)
_set_range("l2s", 0, 1e6, lo_in=False)
_set_range("fraction top_p", 0, 1, lo_in=False)
_set_range("holdout_fraction mask_ratio", 0, 1, lo_in=False, hi_in=False)
_set_range("dropout label_dropout ema label_smoothing betas", 0, 1, hi_in=False)
_set_range("center_momentum teacher_momentum", 0, 1)
_set_range("momentum", 0, 1, hi_in=False)
_set_range("crop_scale eval_crop", 0, 1, lo_in=False)
_set_range("temperature choice_temperature teacher_temp student_temp moco_temp cfg_scale", 0, 1e6, lo_in=False)
_set_range("snrs_db", -200, 200)

# strings that end up in file paths, sbatch lines or artifact names: a strict slug
SLUG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}"
_SLUG_FIELDS = {"name", "partition", "account", "qos"}


def _is_slug(s: str) -> bool:
    return bool(re.fullmatch(SLUG, s)) and ".." not in s


def _bad_chars(s: str) -> bool:
    """NUL, newlines and other control characters (a path or name with them is never what was meant)."""
    return any(ord(c) < 32 or ord(c) == 127 for c in s)


def _range_problem(x: float, lo: float, hi: float, lo_in: bool, hi_in: bool) -> str | None:
    """'must be > 0, got -4' style text when x is outside the range, else None."""
    if x < lo or (x == lo and not lo_in):
        if hi < _INT_MAX:
            return f"must be in {'[' if lo_in else '('}{lo:g}, {hi:g}{']' if hi_in else ')'}, got {x}"
        return f"must be > 0, got {x}" if (lo, lo_in) in ((1, True), (0, False)) else f"must be >= {lo:g}, got {x}"
    if x > hi or (x == hi and not hi_in):
        if hi >= _INT_MAX:
            return f"must be <= {_INT_MAX}, got {x}"
        return f"must be in {'[' if lo_in else '('}{lo:g}, {hi:g}{']' if hi_in else ')'}, got {x}"
    return None


def check_values(cfg: Any, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted key, problem) for every value no run could use: NaN/inf, numbers out of range, bad characters."""
    problems: list[tuple[str, str]] = []
    for f in dataclasses.fields(cfg):
        v, key = getattr(cfg, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(v):
            problems += check_values(v, key + ".")
            continue
        for x in v if isinstance(v, tuple) else (v,):
            if isinstance(x, str):
                if _bad_chars(x):
                    problems.append((key, f"contains a control character ({x!r}); remove it"))
                elif f.name in _SLUG_FIELDS and not _is_slug(x):
                    problems.append((key, f"{x!r} must be a plain name (letters, digits, '_', '.', '-'; "
                                          f"at most 64, no '..' or '/'); rename it"))
                continue
            if isinstance(x, bool) or not isinstance(x, (int, float)):
                continue
            if not math.isfinite(x):
                problems.append((key, f"must be a finite number, got {x}"))
                continue
            problem = _range_problem(x, *_RANGES.get(f.name, (-_INT_MAX, _INT_MAX, True, True)))
            if problem:
                problems.append((key, problem))
    return problems


def _check_choice(key: str, value: str, choices: list[str]) -> None:
    if value not in choices:
        raise UserError(f"{key} {value!r} is unknown{did_you_mean(value, choices)}; choose one of: {', '.join(choices)}")


def check_reference(ref: str) -> None:
    """eval.reference is dataset:<registered dataset>:<train|val|test> or npz:<file>."""
    from digit_bench.registry import DATASETS

    if ref.startswith("npz:") and len(ref) > 4:
        return
    parts = ref.split(":")
    if len(parts) != 3 or parts[0] != "dataset":
        raise UserError(f"eval.reference {ref!r}: expected dataset:<name>:<split> (e.g. dataset:fashion_mnist:test) "
                        "or npz:<file>")
    if parts[1] not in DATASETS:
        _check_choice("eval.reference dataset", parts[1], DATASETS.names())
    _check_choice("eval.reference split", parts[2], ["train", "val", "test"])


def check_names(cfg: ExperimentConfig) -> None:
    """Every name-valued field (registry.FIELDS: dataset, backbone, generator, extractors, GPT/DiT sizes, scheduler,
    the `weights:` map's backbones), the profile, the reference and the GPU type exist, and the fields that must agree
    do; raises UserError naming the field, the closest match and the choices."""
    from digit_bench.plan import GPU_SPECS, gpu_spec
    from digit_bench.registry import FIELDS

    _check_choice("profile", cfg.profile, list(PROFILES))
    for key, registry in FIELDS.items():
        value: Any = cfg
        for part in key.split("."):
            value = getattr(value, part)
        names = [n for n, _ in value] if key == "weights" else value if isinstance(value, tuple) else (value,)
        for name in names:
            registry.check(name, key)
    if cfg.launcher.gpu_type is not None and gpu_spec(cfg.launcher.gpu_type) is None:
        _check_choice("launcher.gpu_type", cfg.launcher.gpu_type, list(GPU_SPECS))
    check_reference(cfg.eval.reference)
    world = training_world(cfg.launcher)
    for key, tcfg in train_configs(cfg):
        try:
            tcfg.accumulation(world)
        except UserError as e:
            raise UserError(f"{key}.{e} (world = launcher.nodes {cfg.launcher.nodes} x launcher.tasks_per_node "
                            f"{cfg.launcher.tasks_per_node})") from None
    if cfg.tokenizer.k > 65535:
        raise UserError(f"tokenizer.k {cfg.tokenizer.k} does not fit the uint16 token files; use k <= 65535")
    if cfg.vqgan.n_embed > 65535:
        raise UserError(f"vqgan.n_embed {cfg.vqgan.n_embed} does not fit the uint16 token files; use n_embed <= 65535")
    for key, b in (("backbone", cfg.backbone), ("ssl", cfg.ssl)):
        if b.embed_dim % b.num_heads:
            raise UserError(f"{key}.embed_dim {b.embed_dim} is not divisible by {key}.num_heads {b.num_heads}; "
                            "make the width a multiple of the head count")
    crop, step = cfg.ssl.crop_size, 2 * cfg.ssl.patch_size  # the local crops are half the crop: whole patches
    if crop is not None and (crop > cfg.ssl.image_size or crop % step):
        fit = max(step, min(crop, cfg.ssl.image_size) // step * step)
        raise UserError(f"ssl.crop_size {crop} must be at most ssl.image_size {cfg.ssl.image_size} and a multiple of "
                        f"2 x ssl.patch_size = {step} (the local crops are half of it); e.g. {fit}")
    if cfg.ldm.num_inference_steps > cfg.ldm.num_train_timesteps:
        raise UserError(f"ldm.num_inference_steps {cfg.ldm.num_inference_steps} > ldm.num_train_timesteps "
                        f"{cfg.ldm.num_train_timesteps}; lower it")
    gpus, tasks = cfg.launcher.gpus_per_node, cfg.launcher.tasks_per_node
    if gpus and tasks != gpus:
        raise UserError(f"launcher.tasks_per_node {tasks} != launcher.gpus_per_node {gpus}: a DDP training job runs "
                        "one task per GPU; set them equal")
    views = list(cfg.tokenizer.views)
    bad = [v for v in views if v not in ("identity", "hflip") and not (v.startswith("crop") and v[4:].isdigit())]
    if bad or not views or views[0] != "identity" or len(set(views)) != len(views):
        raise UserError(f"tokenizer.views {views}"
                        f"{did_you_mean(bad[0], ['identity', 'hflip', 'crop0']) if bad else ''}: list distinct views "
                        "starting with identity, from identity, hflip and crop<i> (seeded random crop + flip), e.g. "
                        "[identity, hflip, crop0, crop1]")


def training_world(launcher: LauncherConfig) -> int:
    """DDP ranks of a training job: nodes x tasks per node on SLURM, one process elsewhere."""
    return launcher.nodes * launcher.tasks_per_node if launcher.cluster == "slurm" else 1


def train_configs(cfg: Any, prefix: str = "") -> list[tuple[str, TrainConfig]]:
    """(dotted key, TrainConfig) of every training block of a config ("train", "stage2.train", ...)."""
    out = []
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(v, TrainConfig):
            out.append((prefix + f.name, v))
        elif dataclasses.is_dataclass(v):
            out += train_configs(v, prefix + f.name + ".")
    return out


# ------------------------------------------------------------------------------------------------ sweep files
SWEEP_KEYS = ("include", "name", "defaults", "grid", "seeds", "profiles")
PROFILES = ("smoke", "tiny", "paper", "paper_long")
PROFILE_BASES = {"paper_long": "paper"}  # a profile applied first, its overrides (and grid, seeds) then replaced
DEFAULT_PROFILE = "tiny"


def profile_chain(profile: str) -> list[str]:
    """The profile and the ones it extends, base first: paper_long -> [paper, paper_long]."""
    return ([*profile_chain(PROFILE_BASES[profile])] if profile in PROFILE_BASES else []) + [profile]


@dataclass(frozen=True)
class Run:
    """One point of a sweep: its resolved config and the grid values that name it."""

    run_id: str  # readable grid values + hash of the resolved config (launcher excluded)
    cfg: ExperimentConfig
    point: dict = field(hash=False)  # {"backbone.name": "dino_tiny", "seed": 0}


@dataclass(frozen=True)
class Sweep:
    name: str
    profile: str
    path: str
    runs: tuple[Run, ...]
    swept_keys: tuple[str, ...]  # grid keys (and "seed"), the columns that tell runs apart


def _yaml_with_lines(path: Path) -> tuple[Any, dict[tuple, int]]:
    """Parse a YAML file safely; also return {key path: line number} for every mapping key."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"sweep file not found: {path}; give the path of a YAML file such as ablations/backbones.yaml") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a directory; give the path of a sweep YAML file such as ablations/backbones.yaml") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a text file (not UTF-8); give a sweep YAML file such as ablations/backbones.yaml") from None
    if "\0" in text:
        raise UserError(f"{path} is a binary file (NUL bytes); give a sweep YAML file such as ablations/backbones.yaml")
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(f"{where}: invalid YAML: {getattr(e, 'problem', None) or e}") from None
    lines: dict[tuple, int] = {}

    def walk(n: Any, p: tuple) -> None:
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                lines[p + (k.value,)] = k.start_mark.line + 1
                walk(v, p + (k.value,))
        elif isinstance(n, yaml.SequenceNode):
            for i, v in enumerate(n.value):
                lines[p + (i,)] = v.start_mark.line + 1
                walk(v, p + (i,))

    walk(node, ())
    if not data:
        raise UserError(f"{path} is empty; a sweep file sets at least `include: _base.yaml` or `defaults:` (an empty one "
                        "would run the paper-size defaults)")
    if not isinstance(data, dict):
        raise UserError(f"{path}: a sweep file must be a mapping with keys {', '.join(SWEEP_KEYS)}")
    return data, lines


class _Source:
    """A parsed sweep file with line lookup."""

    def __init__(self, path: Path):
        self.path = path
        self.data, self.lines = _yaml_with_lines(path)
        for k in self.data:
            if k not in SWEEP_KEYS:
                raise UserError(f"{self.where(k)}: unknown top-level key {k!r}{did_you_mean(str(k), list(SWEEP_KEYS))}; "
                                f"valid: {', '.join(SWEEP_KEYS)}")

    def where(self, *keys: Any) -> str:
        return f"{self.path}:{self.lines.get(tuple(keys), 1)}"

    def overrides(self, *keys: str) -> list[Override]:
        """Dotted overrides of the mapping at `keys` (skipping grid/seeds inside profiles)."""
        node: Any = self.data
        for k in keys:
            node = node.get(k) if isinstance(node, dict) else None
        if node is None:
            return []
        if not isinstance(node, dict):
            raise UserError(f"{self.where(*keys)}: {'.'.join(keys)} must be a mapping of dotted keys to values")
        return [Override(str(k), v, self.where(*keys, k)) for k, v in node.items() if k not in ("grid", "seeds")]


def load_sweep(path: str | Path, profile: str | None = None, sets: list[str] = ()) -> Sweep:
    """Expand a sweep YAML into runs: defaults -> profile -> grid point -> seed, then `--set` overrides.

    Args:
        path: sweep file; may `include:` one base file (relative to itself), which may not include another.
        profile: smoke | tiny | paper | paper_long (default tiny); paper_long is paper with its own overrides.
        sets: `key=value` strings (values parsed as YAML), applied last; a --set of a grid key narrows the grid.
    """
    path = Path(path)
    profile = profile or DEFAULT_PROFILE
    if profile not in PROFILES:
        raise UserError(f"unknown profile {profile!r}{did_you_mean(profile, list(PROFILES))}; choose one of: {', '.join(PROFILES)}")
    top = _Source(path)
    sources = [top]
    if "include" in top.data:
        inc = path.parent / str(top.data["include"])
        if not inc.is_file():
            raise UserError(f"{top.where('include')}: included file not found: {inc}")
        base = _Source(inc)
        if "include" in base.data:
            raise UserError(f"{base.where('include')}: only one level of include: is allowed")
        sources.insert(0, base)
    overrides: list[Override] = []
    grid: Any = None
    grid_where = str(path)
    seeds: Any = [0]
    for src in sources:  # base first, then the sweep file
        overrides += src.overrides("defaults")
        if "grid" in src.data:
            grid, grid_where = src.data["grid"], src.where("grid")
        seeds = src.data.get("seeds", seeds)
    for src in sources:
        profiles = src.data.get("profiles") or {}
        for p in profiles:
            if p not in PROFILES:
                raise UserError(f"{src.where('profiles', p)}: unknown profile {p!r}{did_you_mean(str(p), list(PROFILES))}; "
                                f"choose one of: {', '.join(PROFILES)}")
        for name in profile_chain(profile):
            overrides += src.overrides("profiles", name)
            prof = profiles.get(name) or {}
            if "grid" in prof:
                grid, grid_where = prof["grid"], src.where("profiles", name, "grid")
            seeds = prof.get("seeds", seeds)
    cli = [_parse_set(s) for s in sets]
    points = _expand(grid, seeds, grid_where, {o.key: o.value for o in cli})
    name = str(top.data.get("name", path.stem))
    base_cfg = apply_overrides(ExperimentConfig(name=name, profile=profile), overrides)
    runs = []
    for point in points:
        ovs = [Override(k, v, f"{grid_where} (grid)") for k, v in point.items() if k != "seed"]
        cfg = apply_overrides(base_cfg, ovs + [Override("seed", point["seed"], f"{grid_where} (seeds)")])
        cfg = apply_overrides(cfg, [o for o in cli if o.key not in point])
        cfg = resolve_files(cfg, {o.key: o.where for o in overrides + ovs + [o for o in cli if o.key not in point]})
        problems = check_values(cfg)
        if problems:
            key, msg = problems[0]
            where = next((o.where for o in reversed(overrides + ovs + cli) if o.key == key), str(path))
            raise UserError(f"{where}: {key} {msg}")
        check_names(cfg)
        runs.append(Run(run_id=run_id(cfg, point), cfg=cfg, point=point))
    keys = tuple(dict.fromkeys(k for p in points for k in p))
    return Sweep(name=name, profile=profile, path=str(path), runs=tuple(runs), swept_keys=keys)


FILE_KEYS = ("backbone.weights", "vqgan.weights", "ldm.vae_weights", "eval.weights")


def resolve_file(name: str, where: str) -> str:
    """Absolute path of a weight file named in a sweep file: as given when absolute, else the first existing of
    $DIGIT_BENCH_WEIGHTS/name and <folder of the YAML that names it>/name (the current folder for --set), else the
    last of these (validate then reports it missing). Never the folder a job later runs in."""
    if _bad_chars(name):
        return name  # check_values refuses it with its key
    path = Path(name).expanduser()
    if path.is_absolute():
        return str(path)
    source = where.split(":")[0]
    base = Path.cwd() if source.startswith("--set") or not Path(source).suffix else Path(source).resolve().parent
    candidates = ([Path(os.environ["DIGIT_BENCH_WEIGHTS"]).expanduser() / path] if os.environ.get("DIGIT_BENCH_WEIGHTS")
                  else []) + [base / path]
    return str(next((c for c in candidates if c.exists()), candidates[-1]).resolve())


def resolve_files(cfg: ExperimentConfig, where: dict[str, str]) -> ExperimentConfig:
    """Weight paths made absolute (resolve_file), and backbone.weights taken from the `weights:` map when unset."""
    for key in FILE_KEYS:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value:
            cfg = dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section),
                                                                           **{name: resolve_file(value, where.get(key, ""))})})
    mapped = dict(cfg.weights)
    if cfg.backbone.weights is None and cfg.backbone.name in mapped:
        cfg = dataclasses.replace(cfg, backbone=dataclasses.replace(
            cfg.backbone, weights=resolve_file(mapped[cfg.backbone.name], where.get("weights", ""))))
    return cfg


def _parse_set(s: str) -> Override:
    if "=" not in s:
        raise UserError(f"--set {s!r}: expected key=value, e.g. --set tokenizer.k=1024")
    k, v = s.split("=", 1)
    try:
        value = yaml.safe_load(v)
    except yaml.YAMLError:
        raise UserError(f"--set {s!r}: the value is not valid YAML") from None
    if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):  # YAML 1.1 reads "3e-4" (no dot) as a string
        value = float(value)
    return Override(k.strip(), value, "--set")


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)")


def _expand(grid: Any, seeds: Any, where: str, cli: dict) -> list[dict]:
    """Grid points: a mapping is one product; a list of mappings is a union of products; x seeds."""
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise UserError(f"{where}: seeds must be a non-empty list of integers, got {seeds!r}")
    blocks = [{}] if grid is None else grid if isinstance(grid, list) else [grid]
    if not blocks:
        raise UserError(f"{where}: empty grid; give at least one key with a list of values, or remove grid:")
    points: list[dict] = []
    for block in blocks:
        if not isinstance(block, dict):
            raise UserError(f"{where}: a grid is a mapping of dotted keys to lists of values (or a list of such mappings)")
        axes = {}
        for k, vals in block.items():
            if not isinstance(vals, list) or not vals:
                raise UserError(f"{where}: grid key {k!r} needs a non-empty list of values, got {vals!r}")
            axes[k] = [cli[k]] if k in cli else vals
        for combo in itertools.product(*axes.values()):
            point = dict(zip(axes, combo))
            for s in ([cli["seed"]] if "seed" in cli else seeds):
                p = {**point, "seed": s}
                if p not in points:
                    points.append(p)
    return points


def run_id(cfg: ExperimentConfig, point: dict) -> str:
    """Readable grid values + hash of the resolved config; the launcher block does not change results."""
    d = to_dict(cfg)
    d.pop("launcher")
    d.pop("name")
    d["probe"] = probe_hashed(cfg.probe)
    slug = "-".join(_slug(v) if isinstance(v, str) else _slug(f"{k.split('.')[-1]}{v}")
                    for k, v in point.items() if k != "seed") or "run"
    return f"{slug}-s{point['seed']}-{config_hash(d, 8)}"


def _slug(v: Any) -> str:
    return "".join(c if c.isalnum() or c in "._" else "_" for c in str(v))[:24]


def build(cls: type, d: dict) -> Any:
    """Rebuild a (nested) config dataclass from its `to_dict` form, strictly."""
    return apply_overrides(cls(), [Override(k, v, f"{cls.__name__} dict") for k, v in d.items()])
