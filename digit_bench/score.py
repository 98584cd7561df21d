"""`digit-bench score`: FD / IS / KID / precision / recall of images generated anywhere (LlamaGen's, DiT's, yours),
on exactly the path a sweep row takes, so the number can sit in a sweep's table.

    images (folder | .npz | glob) --register--> imported/<label>-<hash>/images.npz
        --evaluate stage (stages/evaluate.py, the sweep's own node)--> metrics.json --> one CSV row (row_kind=external)

The evaluation settings (data, reference, extractor weights, bootstrap, the `local` classifier) come from a sweep
file and profile (default: ablations/_base.yaml, tiny), so the reference statistics and the local classifier are
the very artifacts the sweep uses (computed and cached under --root when missing); `--extractor` and `--reference`
override them. Pointed at a sweep row's `images.npz` with that sweep's file, profile and seed, the FD/IS equal the
row's. An ADM-style reference `.npz` (`mu`, `sigma`: the protocol of ADM/LlamaGen/DiT/VAR) gives FID and IS only,
and the row records that its protocol differs from the dataset-reference rows.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from pathlib import Path

from digit_bench.errors import UserError

log = logging.getLogger("digit_bench")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
BASE_YAML = Path(__file__).resolve().parents[1] / "ablations" / "_base.yaml"
ADM_NOTE = ("reference is mu/sigma from an external npz (ADM-style, FID/IS only, no KID/PRC); its statistics were not "
            "computed by this harness from a dataset split, so FD is not directly comparable to dataset-reference rows")


def load_images(spec: str):
    """uint8 (N, H, W, 3) images and provenance from an .npz (`images`, or ADM's `arr_0`), a folder or a glob."""
    import numpy as np
    from PIL import Image

    from digit_bench.released import file_digest

    path = Path(spec).expanduser()
    if path.suffix == ".npz":
        if not path.is_file():
            raise UserError(f"images file {path} does not exist; fix the path")
        with np.load(path) as npz:
            key = next((k for k in ("images", "arr_0") if k in npz), None)
            if key is None:
                raise UserError(f"{path} has no 'images' or 'arr_0' array (keys: {', '.join(npz.files)}); save the "
                                "samples as uint8 (N, H, W, 3) under one of those names")
            images = npz[key]
        provenance = {"input": str(path), "files": 1, "sha256": file_digest(path)}
    else:
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            matches = map(Path, glob.glob(os.path.expanduser(spec)))
            files = sorted(p for p in matches if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) at {spec}; pass a folder, a glob or an .npz")
        arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files]
        shapes = sorted({a.shape for a in arrays})
        if len(shapes) > 1:
            raise UserError(f"images at {spec} have {len(shapes)} different sizes ({shapes[0]}, {shapes[-1]}, ...); "
                            "resize them to one size first")
        images = np.stack(arrays)  # (N, H, W, 3)
        provenance = {"input": spec, "files": len(files), "first": files[0].name, "last": files[-1].name}
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise UserError(f"images from {spec} are {images.dtype} {tuple(images.shape)}; expected uint8 (N, H, W, 3)")
    return images, provenance


def reference_spec(ref: str) -> str:
    """`dataset:<name>:<split>` and `npz:<file>` as given; a bare `.npz` path becomes `npz:<absolute path>`."""
    if ref.startswith(("dataset:", "npz:")):
        return ref if ref.startswith("dataset:") else f"npz:{Path(ref[4:]).expanduser().resolve()}"
    if ref.endswith(".npz"):
        return f"npz:{Path(ref).expanduser().resolve()}"
    raise UserError(f"--reference {ref!r}: use dataset:<name>:<train|val|test>, npz:<file> or a path to an .npz")


def score_config(config: str | Path, profile: str, sets: list[str], extractors: list[str] | None,
                 reference: str | None, num_reference: int | None, seed: int | None):
    """The ExperimentConfig of the sweep's first run, with the evaluation overrides of the command line."""
    from digit_bench.config import Override, apply_overrides, load_sweep

    cfg = load_sweep(config, profile, sets).runs[0].cfg
    ov = []
    if extractors:
        ov += [Override("eval.extractor", extractors[0], "--extractor"),
               Override("eval.extra_extractors", list(extractors[1:]), "--extractor")]
    if reference:
        ov.append(Override("eval.reference", reference_spec(reference), "--reference"))
    if num_reference is not None:
        ov.append(Override("eval.num_reference", num_reference, "--num-reference"))
    if seed is not None:
        ov.append(Override("seed", seed, "--seed"))
    return apply_overrides(cfg, ov)


