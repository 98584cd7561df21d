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
    views: tuple[str, ...] = ("identity", "hflip")  # token views per image; training picks one at random


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 125_000  # optimizer updates (paper stage 1: 125k at global batch 1024)
    batch_size: int = 1024  # global batch (sequences or images per update)
    grad_accum: int = 1  # micro-batches per update (batch_size must divide by it)
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


@dataclass(frozen=True)
class GPTModelConfig:
    size: str = "digit-b"  # row of models.gpt.GPT_SIZES (gpt-nano, gpt-micro, gpt-mini, digit-b, digit-l)
    post_ln: bool = True  # paper stage 1 is post-LN (fairseq decoder_normalize_before=False)
    dropout: float = 0.1  # residual/embedding dropout (paper: 0.1)
    class_conditional: bool = False  # a class token replaces BOS (paper Table 4)
    label_dropout: float = 0.0  # classifier-free guidance training (beyond the paper; 0 = off)


@dataclass(frozen=True)
class SampleConfig:
    num_samples: int = 50_000  # generated images (paper: 50k, one per ImageNet-val image)
    batch_size: int = 256  # sequences sampled together (results do not depend on it)
    top_k: int = 200  # stage-1 top-k (paper: 200 base, 400 large); 0 = off
    top_p: float = 1.0  # stage-1 nucleus; 1.0 = off (paper: off)
    temperature: float = 1.0  # (paper: 1.0)
    cfg_scale: float = 1.0  # classifier-free guidance scale; 1.0 = off (paper: off)
    seed: int = 0  # base of the per-sample seeds


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
    size: str = "digit-b"  # GPT_SIZES row for the decoder (pre-LN)
    top_p: float = 0.8  # AR decoding nucleus (paper: 0.8)
    temperature: float = 1.0  # AR decoding temperature (paper: 1.0)
    maskgit_steps: int = 8  # MaskGIT decoding steps (paper: 8)
    choice_temperature: float = 4.5  # MaskGIT Gumbel choice temperature, annealed to 0 (paper: 4.5)
    train: TrainConfig = TrainConfig(steps=250_000, batch_size=1024, lr=5e-4)


@dataclass(frozen=True)
class EvalConfig:
    extractor: Literal["local", "inception", "dinov2"] = "inception"  # FD feature extractor
    extra_extractors: tuple[str, ...] = ()  # more extractors, each its own columns (fd_dinov2, ...)
    reference: str = "dataset:imagenet:val"  # dataset:<name>:<split> or npz:<file> (ADM-style mu/sigma)
    num_reference: Optional[int] = None  # real images in the reference set (None = the whole split)
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
    out_dim: int = 1024  # DINO head prototypes
    teacher_momentum: float = 0.996  # DINO EMA teacher
    teacher_temp: float = 0.04
    student_temp: float = 0.1
    center_momentum: float = 0.9
    local_crops: int = 4  # DINO multi-crop small views
    train: TrainConfig = TrainConfig(steps=3000, batch_size=256, lr=1e-3, schedule="cosine", warmup_steps=200,
                                     betas=(0.9, 0.95), weight_decay=0.05, label_smoothing=0.0, checkpoint_every=500)


