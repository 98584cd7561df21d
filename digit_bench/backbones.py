"""Frozen feature extractors whose patch features K-Means turns into DiGIT tokens.

A `FeatureBackbone` wraps a timm ViT and returns the patch features of one block, together with the backbone's own
preprocessing (mean, std, input size), so the one transform is used both for the K-Means feature dump and for
tokenisation (the official DiGIT code uses different transforms for the two; see the parity test).

Layer convention (paper §1.3, DiGIT's modified `get_intermediate_layers`): `layer=-3` is the paper's "layer 3",
the third-from-last block (block index 9 of 12 for ViT-B), followed by the model's final norm, with the prefix
tokens (CLS and registers) dropped. Positive values index blocks from 0. timm's `forward_intermediates` does
exactly this: `norm=True` applies `model.norm` to the taken block, and it splits the prefix tokens off unless
`return_prefix_tokens=True`.

Builders (registered in `digit_bench/registry.py`, each called with the `BackboneConfig` fields it names; none takes
other keyword arguments):
- `timm_backbone`: pretrained weights from the timm/HF cache or an explicit weight file, never random weights.
- `random_vit`: a seeded random-init timm ViT (CPU tests, a no-learning control).
- `pixels`: raw pixel patches as features (a no-network control).
- `pretrained_tiny`: a tiny timm ViT trained here by the `pretrain_ssl` stage.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Sequence

import huggingface_hub
import numpy as np
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, resolve_model_data_config
from timm.models import VisionTransformer
from tqdm import tqdm

from digit_bench.config import BackboneConfig
from digit_bench.errors import UserError
from digit_bench.training import seeded_init
from digit_bench.weights import load_weights


class FeatureBackbone(nn.Module):
    """Patch features (B, T, D) of block `layer` of a timm ViT, from uint8 or [0, 1] float images.

    Attributes: name, layer, mean, std (per-channel, RGB), input_size (square side the model sees), patch_size,
    embed_dim (feature width D), num_layers (blocks), grid (tokens per side; T = grid**2).
    """

    def __init__(self, model: nn.Module | None, *, name: str, layer: int, mean: Sequence[float],
                 std: Sequence[float], input_size: int, patch_size: int, embed_dim: int, num_layers: int):
        super().__init__()
        if num_layers and not -num_layers <= layer < num_layers:
            raise UserError(f"backbone.layer={layer} is out of range for {name} with {num_layers} blocks; "
                            f"use -{num_layers}..{num_layers - 1} (-3 = the paper's layer 3)")
        if input_size % patch_size:
            raise UserError(f"backbone {name}: img_size {input_size} is not a multiple of patch_size {patch_size}")
        self.model = None if model is None else model.eval().requires_grad_(False)
        self.name, self.layer, self.num_layers = name, layer, num_layers
        self.mean, self.std = tuple(mean), tuple(std)
        self.input_size, self.patch_size, self.embed_dim = input_size, patch_size, embed_dim
        self.grid = input_size // patch_size
        self.register_buffer("mean_t", torch.tensor(self.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std_t", torch.tensor(self.std).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_timm(cls, model: nn.Module, *, name: str, layer: int, mean: Sequence[float] | None = None,
                  std: Sequence[float] | None = None) -> "FeatureBackbone":
        """Wrap a timm ViT; mean/std default to its pretrained cfg, geometry is read from the model itself."""
        # NOTE: the input size comes from patch_embed, not the pretrained cfg: DINOv2's cfg says 518 even when the
        # model was built with img_size=224.
        cfg = resolve_model_data_config(model)
        return cls(model, name=name, layer=layer, mean=mean or cfg["mean"], std=std or cfg["std"],
                   input_size=model.patch_embed.img_size[0], patch_size=model.patch_embed.patch_size[0],
                   embed_dim=model.embed_dim, num_layers=len(model.blocks))

    @property
    def num_tokens(self) -> int:
        return self.grid * self.grid

    def transform(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> normalised float (B, 3, S, S) at the backbone's input size."""
        x = images.permute(0, 3, 1, 2).float() / 255  # (B, 3, H, W) in [0, 1]
        return self.normalize(x)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """float (B, 3, H, W) in [0, 1] -> bicubic resize to (S, S), then the backbone's mean/std."""
        if x.shape[-2:] != (self.input_size, self.input_size):
            # paper: F.interpolate(..., mode='bicubic') from 256 to 224, no antialias
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bicubic", align_corners=False)
        return (x - self.mean_t) / self.std_t  # (B, 3, S, S)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised (B, 3, S, S) -> patch features (B, T, D) of block `layer`, final norm applied."""
        return self.model.forward_intermediates(x, indices=[self.layer], norm=True, output_fmt="NLC",
                                                intermediates_only=True, stop_early=True)[0]  # (B, T, D)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3), or float (B, 3, H, W) in [0, 1] (noisy images, not re-quantised) -> (B, T, D)."""
        x = self.transform(images) if images.dtype == torch.uint8 else self.normalize(images)
        return self.features(x)


