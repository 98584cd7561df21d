"""Stage: an artefact made elsewhere (the released DiGIT centroids or GPT, someone's generated images), registered
under `<root>/imported/<name>-<hash10>/` by `digit-bench import` / `digit-bench score` (digit_bench/released.py).

The id hashes the kind and the sha256 of the file's content, never its path, so the same file imported on two
machines gets the same id. A run refers to it by that id (`tokenizer.centroids: km_8k-1a2b3c4d5e`); the pipeline
cannot make it, so computing it means the import was not done under this root.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from digit_bench.artifacts import Artifact
from digit_bench.errors import UserError

VERSION = 2
KIND = "infer"  # one task
RESUMABLE = False


@dataclass(frozen=True)
class Cfg:
    """No parents: the artifact is registered by `digit-bench import`, never computed."""

    kind: str  # centroids | gpt | images
    id: str  # its artifact id (content hash)


def compute(cfg: Cfg, parents: dict[str, Artifact], out: Path) -> dict:
    raise UserError(f"imported {cfg.kind} artifact {cfg.id} is not under this root; register the file "
                    f"first with `digit-bench import {cfg.kind} <file> --root <the same root>`")