@dataclass(frozen=True)
class LDMConfig:
    vae_weights: Optional[str] = None  # local diffusers AutoencoderKL folder (paper profile: sd-vae-ft-ema); None = train here
    latent_channels: int = 4
    vae_channels: tuple[int, ...] = (32, 64)  # AutoencoderKL block_out_channels (f = 2^(len-1))
    kl_weight: float = 1e-6
    denoiser: Literal["unet", "dit"] = "unet"  # diffusers UNet2DModel or DiTTransformer2DModel
    dit_size: str = "dit-xl"  # row of models.ldm.DIT_SIZES (dit-tiny, dit-s, dit-b, dit-l, dit-xl = DiT-XL/2)
    unet_channels: tuple[int, ...] = (64, 128)  # UNet2DModel block_out_channels
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    num_train_timesteps: int = 1000
    scheduler: str = "DDIMScheduler"  # any diffusers scheduler class name for sampling
    num_inference_steps: int = 50
    cfg_scale: float = 1.0  # classifier-free guidance at sampling (1.0 = off)
    label_dropout: float = 0.1  # class label dropped to the null class in training (enables CFG)
    vae_train: TrainConfig = TrainConfig(steps=2000, batch_size=64, lr=2e-4, schedule="constant", warmup_steps=100,
                                         betas=(0.5, 0.9), weight_decay=0.0, label_smoothing=0.0, checkpoint_every=500)
    train: TrainConfig = TrainConfig(steps=3000, batch_size=128, lr=2e-4, schedule="constant", warmup_steps=100,
                                     betas=(0.9, 0.999), weight_decay=0.0, label_smoothing=0.0, ema=0.999,
                                     checkpoint_every=500)


@dataclass(frozen=True)
class LauncherConfig:
    cluster: Literal["debug", "local", "slurm"] = "debug"  # submitit executor (debug = in-process)
    partition: Optional[str] = None  # slurm_partition
    gpus_per_node: int = 0
    tasks_per_node: int = 1  # DDP ranks of a SLURM training job (= gpus_per_node with GPUs); other jobs run 1 task
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
    # tokenizer, decoders and judge are shared instruments), cheaper but blind to their variance.
    seed_scope: Literal["full", "generator"] = "full"
    threads: int = 1  # CPU threads of every stage; in every artifact id: bit-identical reruns need the same count
    generator: Literal["digit", "vqgan_ar", "ldm"] = "digit"
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
        return float(value)
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
_POSITIVE = {"image_size", "batch_size", "steps", "k", "niter", "num_samples", "embed_dim", "depth", "num_heads",
             "patch_size", "ch", "n_embed", "z_channels", "maskgit_steps", "epochs", "num_images", "max_points_per_centroid",
             "num_train_timesteps", "num_inference_steps", "out_dim", "max_iter", "grad_accum", "checkpoint_every", "num_res_blocks",
             "cpus_per_task", "mem_gb", "timeout_min", "array_parallelism", "local_workers", "tasks_per_node",
             "latent_channels", "bootstrap", "kid_subset_size", "prc_neighborhood", "local_crops", "threads"}
_NON_NEGATIVE = {"num_val", "warmup_steps", "gpus_per_node", "max_retries", "max_num_timeout", "top_k", "disc_start",
                 "lr", "weight_decay", "grad_clip", "label_smoothing", "beta", "disc_weight", "perceptual_weight",
                 "kl_weight", "seed", "split_seed", "init_seed"}
_UNIT_OPEN = {"fraction", "holdout_fraction", "mask_ratio"}  # in (0, 1]
_PROB = {"dropout", "label_dropout", "ema", "top_p", "center_momentum", "teacher_momentum"}  # in [0, 1]


