"""Artifact store: content ids, atomic publish, crash safety, one computation under races."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from digit_bench.artifacts import DONE, Store, artifact_id

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
