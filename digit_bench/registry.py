"""Every registered name in one file: datasets, backbones, tokenizers, generators, extractors, metrics.

Entries are lazy `"module:attr"` strings plus fixed keyword arguments, so listing names (`digit-bench ls
backbones`) imports nothing heavy. `REGISTRY.get(name)` imports the target and returns it with the keyword
arguments bound; an unknown name is a `UserError` listing the valid ones (and the closest match).
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

    def add(self, entry: str, target: str, doc: str = "", **kwargs: Any) -> None:
        """Register `entry` as `target` ("package.module:function") called with `kwargs` bound."""
        if entry in self._entries:
            raise ValueError(f"{self.kind} {entry!r} is registered twice")
        self._entries[entry] = (target, kwargs, doc)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def doc(self, name: str) -> str:
        return self._entries[name][2]

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def check(self, name: str) -> None:
        """Raise a UserError naming the valid choices if `name` is not registered."""
        if name not in self._entries:
            raise UserError(
                f"unknown {self.kind} {name!r}{did_you_mean(name, self.names())}; "
                f"choose one of: {', '.join(self.names())}"
            )

    def get(self, name: str) -> Callable[..., Any]:
        """The builder registered as `name`, with its fixed keyword arguments bound."""
        self.check(name)
        target, kwargs, _ = self._entries[name]
        module, attr = target.split(":")
        fn = getattr(importlib.import_module(module), attr)
        return functools.partial(fn, **kwargs) if kwargs else fn

    def entry(self, name: str) -> tuple[str, dict[str, Any]]:
        self.check(name)
        target, kwargs, _ = self._entries[name]
        return target, dict(kwargs)


DATASETS = Registry("dataset")
DATASETS.add("fashion_mnist", "digit_bench.data:fashion_mnist", "Fashion-MNIST 70k 28x28 grey, 10 classes (Debian dataset-fashion-mnist)")
DATASETS.add("digits", "digit_bench.data:digits", "scikit-learn's bundled 8x8 digits, 1,797 images, 10 classes")
DATASETS.add("imagenet", "digit_bench.data:imagenet", "ImageNet-1k ImageFolder root with train/ and val/")
DATASETS.add("folder", "digit_bench.data:folder", "any ImageFolder root (class sub-folders), split by a seeded fraction")
DATASETS.add("synthetic", "digit_bench.data:synthetic", "seeded class-coloured shapes, for unit tests only")

# Backbones: frozen feature extractors whose patch features K-Means turns into tokens.
BACKBONES = Registry("backbone")
_TIMM = "digit_bench.backbones:timm_backbone"
_DINOV2 = "https://dl.fbaipublicfiles.com/dinov2/dinov2_vit{s}14/"
# Release weight files (`release_file`, where to get it in `release_url`): the file a `weights:` map or
# backbone.weights names for the paper's runs; backbones without timm weights (`external_weights`) need it.
for _size in ("small", "base", "large", "giant"):
    _s = _size[0]
    BACKBONES.add(f"dinov2_vit{_s}14", _TIMM, f"DINOv2 ViT-{_s.upper()}/14", model_name=f"vit_{_size}_patch14_dinov2.lvd142m",
                  release_file=f"dinov2_vit{_s}14_pretrain.pth", release_url=_DINOV2.format(s=_s))
    BACKBONES.add(f"dinov2_vit{_s}14_reg4", _TIMM, f"DINOv2 ViT-{_s.upper()}/14 with 4 registers (paper: B base, L large)",
                  model_name=f"vit_{_size}_patch14_reg4_dinov2.lvd142m", release_file=f"dinov2_vit{_s}14_reg4_pretrain.pth",
                  release_url=_DINOV2.format(s=_s))
BACKBONES.add("dino_vitb16", _TIMM, "DINO v1 ViT-B/16", model_name="vit_base_patch16_224.dino")
BACKBONES.add("dino_vits16", _TIMM, "DINO v1 ViT-S/16", model_name="vit_small_patch16_224.dino")
BACKBONES.add("mae_vitb16", _TIMM, "MAE ViT-B/16 (reconstructive SSL)", model_name="vit_base_patch16_224.mae",
              release_file="mae_pretrain_vit_base.pth", release_url="https://dl.fbaipublicfiles.com/mae/pretrain/")
BACKBONES.add("mae_vitl16", _TIMM, "MAE ViT-L/16 (reconstructive SSL)", model_name="vit_large_patch16_224.mae")
BACKBONES.add("clip_vitb16", _TIMM, "OpenAI CLIP ViT-B/16 image tower", model_name="vit_base_patch16_clip_224.openai")
BACKBONES.add("beitv2_vitb16", _TIMM, "BEiT v2 ViT-B/16 (masked image modelling, in1k fine-tuned)",
              model_name="beitv2_base_patch16_224.in1k_ft_in1k")
BACKBONES.add("ijepa_vith14", _TIMM, "I-JEPA ViT-H/14", model_name="vit_huge_patch14_gap_224.in1k_ijepa")
BACKBONES.add("mocov3_vitb16", _TIMM, "MoCo v3 ViT-B/16 (not in timm: needs `backbone.weights: <file>`)",
              model_name="vit_base_patch16_224", external_weights="MoCo v3 vit-b-300ep.pth.tar from the MoCo v3 release",
              release_file="vit-b-300ep.pth.tar", release_url="https://dl.fbaipublicfiles.com/moco-v3/vit-b-300ep/")
BACKBONES.add("ibot_vitb16", _TIMM, "iBOT ViT-B/16 (not in timm: needs `backbone.weights: <file>`)",
              model_name="vit_base_patch16_224", external_weights="iBOT checkpoint_teacher.pth from the iBOT release",
              release_file="checkpoint_teacher.pth",
              release_url="the iBOT README (github.com/bytedance/ibot), ViT-B/16 ImageNet-1k pretrained teacher")
BACKBONES.add("random_vit", "digit_bench.backbones:random_vit", "seeded random-init timm ViT (CPU tests, a no-learning control)")
BACKBONES.add("pixels", "digit_bench.backbones:pixels", "raw pixel patches as features (a no-network control)")
for _name, _doc in (("dino_tiny", "DINO self-distillation"), ("mae_tiny", "MAE masked reconstruction"),
                    ("sup_tiny", "supervised classifier (discriminative control)")):
    BACKBONES.add(_name, "digit_bench.backbones:pretrained_tiny", f"tiny timm ViT trained here by {_doc} (pretrain_ssl stage)",
                  method=_name.removesuffix("_tiny"))

TOKENIZERS = Registry("tokenizer")
TOKENIZERS.add("kmeans", "digit_bench.tokenizers.kmeans:fit_kmeans", "DiGIT: K-Means on frozen backbone patch features")
TOKENIZERS.add("vqgan", "digit_bench.models.vqgan:VQGAN", "VQGAN codes (the reconstructive baseline)")

GENERATORS = Registry("generator")
GENERATORS.add("digit", "digit_bench.generators.digit:GENERATOR", "DiGIT: GPT on K-Means tokens, then stage 2 to VQGAN tokens, then pixels")
GENERATORS.add("vqgan_ar", "digit_bench.generators.vqgan_ar:GENERATOR", "baseline: the same GPT on VQGAN tokens")
GENERATORS.add("ldm", "digit_bench.generators.ldm:GENERATOR", "baseline: latent diffusion (diffusers VAE + denoiser, DDIM)")
GENERATORS.add("maskgit_vq", "digit_bench.generators.maskgit_vq:GENERATOR", "baseline: MaskGIT (parallel decoding) on VQGAN tokens")

EXTRACTORS = Registry("extractor")
EXTRACTORS.add("inception", "digit_bench.eval.fidelity:inception_extractor", "torch-fidelity inception-v3-compat (standard FID/IS)")
EXTRACTORS.add("dinov2", "digit_bench.eval.fidelity:dinov2_extractor", "torch-fidelity DINOv2 ViT-L/14 (FD_DINOv2)")
EXTRACTORS.add("local", "digit_bench.eval.fidelity:local_extractor", "small classifier trained on the dataset's own train split")

METRICS = Registry("metric")
for _metric in _metric_registry.METRICS:  # get(m)() -> True/False/None: its direction
    METRICS.add(_metric.name, "digit_bench.report:higher_is_better", _metric.protocol, name=_metric.name)

ALL = {"datasets": DATASETS, "backbones": BACKBONES, "tokenizers": TOKENIZERS, "generators": GENERATORS,
       "extractors": EXTRACTORS, "metrics": METRICS}
