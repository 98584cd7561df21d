"""Every file a sweep will read, checked on disk before anything is computed or submitted.

`missing_files(sweep)` walks each run's resolved config and lists what is not there: the dataset folder, each
backbone's weight file (an explicit one, a `weights:` map entry, a release file of a backbone timm has no weights
for, or timm's cached hub weights), the VQGAN and VAE the paper profile loads, the FD extractor's weights and an
`npz:` reference. `check_files` raises the first as a one-line UserError naming the file, the config key that wants
it and where to get it; `validate` and `sweep` call it, so a paper run never dies hours in for a missing file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from digit_bench.config import ExperimentConfig, Sweep
from digit_bench.errors import UserError

MAGE_VQGAN = ("MAGE's release (github.com/LTH14/mage README, Google Drive id 13S_unB87n6KKuuMdyMnyExW0G1kplTbP); "
              "see baselines/README.md")


@dataclass(frozen=True)
class Missing:
    path: str  # the file or folder that is not there
    key: str  # the config key that wants it
    source: str  # where to get it
    run_id: str


def _backbone(cfg: ExperimentConfig) -> tuple[str, str, str] | None:
    """(path, key, source) of the backbone's weights when they are not on disk, else None."""
    from digit_bench.registry import BACKBONES

    target, kw = BACKBONES.entry(cfg.backbone.name)
    if not target.endswith(":timm_backbone"):
        return None  # trained here (pretrain_ssl) or no weights at all
    release = f"{kw.get('release_file', 'the weight file')} from {kw.get('release_url', 'its release')}"
    if cfg.backbone.weights:
        if Path(cfg.backbone.weights).is_file():
            return None
        key = "weights" if dict(cfg.weights).get(cfg.backbone.name) else "backbone.weights"
        return cfg.backbone.weights, f"{key} ({cfg.backbone.name})", release
    if kw.get("external_weights"):
        return (f"$DIGIT_BENCH_WEIGHTS/{kw.get('release_file')}", f"weights ({cfg.backbone.name})",
                f"{release}; timm has no weights for it, name the file in the `weights:` map or backbone.weights")
    import huggingface_hub
    import timm

    hub_id = timm.models.get_pretrained_cfg(kw["model_name"]).hf_hub_id
    for filename in ("model.safetensors", "pytorch_model.bin"):
        if isinstance(huggingface_hub.try_to_load_from_cache(hub_id, filename), str):
            return None
    return (f"{huggingface_hub.constants.HF_HUB_CACHE}/models--{hub_id.replace('/', '--')}",
            f"backbone.name ({cfg.backbone.name}, timm hub weights)",
            f"`hf download {hub_id}` on a machine with network (same HF_HOME), or {release} in the `weights:` map")


def _data_root(cfg: ExperimentConfig) -> tuple[str, str, str] | None:
    if cfg.data.name == "imagenet":
        base = Path(cfg.data.root or os.environ.get("DIGIT_BENCH_DATA", "") or "imagenet")
        for part in ("train", "val"):
            if not (base / part).is_dir():
                return (str(base / part), "data.root", "ImageNet-1k (image-net.org) as ImageFolders train/ and val/ "
                        "with one sub-folder per class (val re-sorted into class folders)")
    elif cfg.data.name == "folder" and cfg.data.root and not Path(cfg.data.root).is_dir():
        return cfg.data.root, "data.root", "an ImageFolder with one sub-folder per class"
    return None


def _extractors(cfg: ExperimentConfig) -> list[tuple[str, str, str]]:
    import torch

    from digit_bench.eval.fidelity import DINOV2_FILE, DINOV2_URL, INCEPTION_FILE, URL_INCEPTION_V3

    out = []
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    for name in (cfg.eval.extractor, *cfg.eval.extra_extractors):
        if name == "inception":
            path = Path(cfg.eval.weights) if cfg.eval.weights else hub / INCEPTION_FILE
            if not path.is_file():
                out.append((str(path), "eval.weights" if cfg.eval.weights else "eval.extractor (inception)",
                            f"{URL_INCEPTION_V3} (torch-fidelity), into $TORCH_HOME/hub/checkpoints or eval.weights"))
        elif name == "dinov2" and not (hub / DINOV2_FILE).is_file():
            out.append((str(hub / DINOV2_FILE), "eval.extra_extractors (dinov2)", f"{DINOV2_URL} into the torch.hub cache"))
    if cfg.eval.reference.startswith("npz:") and not Path(cfg.eval.reference[4:]).is_file():
        out.append((cfg.eval.reference[4:], "eval.reference", "ADM's reference batches (VIRTUAL_imagenet256_labeled.npz)"))
    return out


def run_missing(cfg: ExperimentConfig) -> list[tuple[str, str, str]]:
    """(path, key, source) of every file one run reads that is not on disk."""
    out = [m for m in (_data_root(cfg),) if m]
    from digit_bench.engine.dag import ancestors, run_dag

    stages = {n.stage for n in ancestors(list(run_dag(cfg).values()))}  # what the generator's recipe runs
    if "extract" in stages:
        out += [m for m in (_backbone(cfg),) if m]
    if "vqgan" in stages and cfg.vqgan.weights and not Path(cfg.vqgan.weights).is_file():
        out.append((cfg.vqgan.weights, "vqgan.weights", MAGE_VQGAN))
    if "vae" in stages and cfg.ldm.vae_weights and not Path(cfg.ldm.vae_weights).is_dir():
        out.append((cfg.ldm.vae_weights, "ldm.vae_weights", "a diffusers AutoencoderKL folder (stabilityai/sd-vae-ft-ema)"))
    return out + _extractors(cfg)


def missing_files(sweep: Sweep) -> list[Missing]:
    """Every missing file of every run, each (path, key) once, in run order."""
    seen: dict[tuple[str, str], Missing] = {}
    for run in sweep.runs:
        for path, key, source in run_missing(run.cfg):
            seen.setdefault((path, key), Missing(path, key, source, run.run_id))
    return list(seen.values())


def check_files(sweep: Sweep) -> None:
    """Raise a UserError naming the first missing file, the key that wants it and where to get it."""
    missing = missing_files(sweep)
    if missing:
        m = missing[0]
        more = f" ({len(missing) - 1} more missing: {', '.join(x.path for x in missing[1:4])})" if len(missing) > 1 else ""
        raise UserError(f"missing {m.path}: {m.key} of run {m.run_id} needs it; get {m.source}{more}")