class PixelPatches(FeatureBackbone):
    """Raw pixel patches as features: (B, T, 3 * p * p), standardised with ImageNet mean/std (no network)."""

    def __init__(self, *, name: str, patch_size: int, img_size: int):
        super().__init__(None, name=name, layer=0, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
                         input_size=img_size, patch_size=patch_size, embed_dim=3 * patch_size**2, num_layers=0)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        B, C, _, _ = x.shape
        g, p = self.grid, self.patch_size
        x = x.reshape(B, C, g, p, g, p)  # (B, 3, g, p, g, p)
        x = x.permute(0, 2, 4, 1, 3, 5)  # (B, g, g, 3, p, p)
        return x.reshape(B, g * g, C * p * p)  # (B, T, 3p²)


# ------------------------------------------------------------------------------------------------------- builders
def timm_backbone(model_name: str, *, layer: int, name: str | None = None, weights: str | None = None,
                  img_size: int | None = None, external_weights: str | None = None) -> FeatureBackbone:
    """A pretrained timm ViT: weights from `weights` (a file) or from the timm/HF cache; never random.

    Args:
        model_name: timm model name with its pretrained tag ("vit_base_patch14_reg4_dinov2.lvd142m").
        layer: block to read (-3 = the paper's layer 3).
        name: registered name, for messages and manifests.
        weights: explicit weight file (.pth/.safetensors). Goes through timm's checkpoint filter, so an official
            Meta DINOv2 checkpoint (`dinov2_vitb14_reg4_pretrain.pth`) loads as well as a timm one.
        img_size: input side; None = the model's own (518 for DINOv2 in timm; the paper uses 224).
        external_weights: set for backbones timm has no weights for (MoCo v3, iBOT); then `weights` is required and
            may be the original release checkpoint (encoder prefixes and heads are stripped).
    """
    name = name or model_name
    kwargs = {"img_size": img_size} if img_size else {}
    mean = std = None
    if weights is not None and Path(weights).is_file():  # a truncated or code-carrying file is named as such here,
        load_weights(weights, f"backbone {name} (backbone.weights)", mmap=True)  # not as a cache miss or mismatch
    if weights is None:
        if external_weights:
            raise UserError(f"backbone {name} ({model_name}) has no weights in timm: download {external_weights} "
                            f"and set `backbone.weights: <file>`")
        overlay = None
    elif not Path(weights).is_file():
        raise UserError(f"backbone {name}: weight file {weights} does not exist; fix `backbone.weights`")
    elif external_weights:
        # Checked against key names of the releases, not against the files (none are on this machine).
        # num_classes=0 on both sides keeps timm's load strict: a missing encoder key is an error, not random init
        overlay = dict(state_dict=_encoder_state_dict(weights), num_classes=0)
        kwargs["num_classes"] = 0
        mean, std = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD  # MoCo v3 / iBOT train with ImageNet statistics
    else:
        overlay = dict(file=str(weights))
    try:
        model = timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    except OSError as e:  # huggingface_hub's LocalEntryNotFoundError (offline, or not cached) is an OSError
        hub_id = timm.models.get_pretrained_cfg(model_name).hf_hub_id
        raise UserError(f"no pretrained weights for backbone {name}: expected {hub_id}/model.safetensors in the HF "
                        f"cache {huggingface_hub.constants.HF_HUB_CACHE} ({type(e).__name__}); set "
                        f"`backbone.weights: <file>` or pre-seed the cache with `hf download {hub_id}`") from None
    except RuntimeError as e:  # state-dict key/shape mismatch under timm's strict load
        if weights is None:
            raise
        raise UserError(f"backbone {name}: {weights} does not fit {model_name}: "
                        f"{str(e).splitlines()[0]}") from None
    model.reset_classifier(0)
    return FeatureBackbone.from_timm(model, name=name, layer=layer, mean=mean, std=std)


