"""Artifact -> model: every loader a stage (or a command) uses to read a parent artifact back, plus the device the
stages run on and the JSON files they write. Stages import from here and from models/, eval/, tokenizers/, never from
another stage.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from digit_bench.artifacts import Artifact
from digit_bench.config import BackboneConfig, VQGANConfig, build

TOKEN_SPLITS = ("train", "val", "test")  # the splits every token artifact (K-Means or VQ) holds


def device() -> torch.device:
    """This task's device: training.device_for's choice (CUDA of its local rank, else the CPU)."""
    from digit_bench.training import device_for

    return device_for()


def device_info() -> dict:
    """Manifest fields: which device ran the stage and the peak memory it used."""
    dev = device()
    if dev.type == "cuda":
        return {"device": torch.cuda.get_device_name(dev), "peak_mem_mb": round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)}
    import resource

    return {"device": f"cpu x{torch.get_num_threads()}", "peak_mem_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def save_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def load_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def load_backbone(backbone: dict, parents: dict[str, Artifact]):
    """The backbone of config dict `backbone`; a tiny SSL backbone takes its weights from the `ssl` parent."""
    from digit_bench.backbones import build_backbone

    bcfg = build(BackboneConfig, backbone)
    if "ssl" in parents:
        bcfg = dataclasses.replace(bcfg, weights=str(parents["ssl"] / "backbone.pt"))
    return build_backbone(bcfg)


def load_gpt(art: Artifact):
    """The GPT of a `train` artifact (weights from ckpt.pt, architecture from model.json), in eval mode."""
    from digit_bench.models.gpt import GPT, GPTConfig
    from digit_bench.training import load_checkpoint

    model = GPT(GPTConfig(**load_json(art / "model.json")["gpt"]))
    model.load_state_dict(load_checkpoint(art / "ckpt.pt")["model"])
    return model.to(device()).eval()


def build_decoder(kind: str, arch: dict):
    """The stage-2 model of `kind` from its architecture dict (model.json)."""
    if kind == "ar":
        from digit_bench.models.gpt import GPT, GPTConfig

        return GPT(GPTConfig(**arch))
    from digit_bench.models.maskgit import MaskGIT, MaskGITConfig

    return MaskGIT(MaskGITConfig(**arch))


def load_decoder(art: Artifact):
    """(kind, model) of a `stage2` artifact, in eval mode on the stage device."""
    from digit_bench.training import load_checkpoint

    meta = load_json(art / "model.json")
    model = build_decoder(meta["kind"], meta["arch"])
    model.load_state_dict(load_checkpoint(art / "ckpt.pt")["model"])
    return meta["kind"], model.to(device()).eval()


def load_vqgan(art: Artifact):
    """The VQGAN of a `vqgan` artifact, in eval mode on the stage device."""
    from digit_bench.models.vqgan import VQGAN, load_taming_checkpoint

    meta = load_json(art / "vqgan.json")
    model = VQGAN(build(VQGANConfig, meta["vqgan"]), meta["resolution"], arch=meta["arch"])
    load_taming_checkpoint(model, meta["weights"] if meta["external"] else art / "vqgan.pt")
    return model.to(device()).eval()


def load_vae(art: Artifact):
    """The diffusers VAE of a `vae` artifact, on the stage device."""
    from digit_bench.models.ldm import load_vae as load_folder

    return load_folder(art / art.manifest["vae_folder"]).to(device())  # an absolute path stays as it is


def load_extractor(name: str, weights: str | None, parents: dict[str, Artifact]):
    """The resolved FD extractor; `local` takes its classifier from the `classifier` parent."""
    from digit_bench.registry import EXTRACTORS

    if name == "local":
        weights = str(parents["classifier"] / "classifier.pt")
    return EXTRACTORS.get(name)(weights=weights)
