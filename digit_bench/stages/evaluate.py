"""Stage `samples_to_metrics`: FD / IS / KID / precision / recall of an image artifact, through torch-fidelity.

One column set per extractor (`fid`, `is`, ... with the standard Inception; `fd_local`, `is_local`, ... otherwise),
a bias-corrected FD with a 95% interval of the true FD (double bootstrap), the protocol string (extractor + weights hash,
reference id, sample count, resolution, tool versions), `class_acc` for class-conditional samples, and the
encoder-circularity flag: when the tokenizer's backbone is of the extractor's family (DINOv2 tokens judged by
FD_DINOv2) the row says so, and an independent extractor must be configured beside it.
Output: `metrics.json`, one flat row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from digit_bench.artifacts import Artifact
from digit_bench.errors import UserError
from digit_bench.loaders import device_info, load_extractor, save_json

VERSION = 3
KIND = "infer"  # one task
RESUMABLE = False


@dataclass(frozen=True)
class Cfg:
    """Parents: images, reference_<extractor> for each extractor, [classifier] (local judge or class_acc)."""

    eval: dict  # config.EvalConfig fields but local_train (the classifier's, a parent)
    extractors: tuple[str, ...]
    tokenizer_backbone: str  # what the circularity guard compares the extractors with
    seed: int  # the bootstrap's


def samples_to_metrics(images: np.ndarray, cfg: Cfg, parents: dict[str, Artifact]) -> dict:
    from digit_bench.eval.fidelity import circular, compute_metrics, load_reference

    ev = cfg.eval
    flags = {e: circular(cfg.tokenizer_backbone, e) for e in cfg.extractors}
    if all(flags.values()):
        raise UserError(f"every FD extractor ({', '.join(flags)}) shares the tokenizer backbone's family "
                        f"({cfg.tokenizer_backbone}); add an independent one, e.g. eval.extra_extractors: [inception]")
    row: dict = {"circular": any(flags.values()), **{f"circular_{e}": c for e, c in flags.items()}}
    for name in cfg.extractors:
        ref_art = parents[f"reference_{name}"]
        ref_meta = ref_art.manifest
        extractor = load_extractor(name, ev["weights"], parents)
        if ref_meta["kind"] == "npz":
            ref = load_reference(f"npz:{ref_meta['file']}")
            ref_id = f"npz:{ref_meta['file']}#{ref_meta['sha256']}"
        else:
            ref, ref_id = load_reference(ref_art / "reference.pt"), ref_art.id
        full = ref.features is not None
        row.update(compute_metrics(images, ref, extractor, isc=extractor.logits_layer is not None, fid=True, kid=full,
                                   prc=full, kid_subset_size=ev["kid_subset_size"], prc_neighborhood=ev["prc_neighborhood"],
                                   bootstrap=ev["bootstrap"], seed=cfg.seed, reference_id=ref_id))
    return row


def compute(cfg: Cfg, parents: dict[str, Artifact], out: Path) -> dict:
    from digit_bench.eval.fidelity import class_accuracy
    from digit_bench.models.classifier import load_classifier

    images_art = parents["images"]
    with np.load(images_art / "images.npz") as npz:
        images, labels = npz["images"], npz["labels"]
    row = {"label": images_art.id.rsplit("-", 1)[0], "source": images_art.manifest.get("source", ""),
           **samples_to_metrics(images, cfg, parents)}
    if images_art.manifest.get("conditional") and "classifier" in parents:
        row["class_acc"] = class_accuracy(images, labels, load_classifier(parents["classifier"] / "classifier.pt"))
    save_json(out / "metrics.json", row)
    return {"num_samples": len(images), **device_info()}