def _encoder_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The ViT encoder of a MoCo v3 (`module.base_encoder.*`) or iBOT (`backbone.*`) checkpoint, heads dropped."""
    sd = timm.models.load_state_dict(path)  # unwraps 'state_dict'/'model', strips 'module.', weights_only=True
    for prefix in ("base_encoder.", "backbone."):
        if any(k.startswith(prefix) for k in sd):
            sd = {k.removeprefix(prefix): v for k, v in sd.items() if k.startswith(prefix)}
    # heads (MoCo v3 projector, iBOT DINOHead) and iBOT's mask embedding are not part of the feature path
    return {k: v for k, v in sd.items() if not k.startswith(("head.", "masked_embed"))}


def random_vit(*, layer: int, patch_size: int, embed_dim: int, depth: int, num_heads: int, init_seed: int,
               img_size: int | None = 32, name: str = "random_vit") -> FeatureBackbone:
    """A timm VisionTransformer with seeded random init and ImageNet mean/std (tests, a no-learning control)."""
    with seeded_init(init_seed):
        model = VisionTransformer(img_size=img_size or 32, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
                                  num_heads=num_heads, num_classes=0)
    return FeatureBackbone.from_timm(model, name=name, layer=layer, mean=IMAGENET_DEFAULT_MEAN,
                                     std=IMAGENET_DEFAULT_STD)


def pixels(*, patch_size: int, img_size: int | None = 32, name: str = "pixels") -> FeatureBackbone:
    """Raw pixel patches (B, T, 3·p²): the no-network control, same interface as a ViT backbone."""
    return PixelPatches(name=name, patch_size=patch_size, img_size=img_size or 32)


def pretrained_tiny(method: str, *, layer: int, weights: str | None = None, name: str | None = None) -> FeatureBackbone:
    """A tiny timm ViT trained here by the `pretrain_ssl` stage, from its `backbone.pt` ({"arch", "model"})."""
    name = name or f"{method}_tiny"
    if weights is None:
        raise UserError(f"backbone {name} has no weights yet: run the pretrain_ssl stage (ssl method {method}) and "
                        f"set `backbone.weights` to its backbone.pt")
    if not Path(weights).is_file():
        raise UserError(f"backbone {name}: weight file {weights} does not exist; run the pretrain_ssl stage")
    ckpt = load_weights(weights, f"backbone {name} (backbone.weights)")
    model = VisionTransformer(**ckpt["arch"])
    model.load_state_dict(ckpt["model"])
    return FeatureBackbone.from_timm(model, name=name, layer=layer, mean=IMAGENET_DEFAULT_MEAN,
                                     std=IMAGENET_DEFAULT_STD)


def build_backbone(cfg: BackboneConfig) -> FeatureBackbone:
    """The registered backbone `cfg.name`, built from the config fields its builder names in its signature (the
    others, e.g. random_vit's `depth` for a timm backbone or the extraction `batch_size`, do not apply to it)."""
    from digit_bench.registry import BACKBONES

    builder = BACKBONES.get(cfg.name, "backbone.name")
    takes = inspect.signature(builder).parameters
    return builder(**{k: v for k, v in dataclasses.asdict(cfg).items() if k in takes})


# ----------------------------------------------------------------------------------------------------- extraction
@torch.no_grad()
def extract(backbone: FeatureBackbone, images, batch_size: int, device: str | torch.device,
            desc: str = "features", out: np.ndarray | None = None) -> np.ndarray:
    """Patch features of uint8 images (N, H, W, 3) as float16 (N, T, D), batched; bf16 autocast on CUDA.

    `images` is anything sliceable into uint8 (B, H, W, 3) arrays (a numpy array, `data.Images`), or an iterator of
    such batches (`data.iter_batches`) when `out` is given; `out` may be a preallocated (e.g.
    `np.lib.format.open_memmap`) float16 array to write into.
    """
    device = torch.device(device)
    backbone = backbone.to(device).eval()
    sliceable = hasattr(images, "__getitem__")
    n = len(images) if sliceable else len(out)
    if out is None:
        out = np.empty((n, backbone.num_tokens, backbone.embed_dim), np.float16)
    batches = (images[s:s + batch_size] for s in range(0, n, batch_size)) if sliceable else images
    start = 0
    for batch in tqdm(batches, desc=desc, unit="batch", total=-(-n // batch_size)):
        batch = torch.from_numpy(np.ascontiguousarray(batch)).to(device)  # (B, H, W, 3)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            feats = backbone(batch)  # (B, T, D)
        out[start:start + len(batch)] = feats.to(torch.float16).cpu().numpy()
        start += len(batch)
    return out
