"""Content-addressed, atomically published artifact directories (one per stage output).

Layout: `<root>/<stage>/<prefix>-<hash10>/` holding the stage's data files, `manifest.json` and `DONE` (written
last). The hash covers the stage name, its resolved config, its parents' ids and the stage's integer VERSION, so a
new K-Means seed re-keys every token, checkpoint and sample below it while a codebook sweep reuses one feature dump.

Writing happens in `<id>.work/` under an exclusive file lock (`<id>.lock`); the finished directory is published
with one `os.rename` after every file and directory in it is fsynced and leftover temporary files (`*.tmp-<pid>`
of a killed save) are removed. Readers trust only directories that exist under their final name with `DONE` inside,
so a crash mid-write leaves nothing that is later trusted. Resumable stages (training, long dumps) find their
partial `.work/` directory again after a crash or preemption and continue; the others start from an empty one. The
manifest's `wall_s` adds up every attempt (`<id>.work/.attempts.json` carries the time of killed ones).

The manifest lists every data file with its size and BLAKE2b digest. `lookup` checks sizes (a stat per file), so a
truncated, missing or garbled file makes the artifact a UserError naming it and `digit-bench verify --repair`;
`verify` also checks digests. External inputs (weight files, data folders, npz references) enter the id by content
(`content_keys`), so replacing a file under the same path re-keys everything made from it. Every path the store
creates or deletes is checked to lie under the root (`Store.path`); stage names and ids are plain slugs.
Ideas from torch-fidelity's composed cache names and `torch_atomic_save`, and nanoGPT's `meta.pkl`.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import hashlib
import json
import os
import platform
import re
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
ATTEMPTS = ".attempts.json"  # in the work directory only: start time and wall seconds of earlier attempts
TMP_MARK = ".tmp-"  # temporary files are named <name>.tmp-<pid> (training.save_checkpoint, atomic writes)
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.=+-]{0,199}")  # a stage directory or artifact id
REPAIR_HINT = "digit-bench verify --repair --root {root}"


def default_root() -> Path:
    """--root, else $DIGIT_BENCH_ROOT, else ./runs."""
    return Path(os.environ.get("DIGIT_BENCH_ROOT", "runs"))


def slug(text: str, n: int = 80) -> str:
    """`text` as a safe file name part: characters outside [A-Za-z0-9_.=+-] become '_', no '..', starts with a
    letter or digit."""
    out = re.sub(r"[^A-Za-z0-9_.=+-]", "_", text)
    out = re.sub(r"\.{2,}", "_", out).lstrip("_.=+-")
    return out[:n] or "x"


def artifact_id(stage: str, prefix: str, cfg: dict, parents: list[str], version: int) -> str:
    """Readable prefix (slugged) + hash of (stage, config, parent ids, stage VERSION, external inputs' content)."""
    blob = {"stage": stage, "cfg": cfg, "parents": sorted(parents), "v": version}
    content = content_keys(cfg)
    if content:
        blob["content"] = content
    return f"{slug(prefix)}-{config_hash(blob)}"


# ------------------------------------------------------------------------------------------ content digests
_EXTERNAL_KEYS = ("weights", "vae_weights", "root")  # config keys holding a user's file or folder


def content_keys(cfg: Any, prefix: str = "") -> dict[str, str]:
    """{dotted key: digest} of every external file or folder the config names (missing paths are left out: the
    stage that needs one fails with its own message)."""
    out: dict[str, str] = {}
    if isinstance(cfg, dict):
        for k, v in cfg.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                out.update(content_keys(v, key + "."))
            elif isinstance(v, str) and (k in _EXTERNAL_KEYS or (k == "reference" and v.startswith("npz:"))):
                digest = path_digest(Path(v[4:] if k == "reference" else v).expanduser())
                if digest:
                    out[key] = digest
    return out


def path_digest(path: Path) -> str | None:
    """A file's content digest; a folder's digest of its files' names, sizes and mtimes (its own files and one level
    of sub-folders: an ImageFolder's class folders are listed, not read); None when the path does not exist."""
    try:
        st = path.stat()
    except (OSError, ValueError):
        return None
    if not path.is_dir():
        return file_digest(str(path), st.st_size, st.st_mtime_ns)
    entries = []
    try:
        for p in sorted(path.iterdir()):
            pst = p.stat()
            if p.is_dir():
                entries.append((p.name, "dir", pst.st_mtime_ns))
            else:
                entries.append((p.name, pst.st_size, file_digest(str(p), pst.st_size, pst.st_mtime_ns)
                                if pst.st_size <= 1 << 30 else pst.st_mtime_ns))
    except OSError:
        return None
    return config_hash({"dir": entries}, 16)


@functools.lru_cache(maxsize=4096)
def file_digest(path: str, size: int, mtime_ns: int) -> str:
    """BLAKE2b-128 hex digest of a file's bytes, computed once per (path, size, mtime) in this process."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


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


class CorruptArtifact(UserError):
    """A published artifact whose files do not match its manifest."""


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

    def inside(self, path: Path) -> Path:
        """`path`, after checking that it resolves to a place under the root (a UserError otherwise)."""
        base = self.root.resolve()
        resolved = path.resolve()
        if resolved != base and base not in resolved.parents:
            raise UserError(f"refusing to write {path}: it resolves to {resolved}, outside the artifact root {base}")
        return path

    def path(self, stage: str, aid: str) -> Path:
        for what, name in (("stage", stage), ("artifact id", aid)):
            if not NAME.fullmatch(name) or ".." in name:
                raise UserError(f"{what} {name!r} is not a plain name (letters, digits, _.=+-); fix the config value "
                                "it was made from")
        return self.inside(self.root / stage / aid)

    def ensure_writable(self) -> None:
        """Create the root, or a UserError naming why it cannot be used (a file, unwritable, no space)."""
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"--root {self.root} is a file, not a folder; give a folder for the artifacts")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create --root {self.root}: {e.strerror}; give a writable folder") from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise UserError(f"--root {self.root} is not writable; give a writable folder (or fix its permissions)")

    def lookup(self, stage: str, aid: str) -> Artifact | None:
        """The artifact if it is published (DONE present), else None; a CorruptArtifact if its files do not match
        the sizes in its manifest."""
        p = self.path(stage, aid)
        if not (p / DONE).is_file():
            return None
        problems = check_artifact(p, hashes=False)
        if problems:
            raise CorruptArtifact(f"artifact {stage}/{aid} is corrupt ({problems[0]}); quarantine and recompute it with: "
                                  + REPAIR_HINT.format(root=self.root))
        return Artifact(p)

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
        if self.lookup(stage, aid) is not None:
            log(f"[{stage}] reuse {aid}")
            return Artifact(final)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            lock = open(final.parent / f"{aid}.lock", "w")
        except OSError as e:
            raise UserError(f"cannot write under {self.root}: {e.strerror}; give a writable --root") from None
        with lock:
            t_wait = time.time()
            fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits here, then reuses the result
            if self.lookup(stage, aid) is not None:
                log(f"[{stage}] reuse {aid} (computed by another process while waiting {time.time() - t_wait:.0f}s)")
                return Artifact(final)
            work = final.parent / f"{aid}.work"
            earlier = _earlier_attempts(work)
            if work.exists() and not resumable:
                shutil.rmtree(work)
            work.mkdir(exist_ok=True)
            t0 = time.time()
            (work / ATTEMPTS).write_text(json.dumps({"start": t0, "earlier_s": earlier["earlier_s"],
                                                     "attempts": earlier["attempts"] + 1}))
            log(f"[{stage}] compute {aid}" + (f" (attempt {earlier['attempts'] + 1})" if earlier["attempts"] else ""))
            try:
                extras = fn(work)
                spec = {"stage": stage, "id": aid, "cfg": cfg, "speed": extras.get("speed", {}),
                        "parents": {role: [p.path.parent.name, p.id] for role, p in parents.items()}}
                wall = time.time() - t0
                manifest = {
                    "stage": stage,
                    "id": aid,
                    "config": cfg,
                    "parents": {role: p.id for role, p in parents.items()},
                    "parent_stages": {role: p.path.parent.name for role, p in parents.items()},
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "host": socket.gethostname(),
                    "git_commit": git_commit(),
                    "versions": library_versions(),
                    "argv": sys.argv,
                    **extras,
                    # cost of every attempt (a stage's own wall_s, e.g. fit's, is this attempt's: kept apart)
                    "wall_s": round(earlier["earlier_s"] + wall, 3),
                    "wall_s_last_attempt": round(wall, 3),
                    "attempts": earlier["attempts"] + 1,
                }
                if "wall_s" in extras:
                    manifest["stage_wall_s"] = extras["wall_s"]
                _publish(work, final, manifest, spec)
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise UserError(f"no space left on the device of {self.root} while computing {stage}/{aid}; free "
                                    "space and rerun (nothing partial was published)") from None
                raise
            log(f"[{stage}] done {aid} in {wall:.1f}s")
            return Artifact(final)


def _earlier_attempts(work: Path) -> dict:
    """Wall seconds and count of the attempts before this one. A killed attempt is taken to have ended at the last
    write into its work directory (a training step writes log.jsonl every update)."""
    try:
        info = json.loads((work / ATTEMPTS).read_text())
        start, earlier, n = float(info["start"]), float(info["earlier_s"]), int(info["attempts"])
    except (OSError, ValueError, KeyError, TypeError):
        return {"earlier_s": 0.0, "attempts": 0}
    last = max((p.stat().st_mtime for p in work.rglob("*") if p.is_file() and p.name != ATTEMPTS), default=start)
    return {"earlier_s": earlier + max(0.0, last - start), "attempts": n}


def _fsync(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durable(path: Path, data: bytes) -> None:
    """Write `data` to `path` and fsync it."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _publish(work: Path, final: Path, manifest: dict, spec: dict) -> None:
    """Drop temporary files, list and digest every file in the manifest, fsync everything, then rename into place."""
    for tmp in [p for p in work.rglob(f"*{TMP_MARK}*") if p.is_file()]:
        tmp.unlink()  # a save killed between write and rename
    files = {}
    for p in sorted(work.rglob("*")):
        if p.is_file() and not p.is_symlink() and p.name not in (MANIFEST, DONE, ATTEMPTS):
            st = p.stat()
            files[str(p.relative_to(work))] = {"size": st.st_size, "blake2b": file_digest(str(p), st.st_size, st.st_mtime_ns)}
            _fsync(p)
    manifest["files"] = files
    write_durable(work / MANIFEST, json.dumps(manifest, indent=1, default=_json_default).encode())
    for d in [*sorted({p.parent for p in work.rglob("*")}, key=lambda q: -len(q.parts)), work]:
        _fsync(d, directory=True)
    (work / ATTEMPTS).unlink(missing_ok=True)
    # DONE holds the id and the spec that recomputes the artifact (verify --repair), written last
    write_durable(work / DONE, (manifest["id"] + "\n" + json.dumps(spec, default=_json_default) + "\n").encode())
    _fsync(work, directory=True)
    os.rename(work, final)
    _fsync(final.parent, directory=True)


def check_artifact(path: Path, hashes: bool) -> list[str]:
    """Problems of a published artifact: unreadable manifest, missing/extra/resized files, and (hashes=True) files
    whose digest differs. An artifact from before file lists were recorded is only checked for a readable manifest."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        files = manifest.get("files")
    except (OSError, ValueError, AttributeError):
        return [f"{MANIFEST} is missing or not valid JSON"]
    if files is None:
        return []
    problems = []
    for rel, meta in files.items():
        p = path / rel
        try:
            st = p.stat()
        except OSError:
            problems.append(f"{rel} is missing")
            continue
        if st.st_size != meta["size"]:
            problems.append(f"{rel} has {st.st_size} bytes, the manifest says {meta['size']}")
        elif hashes and file_digest(str(p), st.st_size, st.st_mtime_ns) != meta["blake2b"]:
            problems.append(f"{rel} does not match its recorded digest")
    if hashes:
        known = set(files) | {MANIFEST, DONE}
        problems += [f"{p.relative_to(path)} is not in the manifest" for p in sorted(path.rglob("*"))
                     if p.is_file() and not p.is_symlink() and str(p.relative_to(path)) not in known]
    return problems


def artifact_spec(path: Path) -> dict | None:
    """The spec (stage, id, cfg, speed, parents) that recomputes a published artifact: from DONE, else from its manifest."""
    try:
        lines = (path / DONE).read_text().split("\n", 1)
        return json.loads(lines[1])
    except (OSError, ValueError, IndexError):
        pass
    try:
        m = json.loads((path / MANIFEST).read_text())
        stages = m.get("parent_stages") or {}
        parents = {}
        for role, pid in m["parents"].items():
            stage = stages.get(role) or next((d.parent.name for d in path.parent.parent.glob(f"*/{pid}")), None)
            if stage is None:
                return None
            parents[role] = [stage, pid]
        return {"stage": m["stage"], "id": m["id"], "cfg": m["config"], "speed": m.get("speed", {}), "parents": parents}
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        return None


def published(root: Path) -> list[Path]:
    """Every published artifact directory under `root` (`<stage>/<id>/DONE`)."""
    return sorted(p.parent for p in Path(root).glob(f"*/*/{DONE}") if NAME.fullmatch(p.parent.name)
                  and not p.parent.name.endswith(".work"))


def _json_default(o: Any) -> Any:
    """numpy scalars/arrays and paths in manifests."""
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
