"""Stage: reference statistics, the real side of every FD/KID/precision/recall, for one extractor.

`dataset:<name>:<split>`: the real images of a split (DiGIT's protocol: ImageNet val, 50k, Resize 256 + CenterCrop
256, here the `test` part of the `imagenet` dataset) through the extractor; features, mu and sigma are stored in
`reference.pt`. `npz:<file>`: ADM-style mu/sigma (the protocol of LlamaGen/VAR/DiT/MAR), FID only; the file's path
and hash go to the manifest. Keyed by extractor and its weights, so a reference is never reused across weights.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from digit_bench.artifacts import Artifact
from digit_bench.config import DataConfig
from digit_bench.data import load_split
from digit_bench.errors import UserError
from digit_bench.loaders import device_info, load_extractor

VERSION = 2
KIND = "infer"  # one task
RESUMABLE = False


def parse_reference(ref: str) -> tuple[str, str, str]:
    """("dataset", name, split) or ("npz", file, "")."""
    parts = ref.split(":")
    if parts[0] == "dataset" and len(parts) == 3 and parts[2] in ("train", "val", "test"):
        return "dataset", parts[1], parts[2]
    if parts[0] == "npz" and len(parts) >= 2:
        return "npz", ref[4:], ""
    raise UserError(f"eval.reference {ref!r}: use dataset:<name>:<train|val|test> or npz:<file>")


@dataclass(frozen=True)
class Cfg:
    """The eval fields of the real side; parent: [classifier] (the local extractor)."""

    data: DataConfig
    reference: str  # dataset:<name>:<split> | npz:<file>
    extractor: str
    num_reference: Optional[int]
    weights: Optional[str]  # extractor weight file
    resize: str  # eval.reference_resize


def compute(cfg: Cfg, parents: dict[str, Artifact], out: Path) -> dict:
    from digit_bench.eval.fidelity import file_sha256, reference_features, save_reference

    kind, name, split = parse_reference(cfg.reference)
    if kind == "npz":
        return {"kind": "npz", "file": name, "sha256": file_sha256(Path(name))}
    extractor = load_extractor(cfg.extractor, cfg.weights, parents)
    data = dataclasses.replace(cfg.data, name=name, num_test=cfg.num_reference)
    part = load_split(data, split, resize=cfg.resize)
    n = len(part) if cfg.num_reference is None else min(cfg.num_reference, len(part))
    ref = reference_features(part.images.subset(np.arange(n)), extractor)  # folder images decoded as they are read
    save_reference(ref, out / "reference.pt")
    return {"kind": "dataset", "num_images": n, "extractor": extractor.name, "weights_sha256": extractor.weights_sha256,
            "skipped_files": part.skipped, **device_info()}
