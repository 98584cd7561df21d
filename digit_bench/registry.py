"""Every registered name in one file, one literal line each (grep finds `dinov2_vitb14_reg4` here).

Registries: DATASETS, BACKBONES, GENERATORS (name -> recipe), EXTRACTORS, GPT_SIZES and DIT_SIZES (model
sizes), SCHEDULERS (diffusers samplers), METRICS (the families of `metric_registry.py`, the one list of metrics).
Entries are lazy `"module:attr"` strings plus fixed keyword arguments, so listing names (`digit-bench ls
backbones`) imports nothing heavy. `REGISTRY.get(name)` imports the target and returns it with the keyword
arguments bound; an unknown name is a `UserError` naming the config field, the closest match and the valid ones.

`FIELDS` maps every name-valued config field to its registry; `config.check_names` checks them all before any job
runs (the Literal-typed fields are checked when the YAML is read).
"""

from __future__ import annotations

import difflib
import functools
import importlib
from typing import Any, Callable

from digit_bench import metric_registry as _metric_registry
from digit_bench.errors import UserError


def did_you_mean(name: str, choices: list[str]) -> str:
    """' (did you mean X?)' for the closest choice, or ''."""
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


class Registry:
    """Named builders of one kind, resolved lazily.

    Args:
        kind: what the names denote, used in error messages ("backbone").
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, tuple[str, dict[str, Any], str]] = {}
        self._release: dict[str, dict[str, str]] = {}

    def add(self, entry: str, target: str, doc: str = "", *, release: tuple[str, str] | None = None,
            **kwargs: Any) -> None:
        """Register `entry` as `target` ("package.module:function", or a module "package.module") called with
        `kwargs` bound; `release` = (weight file, where to get it) is metadata for `entry()`, never passed on."""
        if entry in self._entries:
            raise ValueError(f"{self.kind} {entry!r} is registered twice")
        self._entries[entry] = (target, kwargs, doc)
        if release:
            self._release[entry] = {"release_file": release[0], "release_url": release[1]}

    def names(self) -> list[str]:
        return sorted(self._entries)

    def doc(self, name: str) -> str:
        return self._entries[name][2]

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def check(self, name: str, key: str = "") -> None:
        """Raise a UserError naming the config field `key`, the closest match and the valid choices if `name` is not
        registered."""
        if name not in self._entries:
            raise UserError(
                f"{key + ': ' if key else ''}unknown {self.kind} {name!r}{did_you_mean(name, self.names())}; "
                f"choose one of: {', '.join(self.names())}"
            )

    def get(self, name: str, key: str = "") -> Callable[..., Any]:
        """The builder registered as `name` (a module for a module target), with its fixed keyword arguments bound."""
        self.check(name, key)
        target, kwargs, _ = self._entries[name]
        module, _, attr = target.partition(":")
        fn = getattr(importlib.import_module(module), attr) if attr else importlib.import_module(module)
        return functools.partial(fn, **kwargs) if kwargs else fn

    def entry(self, name: str) -> tuple[str, dict[str, Any]]:
        """(target, bound keyword arguments plus release_file/release_url where registered)."""
        self.check(name)
        target, kwargs, _ = self._entries[name]
        return target, {**kwargs, **self._release.get(name, {})}


DATASETS = Registry("dataset")
DATASETS.add("fashion_mnist", "digit_bench.data:fashion_mnist", "Fashion-MNIST 70k 28x28 grey, 10 classes (Debian dataset-fashion-mnist)")
DATASETS.add("digits", "digit_bench.data:digits", "scikit-learn's bundled 8x8 digits, 1,797 images, 10 classes")
DATASETS.add("imagenet", "digit_bench.data:imagenet", "ImageNet-1k ImageFolder root with train/ and val/")
DATASETS.add("folder", "digit_bench.data:folder", "any ImageFolder root (class sub-folders), split by a seeded fraction")
DATASETS.add("synthetic", "digit_bench.data:synthetic", "seeded class-coloured shapes, for unit tests only")

# Backbones: frozen feature extractors whose patch features K-Means turns into tokens.
# Release weight files (`release_file`, where to get it in `release_url`): the file a `weights:` map or
# backbone.weights names for the paper's runs; backbones without timm weights (`external_weights`) need it.
BACKBONES = Registry("backbone")
_TIMM = "digit_bench.backbones:timm_backbone"
_DINOV2 = "https://dl.fbaipublicfiles.com/dinov2/"
BACKBONES.add("dinov2_vits14", _TIMM, "DINOv2 ViT-S/14", model_name="vit_small_patch14_dinov2.lvd142m",
              release=("dinov2_vits14_pretrain.pth", _DINOV2 + "dinov2_vits14/"))
BACKBONES.add("dinov2_vitb14", _TIMM, "DINOv2 ViT-B/14", model_name="vit_base_patch14_dinov2.lvd142m",
              release=("dinov2_vitb14_pretrain.pth", _DINOV2 + "dinov2_vitb14/"))
BACKBONES.add("dinov2_vitl14", _TIMM, "DINOv2 ViT-L/14", model_name="vit_large_patch14_dinov2.lvd142m",
              release=("dinov2_vitl14_pretrain.pth", _DINOV2 + "dinov2_vitl14/"))
BACKBONES.add("dinov2_vitg14", _TIMM, "DINOv2 ViT-G/14", model_name="vit_giant_patch14_dinov2.lvd142m",
              release=("dinov2_vitg14_pretrain.pth", _DINOV2 + "dinov2_vitg14/"))
BACKBONES.add("dinov2_vits14_reg4", _TIMM, "DINOv2 ViT-S/14 with 4 registers",
              model_name="vit_small_patch14_reg4_dinov2.lvd142m",
              release=("dinov2_vits14_reg4_pretrain.pth", _DINOV2 + "dinov2_vits14/"))
BACKBONES.add("dinov2_vitb14_reg4", _TIMM, "DINOv2 ViT-B/14 with 4 registers (paper: base)",
              model_name="vit_base_patch14_reg4_dinov2.lvd142m",
              release=("dinov2_vitb14_reg4_pretrain.pth", _DINOV2 + "dinov2_vitb14/"))
BACKBONES.add("dinov2_vitl14_reg4", _TIMM, "DINOv2 ViT-L/14 with 4 registers (paper: large)",
              model_name="vit_large_patch14_reg4_dinov2.lvd142m",
              release=("dinov2_vitl14_reg4_pretrain.pth", _DINOV2 + "dinov2_vitl14/"))
BACKBONES.add("dinov2_vitg14_reg4", _TIMM, "DINOv2 ViT-G/14 with 4 registers",
              model_name="vit_giant_patch14_reg4_dinov2.lvd142m",
              release=("dinov2_vitg14_reg4_pretrain.pth", _DINOV2 + "dinov2_vitg14/"))
BACKBONES.add("dino_vitb16", _TIMM, "DINO v1 ViT-B/16", model_name="vit_base_patch16_224.dino")
BACKBONES.add("dino_vits16", _TIMM, "DINO v1 ViT-S/16", model_name="vit_small_patch16_224.dino")
BACKBONES.add("mae_vitb16", _TIMM, "MAE ViT-B/16 (reconstructive SSL)", model_name="vit_base_patch16_224.mae",
              release=("mae_pretrain_vit_base.pth", "https://dl.fbaipublicfiles.com/mae/pretrain/"))
BACKBONES.add("mae_vitl16", _TIMM, "MAE ViT-L/16 (reconstructive SSL)", model_name="vit_large_patch16_224.mae")
BACKBONES.add("clip_vitb16", _TIMM, "OpenAI CLIP ViT-B/16 image tower", model_name="vit_base_patch16_clip_224.openai")
BACKBONES.add("beitv2_vitb16", _TIMM, "BEiT v2 ViT-B/16 (masked image modelling, in1k fine-tuned)",
              model_name="beitv2_base_patch16_224.in1k_ft_in1k")
BACKBONES.add("ijepa_vith14", _TIMM, "I-JEPA ViT-H/14", model_name="vit_huge_patch14_gap_224.in1k_ijepa")
BACKBONES.add("mocov3_vitb16", _TIMM, "MoCo v3 ViT-B/16 (not in timm: needs `backbone.weights: <file>`)",
              model_name="vit_base_patch16_224", external_weights="MoCo v3 vit-b-300ep.pth.tar from the MoCo v3 release",
              release=("vit-b-300ep.pth.tar", "https://dl.fbaipublicfiles.com/moco-v3/vit-b-300ep/"))
BACKBONES.add("ibot_vitb16", _TIMM, "iBOT ViT-B/16 (not in timm: needs `backbone.weights: <file>`)",
              model_name="vit_base_patch16_224", external_weights="iBOT checkpoint_teacher.pth from the iBOT release",
              release=("checkpoint_teacher.pth",
                       "the iBOT README (github.com/bytedance/ibot), ViT-B/16 ImageNet-1k pretrained teacher"))
BACKBONES.add("random_vit", "digit_bench.backbones:random_vit", "seeded random-init timm ViT (CPU tests, a no-learning control)")
BACKBONES.add("pixels", "digit_bench.backbones:pixels", "raw pixel patches as features (a no-network control)")
BACKBONES.add("dino_tiny", "digit_bench.backbones:pretrained_tiny",
              "tiny timm ViT trained here by DINO self-distillation (pretrain_ssl stage)", method="dino")
BACKBONES.add("moco_tiny", "digit_bench.backbones:pretrained_tiny",
              "tiny timm ViT trained here by MoCo v3 contrastive learning (pretrain_ssl stage)", method="moco")
BACKBONES.add("mae_tiny", "digit_bench.backbones:pretrained_tiny",
              "tiny timm ViT trained here by MAE masked reconstruction (pretrain_ssl stage)", method="mae")
BACKBONES.add("sup_tiny", "digit_bench.backbones:pretrained_tiny",
              "tiny timm ViT trained here by a supervised classifier (discriminative control, pretrain_ssl stage)",
              method="sup")

# Generators: one registered recipe each (`Generator` in generators/<name>.py). A new generator is one line here.
GENERATORS = Registry("generator")
GENERATORS.add("digit", "digit_bench.generators.digit:GENERATOR", "DiGIT: GPT on K-Means tokens, then stage 2 to VQGAN tokens, then pixels")
GENERATORS.add("vqgan_ar", "digit_bench.generators.vqgan_ar:GENERATOR", "baseline: the same GPT on VQGAN tokens")
GENERATORS.add("ldm", "digit_bench.generators.ldm:GENERATOR", "baseline: latent diffusion (diffusers VAE + denoiser, DDIM)")
GENERATORS.add("maskgit_vq", "digit_bench.generators.maskgit_vq:GENERATOR", "baseline: MaskGIT (parallel decoding) on VQGAN tokens")

EXTRACTORS = Registry("extractor")
EXTRACTORS.add("inception", "digit_bench.eval.fidelity:inception_extractor", "torch-fidelity inception-v3-compat (standard FID/IS)")
EXTRACTORS.add("dinov2", "digit_bench.eval.fidelity:dinov2_extractor", "torch-fidelity DINOv2 ViT-L/14 (FD_DINOv2)")
EXTRACTORS.add("local", "digit_bench.eval.fidelity:local_extractor", "small classifier trained on the dataset's own train split")

# Model sizes: get(name)(...) builds that size (the rows of hyperparameters live beside each architecture).
GPT_SIZES = Registry("GPT size")  # gpt.size and stage2.size: get(name)(**overrides) -> GPTConfig
GPT_SIZES.add("gpt-nano", "digit_bench.models.gpt:gpt_config", "2 layers, width 64 (tiny and smoke stage 1 and 2)", size="gpt-nano")
GPT_SIZES.add("gpt-micro", "digit_bench.models.gpt:gpt_config", "4 layers, width 128 (tiny model_scales)", size="gpt-micro")
GPT_SIZES.add("gpt-mini", "digit_bench.models.gpt:gpt_config", "6 layers, width 256 (tiny model_scales)", size="gpt-mini")
GPT_SIZES.add("digit-39m", "digit_bench.models.gpt:gpt_config", "10 layers, width 512: Fig. 4a's 39M probe model",
              size="digit-39m")
GPT_SIZES.add("digit-b", "digit_bench.models.gpt:gpt_config", "16 layers, width 1024: the paper's DiGIT-base", size="digit-b")
GPT_SIZES.add("digit-l", "digit_bench.models.gpt:gpt_config", "24 layers, width 1536: the paper's DiGIT-large", size="digit-l")
DIT_SIZES = Registry("DiT size")  # ldm.dit_size: get(name)(num_classes, latent_channels, latent_size) -> Denoiser
DIT_SIZES.add("dit-tiny", "digit_bench.models.ldm:build_dit", "4 layers, 4 heads x 32 (CPU)", size="dit-tiny")
DIT_SIZES.add("dit-s", "digit_bench.models.ldm:build_dit", "DiT-S/2", size="dit-s")
DIT_SIZES.add("dit-b", "digit_bench.models.ldm:build_dit", "DiT-B/2", size="dit-b")
DIT_SIZES.add("dit-l", "digit_bench.models.ldm:build_dit", "DiT-L/2", size="dit-l")
DIT_SIZES.add("dit-xl", "digit_bench.models.ldm:build_dit", "DiT-XL/2 (the LDM baseline row)", size="dit-xl")

# Samplers of ldm.scheduler: diffusers schedulers that sample from the DDPM training schedule's config.
SCHEDULERS = Registry("scheduler")
SCHEDULERS.add("DDIMScheduler", "diffusers:DDIMScheduler", "DDIM (default; LDM, DiT)")
SCHEDULERS.add("DDPMScheduler", "diffusers:DDPMScheduler", "ancestral DDPM")
SCHEDULERS.add("PNDMScheduler", "diffusers:PNDMScheduler", "pseudo numerical methods")
SCHEDULERS.add("DPMSolverMultistepScheduler", "diffusers:DPMSolverMultistepScheduler", "DPM-Solver++ multistep")
SCHEDULERS.add("DPMSolverSinglestepScheduler", "diffusers:DPMSolverSinglestepScheduler", "DPM-Solver singlestep")
SCHEDULERS.add("DEISMultistepScheduler", "diffusers:DEISMultistepScheduler", "DEIS multistep")
SCHEDULERS.add("UniPCMultistepScheduler", "diffusers:UniPCMultistepScheduler", "UniPC multistep")
SCHEDULERS.add("EulerDiscreteScheduler", "diffusers:EulerDiscreteScheduler", "Euler (Karras et al.)")
SCHEDULERS.add("EulerAncestralDiscreteScheduler", "diffusers:EulerAncestralDiscreteScheduler", "Euler ancestral")
SCHEDULERS.add("HeunDiscreteScheduler", "diffusers:HeunDiscreteScheduler", "Heun (2nd order)")
SCHEDULERS.add("LMSDiscreteScheduler", "diffusers:LMSDiscreteScheduler", "linear multistep")
SCHEDULERS.add("KDPM2DiscreteScheduler", "diffusers:KDPM2DiscreteScheduler", "DPM-Solver-2 (k-diffusion)")
SCHEDULERS.add("KDPM2AncestralDiscreteScheduler", "diffusers:KDPM2AncestralDiscreteScheduler", "DPM-Solver-2 ancestral")
SCHEDULERS.add("SASolverScheduler", "diffusers:SASolverScheduler", "SA-Solver")

# Metric families: the names are the literal rows of metric_registry.METRICS (the one list); get(name)() -> Metric.
METRICS = Registry("metric")
for _metric in _metric_registry.METRICS:
    METRICS.add(_metric.name, "digit_bench.metric_registry:metric", _metric.protocol, column=_metric.name)

ALL = {"datasets": DATASETS, "backbones": BACKBONES, "generators": GENERATORS, "extractors": EXTRACTORS,
       "gpt_sizes": GPT_SIZES, "dit_sizes": DIT_SIZES, "schedulers": SCHEDULERS, "metrics": METRICS}

# Every name-valued config field and the registry its value (each item of a list; each key of a mapping) must name.
FIELDS: dict[str, Registry] = {
    "generator": GENERATORS,
    "weights": BACKBONES,  # backbone name -> weight file
    "data.name": DATASETS,
    "backbone.name": BACKBONES,
    "gpt.size": GPT_SIZES,
    "stage2.size": GPT_SIZES,
    "maskgit_vq.size": GPT_SIZES,
    "eval.extractor": EXTRACTORS,
    "eval.extra_extractors": EXTRACTORS,
    "ldm.dit_size": DIT_SIZES,
    "ldm.scheduler": SCHEDULERS,
}
