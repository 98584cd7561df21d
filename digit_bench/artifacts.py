"""Content-addressed, atomically published artifact directories (one per stage output).

Layout: `<root>/<stage>/<prefix>-<hash10>/` holding the stage's data files, `manifest.json` and `DONE` (written
last). The hash covers the stage name, its resolved config, its parents' ids and the stage's integer VERSION, so a
new K-Means seed re-keys every token, checkpoint and sample below it while a codebook sweep reuses one feature dump.

Writing happens in `<id>.work/` under an exclusive file lock (`<id>.lock`); the finished directory is published
with one `os.rename`. Readers trust only directories that exist under their final name with `DONE` inside, so a
crash mid-write leaves nothing that is later trusted. Resumable stages (training, long dumps) find their partial
`.work/` directory again after a crash or preemption and continue; the others start from an empty one.
Ideas from torch-fidelity's composed cache names and `torch_atomic_save`, and nanoGPT's `meta.pkl`.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from digit_bench.config import config_hash
from digit_bench.errors import UserError

DONE = "DONE"
MANIFEST = "manifest.json"


def default_root() -> Path:
    """--root, else $DIGIT_BENCH_ROOT, else ./runs."""
    return Path(os.environ.get("DIGIT_BENCH_ROOT", "runs"))


def artifact_id(stage: str, prefix: str, cfg: dict, parents: list[str], version: int) -> str:
    """Readable prefix + hash of (stage, config, parent ids, stage VERSION)."""
    blob = {"stage": stage, "cfg": cfg, "parents": sorted(parents), "v": version}
    return f"{prefix}-{config_hash(blob)}"


@dataclass(frozen=True)
class Artifact:
    """A published artifact directory."""

    path: Path

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def manifest(self) -> dict:
        return json.loads((self.path / MANIFEST).read_text())

    def __truediv__(self, name: str) -> Path:
        return self.path / name


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def library_versions() -> dict[str, str]:
    """Versions of the libraries whose behaviour changes results."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("torch", "timm", "faiss-cpu", "faiss-gpu-cu12", "torch-fidelity", "diffusers", "numpy", "digit_bench"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


def runtime_info() -> dict:
    """Manifest fields of the process computing a stage: torch's thread count and device, the BLAS/OpenMP
    libraries loaded (threadpoolctl: API, version, threads, kernel family) and the CPU model."""
    import torch
    from threadpoolctl import threadpool_info

    cpu = next((line.split(":", 1)[1].strip() for line in _read_lines("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    libs = [{k: lib.get(k) for k in ("internal_api", "version", "num_threads", "threading_layer", "architecture")}
            | {"file": Path(lib["filepath"]).name} for lib in threadpool_info()]
    return {"torch_threads": torch.get_num_threads(), "cuda": torch.cuda.get_device_name() if torch.cuda.is_available()
            else None, "cpu": cpu, "blas_openmp": libs}


def _read_lines(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


class Store:
    """The artifact root.

    Args:
        root: directory holding `<stage>/<id>/` artifacts (created on demand).
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, stage: str, aid: str) -> Path:
        return self.root / stage / aid

    def lookup(self, stage: str, aid: str) -> Artifact | None:
        """The artifact if it is published (DONE present), else None."""
        p = self.path(stage, aid)
        return Artifact(p) if (p / DONE).is_file() else None

    def require(self, stage: str, aid: str, made_by: str) -> Artifact:
        """The artifact, or a UserError naming the command that makes it."""
        art = self.lookup(stage, aid)
        if art is None:
            raise UserError(f"missing {stage} artifact {aid} under {self.root}; make it first with: {made_by}")
        return art

    def lookup_or_compute(self, stage: str, aid: str, cfg: dict, parents: dict[str, Artifact],
                          fn: Callable[[Path], dict], *, resumable: bool = False, log: Callable[[str], None] = print
                          ) -> Artifact:
        """Return the published artifact, computing and publishing it first if needed.

        Args:
            stage: stage name (the directory under root).
            aid: artifact id from `artifact_id`.
            cfg: the stage's resolved config (saved in the manifest).
            parents: role -> parent artifact (ids saved in the manifest).
            fn: writes the data files into the work directory it is given; returns manifest extras
                (shapes, counts, stats).
            resumable: keep a partial work directory from an earlier attempt (fn resumes from it).
            log: where progress lines go.
        """
        final = self.path(stage, aid)
        if (final / DONE).is_file():
            log(f"[{stage}] reuse {aid}")
            return Artifact(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        with open(final.parent / f"{aid}.lock", "w") as lock:
            t_wait = time.time()
            fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits here, then reuses the result
            if (final / DONE).is_file():
                log(f"[{stage}] reuse {aid} (computed by another process while waiting {time.time() - t_wait:.0f}s)")
                return Artifact(final)
            work = final.parent / f"{aid}.work"
            if work.exists() and not resumable:
                shutil.rmtree(work)
            work.mkdir(exist_ok=True)
            log(f"[{stage}] compute {aid}")
            t0 = time.time()
            extras = fn(work)
            manifest = {
                "stage": stage,
                "id": aid,
                "config": cfg,
                "parents": {role: p.id for role, p in parents.items()},
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "wall_s": round(time.time() - t0, 3),
                "host": socket.gethostname(),
                "git_commit": git_commit(),
                "versions": library_versions(),
                "argv": sys.argv,
                **extras,
            }
            (work / MANIFEST).write_text(json.dumps(manifest, indent=1, default=_json_default))
            with open(work / DONE, "w") as f:
                f.write(aid + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.rename(work, final)
            log(f"[{stage}] done {aid} in {manifest['wall_s']:.1f}s")
            return Artifact(final)


def _json_default(o: Any) -> Any:
    """numpy scalars/arrays and paths in manifests."""
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