def score(images, provenance: dict, cfg, store, label: str) -> tuple[dict, dict]:
    """(metrics row of the evaluate stage, artifact ids) for uint8 images (N, H, W, 3) under `cfg`'s protocol.

    The bootstrap seed is `cfg.seed`, as for a sweep run's row.
    """
    from digit_bench.engine.dag import compute, imported_node, set_threads
    from digit_bench.generators.common import evaluate_node
    from digit_bench.released import import_images

    art = import_images(store, images, label, provenance)
    node = evaluate_node(cfg, imported_node("images", art.id), f"external-{label}", cfg.seed, "external")
    set_threads([node], cfg.threads)  # as in a sweep's DAG: the reference and judge are the sweep's own artifacts
    metrics = compute(store, node, log=log.info)
    return json.loads((metrics / "metrics.json").read_text()), {"images": art.id, "metrics": node.id,
                                                                **{r: p.id for r, p in node.parents.items()}}


def external_row(metrics: dict, ids: dict, cfg, provenance: dict, *, sweep: str, label: str, images) -> dict:
    """One row in results.csv's column schema, `row_kind=external`, with provenance and protocol notes."""
    notes = []
    if cfg.eval.reference.startswith("npz:"):
        notes.append(ADM_NOTE)
    if images.shape[1] != cfg.data.image_size:
        notes.append(f"images are {images.shape[1]}x{images.shape[2]}, the sweep's {cfg.data.image_size}x"
                     f"{cfg.data.image_size} (the extractor resizes)")
    row = {"run_id": ids["metrics"], "sweep": sweep, "profile": cfg.profile, "row_kind": "external",
           "generator": label, "seed": cfg.seed, **{k: v for k, v in metrics.items() if k != "label"},
           "protocol_differs": bool(notes), "protocol_note": "; ".join(notes),
           "provenance": json.dumps(provenance, sort_keys=True)}
    row.update({f"artifacts.{role}": aid for role, aid in ids.items()})
    return row


def export_reference(store, cfg, path: Path) -> None:
    """The cached reference statistics of the first extractor as an npz: mu, sigma, extractor, weights, protocol."""
    import numpy as np

    from digit_bench.eval.fidelity import load_reference
    from digit_bench.engine.dag import compute, set_threads
    from digit_bench.generators.common import reference_node

    node = reference_node(cfg, cfg.eval.extractor)
    set_threads([node], cfg.threads)
    art = compute(store, node, log=log.info)
    if art.manifest["kind"] != "dataset":
        raise UserError("--export-reference needs a dataset: reference (an npz reference is already a file)")
    ref = load_reference(art / "reference.pt")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, mu=ref.mu, sigma=ref.sigma, extractor=ref.extractor, weights_sha256=ref.weights_sha256,
             num_images=ref.num_images, protocol=f"{cfg.eval.reference} {ref.num_images} images, reference artifact "
                                                 f"{art.id}")


def cmd_score(args) -> dict:
    import pandas as pd

    from digit_bench.artifacts import Store, default_root
    from digit_bench.loaders import load_extractor

    store = Store(args.root or default_root())
    cfg = score_config(args.config, args.profile, args.sets, args.extractor, args.reference, args.num_reference,
                       args.seed)
    for name in (cfg.eval.extractor, *cfg.eval.extra_extractors):  # missing weights fail now, not after training
        if name != "local":
            load_extractor(name, cfg.eval.weights, {})
    if args.export_reference:
        export_reference(store, cfg, Path(args.export_reference))
    images, provenance = load_images(args.images)
    label = args.label or Path(args.images.rstrip("/*")).stem or "external"
    metrics, ids = score(images, provenance, cfg, store, label)
    row = external_row(metrics, ids, cfg, provenance, sweep=args.sweep, label=label, images=images)
    out = Path(args.out) if args.out else Path(args.results) / args.sweep / cfg.profile / "external" / f"{label}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([row]).to_csv(out, index=False)
    return {"csv": str(out), **{k: v for k, v in row.items() if not k.startswith(("artifacts.", "provenance"))}}
