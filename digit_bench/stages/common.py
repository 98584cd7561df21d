"""Small helpers shared by the stage files: device choice, peak memory, backbones from parent artifacts, npy I/O."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from digit_bench.artifacts import Artifact
from digit_bench.config import BackboneConfig, build
from digit_bench.training import device_for


def device() -> torch.device:
    """This task's device: training.device_for's choice (CUDA of its local rank, else the CPU)."""
    return device_for()


def device_info() -> dict:
    """Manifest fields: which device ran the stage and the peak memory it used."""
    dev = device()
    if dev.type == "cuda":
        return {"device": torch.cuda.get_device_name(dev), "peak_mem_mb": round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)}
    import resource

    return {"device": f"cpu x{torch.get_num_threads()}", "peak_mem_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def backbone_from(cfg: dict, parents: dict[str, Artifact]):
    """The stage's backbone; a tiny SSL backbone takes its weights from the pretrain_ssl parent artifact."""
    from digit_bench.backbones import build_backbone

    bcfg = build(BackboneConfig, cfg["backbone"])
    if "ssl" in parents:
        bcfg = dataclasses.replace(bcfg, weights=str(parents["ssl"] / "backbone.pt"))
    return build_backbone(bcfg)


def save_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def load_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def load_gpt(art: Artifact):
    """The GPT of a `train` or `stage2` artifact (weights from ckpt.pt, architecture from model.json), in eval mode."""
    from digit_bench.models.gpt import GPT, GPTConfig
    from digit_bench.training import load_checkpoint

    model = GPT(GPTConfig(**load_json(art / "model.json")["gpt"]))
    model.load_state_dict(load_checkpoint(art / "ckpt.pt")["model"])
    return model.to(device()).eval()
