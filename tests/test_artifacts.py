"""Artifact store: content ids, atomic publish, crash safety, one computation under races."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from digit_bench.artifacts import DONE, Store, artifact_id
from digit_bench.errors import UserError

CFG = st.dictionaries(st.text("abcdefgh", min_size=1, max_size=4), st.integers() | st.text(max_size=5), max_size=5)


@settings(max_examples=100, deadline=None)
@given(CFG, st.lists(st.text("0123456789abcdef", min_size=4, max_size=8), max_size=3), st.integers(0, 5))
def test_same_inputs_same_id(cfg, parents, version):
    assert artifact_id("s", "p", cfg, parents, version) == artifact_id("s", "p", dict(reversed(list(cfg.items()))),
                                                                      list(reversed(parents)), version)


@settings(max_examples=100, deadline=None)
@given(CFG, st.text("abc", min_size=1, max_size=3), st.integers(0, 5))
def test_any_change_gives_a_new_id(cfg, key, version):
    base = artifact_id("s", "p", cfg, ["a1"], version)
    assert artifact_id("s", "p", {**cfg, key + "_new": 1}, ["a1"], version) != base
    assert artifact_id("s", "p", cfg, ["a2"], version) != base
    assert artifact_id("s", "p", cfg, ["a1"], version + 1) != base
    assert artifact_id("t", "p", cfg, ["a1"], version) != base


def _write(n: int):
    def fn(out: Path) -> dict:
        (out / "x.json").write_text(json.dumps({"n": n}))
        return {"n": n}
    return fn


def test_second_call_is_a_cache_hit(root):
    store, calls = Store(root), []

    def fn(out: Path) -> dict:
        calls.append(1)
        return _write(1)(out)

    a = store.lookup_or_compute("st", "id1", {"a": 1}, {}, fn, log=lambda m: None)
    b = store.lookup_or_compute("st", "id1", {"a": 1}, {}, fn, log=lambda m: None)
    assert a.path == b.path and len(calls) == 1
    assert (a / DONE).is_file() and a.manifest["config"] == {"a": 1} and a.manifest["n"] == 1
    assert not list(a.path.parent.glob("*.work"))


def _crash_midway(root: str) -> None:
    def fn(out: Path) -> dict:
        (out / "half.bin").write_bytes(b"x" * 10)
        os.kill(os.getpid(), signal.SIGKILL)  # killed mid-write
        return {}
    Store(root).lookup_or_compute("st", "id1", {}, {}, fn, log=lambda m: None)


def test_killed_writer_leaves_nothing_trusted_and_a_rerun_recomputes(root):
    p = mp.get_context("spawn").Process(target=_crash_midway, args=(str(root),))
    p.start()
    p.join(60)
    assert p.exitcode == -signal.SIGKILL
    store = Store(root)
    assert store.lookup("st", "id1") is None
    assert not (root / "st" / "id1").exists() and (root / "st" / "id1.work" / "half.bin").exists()
    art = store.lookup_or_compute("st", "id1", {}, {}, _write(2), log=lambda m: None)
    assert json.loads((art / "x.json").read_text()) == {"n": 2} and not (art / "half.bin").exists()


def _racer(root: str, counter: str) -> None:
    def fn(out: Path) -> dict:
        with open(counter, "a") as f:
            f.write("computed\n")
        time.sleep(1.0)
        return _write(3)(out)
    Store(root).lookup_or_compute("st", "race", {}, {}, fn, log=lambda m: None)


def test_two_processes_racing_compute_once(root, tmp_path):
    counter = tmp_path / "count.txt"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_racer, args=(str(root), str(counter))) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert counter.read_text().count("computed") == 1
    assert Store(root).lookup("st", "race") is not None


# ------------------------------------------------------------------------------------------- integrity
def _real_images(root: Path):
    """A small real stage artifact (digits val images) and its node."""
    import dataclasses

    from digit_bench.config import ExperimentConfig
    from digit_bench.engine.dag import compute
    from digit_bench.generators.common import real_images_node

    cfg = ExperimentConfig(data=dataclasses.replace(ExperimentConfig().data, name="digits", num_val=50, image_size=8))
    cfg = dataclasses.replace(cfg, sample=dataclasses.replace(cfg.sample, num_samples=20))
    node = real_images_node(cfg)
    return compute(Store(root), node, log=lambda m: None), node


def test_manifest_lists_every_file_with_size_and_digest(root):
    art, _ = _real_images(root)
    files = art.manifest["files"]
    assert set(files) == {"images.npz", "grid.png"}
    assert files["images.npz"]["size"] == (art / "images.npz").stat().st_size and len(files["grid.png"]["blake2b"]) == 32
    assert (art / DONE).read_text().startswith(art.id + "\n")


@pytest.mark.parametrize("damage, fragment", [
    (lambda a: (a / "images.npz").write_bytes((a / "images.npz").read_bytes()[:-10]), "images.npz has"),
    (lambda a: (a / "grid.png").unlink(), "grid.png is missing"),
    (lambda a: (a / "manifest.json").write_text("{garbled"), "manifest.json is missing or not valid JSON"),
    (lambda a: (a / "images.npz").write_bytes(b"\0" * (a / "images.npz").stat().st_size), "does not match its recorded digest"),
])
def test_verify_finds_a_damaged_artifact_and_repair_recomputes_it(root, damage, fragment, capsys):
    from digit_bench import cli

    art, node = _real_images(root)
    good = (art / "images.npz").read_bytes()
    assert cli.main(["verify", "--root", str(root)]) == 0
    damage(art)
    capsys.readouterr()
    assert cli.main(["verify", "--root", str(root)]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and f"real_images/{art.id}" in lines[0] and "verify --repair" in lines[0], err
    assert fragment in err
    if "digest" not in fragment:  # a size problem is seen by every reader, not only by verify
        with pytest.raises(UserError, match="is corrupt.*verify --repair"):
            Store(root).lookup("real_images", art.id)
    assert cli.main(["verify", "--root", str(root), "--repair"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["repaired"] == [f"real_images/{art.id}"] and len(report["quarantined"]) == 1
    assert Store(root).lookup("real_images", art.id) is not None and (art / "images.npz").read_bytes() == good
    assert cli.main(["verify", "--root", str(root)]) == 0


def test_no_space_during_publish_leaves_nothing_trusted_and_a_rerun_completes(root, monkeypatch):
    import errno

    from digit_bench import artifacts

    real = artifacts.write_durable

    def full(path, data):
        if path.name == DONE:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(artifacts, "write_durable", full)
    with pytest.raises(UserError, match="no space left"):
        Store(root).lookup_or_compute("st", "id1", {}, {}, _write(1), log=lambda m: None)
    assert Store(root).lookup("st", "id1") is None and not (root / "st" / "id1").exists()
    monkeypatch.setattr(artifacts, "write_durable", real)
    art = Store(root).lookup_or_compute("st", "id1", {}, {}, _write(2), log=lambda m: None)
    assert json.loads((art / "x.json").read_text()) == {"n": 2}


def test_temporary_files_are_never_published(root):
    def fn(out: Path) -> dict:
        (out / "ckpt.pt").write_bytes(b"good")
        (out / "ckpt.pt.tmp-4242").write_bytes(b"half")  # a save killed between write and rename
        (out / "sub").mkdir()
        (out / "sub" / "a.npy.tmp-1").write_bytes(b"half")
        return {}

    art = Store(root).lookup_or_compute("st", "tmp1", {}, {}, fn, log=lambda m: None)
    assert sorted(str(p.relative_to(art.path)) for p in art.path.rglob("*") if p.is_file()) == \
        ["DONE", "ckpt.pt", "manifest.json"]
    assert set(art.manifest["files"]) == {"ckpt.pt"}


def _killed_after_writing(root: str) -> None:
    def fn(out: Path) -> dict:
        time.sleep(1.0)
        (out / "part.bin").write_bytes(b"x")
        os.kill(os.getpid(), signal.SIGKILL)
        return {}
    Store(root).lookup_or_compute("st", "cost", {}, {}, fn, resumable=True, log=lambda m: None)


def test_cost_adds_up_every_attempt(root):
    p = mp.get_context("spawn").Process(target=_killed_after_writing, args=(str(root),))
    p.start()
    p.join(60)
    assert p.exitcode == -signal.SIGKILL

    def finish(out: Path) -> dict:
        time.sleep(0.5)
        (out / "rest.bin").write_bytes(b"y")
        return {"wall_s": 0.5}  # a stage's own timing (fit's) is this attempt's only

    art = Store(root).lookup_or_compute("st", "cost", {}, {}, finish, resumable=True, log=lambda m: None)
    m = art.manifest
    assert m["attempts"] == 2 and m["wall_s"] >= 1.5 and 0.5 <= m["wall_s_last_attempt"] < m["wall_s"]
    assert m["stage_wall_s"] == 0.5 and not (art / ".attempts.json").exists()