def check_values(cfg: Any, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted key, problem) for every value no run could use (negative sizes, fractions out of range, ...)."""
    problems: list[tuple[str, str]] = []
    for f in dataclasses.fields(cfg):
        v, key = getattr(cfg, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(v):
            problems += check_values(v, key + ".")
            continue
        vals = v if isinstance(v, tuple) else (v,)
        for x in vals:
            if isinstance(x, bool) or not isinstance(x, (int, float)):
                continue
            if f.name in _POSITIVE and x <= 0:
                problems.append((key, f"must be > 0, got {x}"))
            elif f.name in _NON_NEGATIVE and x < 0:
                problems.append((key, f"must be >= 0, got {x}"))
            elif f.name in _UNIT_OPEN and not 0 < x <= 1:
                problems.append((key, f"must be in (0, 1], got {x}"))
            elif f.name in _PROB and not 0 <= x <= 1:
                problems.append((key, f"must be in [0, 1], got {x}"))
        if f.name in ("temperature", "cfg_scale", "choice_temperature") and isinstance(v, (int, float)) and v <= 0:
            problems.append((key, f"must be > 0, got {v}"))
    return problems


def check_names(cfg: ExperimentConfig) -> None:
    """Registered names (dataset, backbone, GPT sizes) exist; raises UserError naming the choices."""
    from digit_bench.registry import BACKBONES, DATASETS, EXTRACTORS

    DATASETS.check(cfg.data.name)
    BACKBONES.check(cfg.backbone.name)
    EXTRACTORS.check(cfg.eval.extractor)
    for ex in cfg.eval.extra_extractors:
        EXTRACTORS.check(ex)
    if cfg.train.batch_size % cfg.train.grad_accum:
        raise UserError(f"train.batch_size {cfg.train.batch_size} is not divisible by train.grad_accum {cfg.train.grad_accum}")
    if cfg.tokenizer.k > 65535:
        raise UserError(f"tokenizer.k {cfg.tokenizer.k} does not fit the uint16 token files; use k <= 65535")
    gpus, tasks = cfg.launcher.gpus_per_node, cfg.launcher.tasks_per_node
    if gpus and tasks != gpus:
        raise UserError(f"launcher.tasks_per_node {tasks} != launcher.gpus_per_node {gpus}: a DDP training job runs "
                        "one task per GPU; set them equal")
    bad_views = set(cfg.tokenizer.views) - {"identity", "hflip"}
    if bad_views or not cfg.tokenizer.views:
        raise UserError(f"tokenizer.views {list(cfg.tokenizer.views)}: choose a non-empty list of identity, hflip")


# ------------------------------------------------------------------------------------------------ sweep files
SWEEP_KEYS = ("include", "name", "defaults", "grid", "seeds", "profiles")
PROFILES = ("smoke", "tiny", "paper")
DEFAULT_PROFILE = "tiny"


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
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
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
    if data is None:
        data = {}
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
        profile: smoke | tiny | paper (default tiny).
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
        overrides += src.overrides("profiles", profile)
        prof = profiles.get(profile) or {}
        if "grid" in prof:
            grid, grid_where = prof["grid"], src.where("profiles", profile, "grid")
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
        problems = check_values(cfg)
        if problems:
            key, msg = problems[0]
            where = next((o.where for o in reversed(overrides + ovs + cli) if o.key == key), str(path))
            raise UserError(f"{where}: {key} {msg}")
        check_names(cfg)
        runs.append(Run(run_id=run_id(cfg, point), cfg=cfg, point=point))
    keys = tuple(dict.fromkeys(k for p in points for k in p))
    return Sweep(name=name, profile=profile, path=str(path), runs=tuple(runs), swept_keys=keys)


def _parse_set(s: str) -> Override:
    if "=" not in s:
        raise UserError(f"--set {s!r}: expected key=value, e.g. --set tokenizer.k=1024")
    k, v = s.split("=", 1)
    try:
        value = yaml.safe_load(v)
    except yaml.YAMLError:
        raise UserError(f"--set {s!r}: the value is not valid YAML") from None
    return Override(k.strip(), value, "--set")


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
    slug = "-".join(_slug(v) if isinstance(v, str) else _slug(f"{k.split('.')[-1]}{v}")
                    for k, v in point.items() if k != "seed") or "run"
    return f"{slug}-s{point['seed']}-{config_hash(d, 8)}"


def _slug(v: Any) -> str:
    return "".join(c if c.isalnum() or c in "._" else "_" for c in str(v))[:24]


def build(cls: type, d: dict) -> Any:
    """Rebuild a (nested) config dataclass from its `to_dict` form, strictly."""
    return apply_overrides(cls(), [Override(k, v, f"{cls.__name__} dict") for k, v in d.items()])
