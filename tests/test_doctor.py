"""The device check (scripts/gpu_check.sh -> digit_bench.doctor) runs on the CPU and writes its JSON and table."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from digit_bench.doctor import SECTIONS, table

REPO = Path(__file__).resolve().parents[1]
ROW_KEYS = {"metric", "value", "unit", "ratio", "note"}


def gpu_check(tmp_path: Path, *args: str) -> tuple[dict, str]:
    out = tmp_path / "cpu.json"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--device", "cpu", "--tiny",
                           "--out", str(out), *args], capture_output=True, text=True, env=env, timeout=540,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def assert_shape(result: dict, stdout: str) -> None:
    assert result["device"] == "cpu" and result["tiny"] and result["random_weights"]
    header = stdout.splitlines()[0].split()
    assert header == ["section", "metric", "value", "unit", "ratio", "note"]
    assert stdout.strip() == table(result)
    for name, s in result["sections"].items():
        assert name in SECTIONS and s["status"] in ("ok", "error", "skipped") and s["wall_s"] >= 0
        assert all(set(r) == ROW_KEYS for r in s["rows"])


def test_quick_sections_through_the_script(tmp_path):
    result, stdout = gpu_check(tmp_path, "--only", "kmeans", "--only", "kv_cache")
    assert_shape(result, stdout)
    assert list(result["sections"]) == ["kmeans", "kv_cache"]
    kmeans = {r["metric"]: r for r in result["sections"]["kmeans"]["rows"]}
    assert kmeans["assign_gflops"]["value"] > 0 and kmeans["assign_gflops"]["ratio"] > 0
    assert "faiss-cpu" in kmeans["iteration_s"]["note"]
    kv = {r["metric"]: r for r in result["sections"]["kv_cache"]["rows"]}
    assert "identical with and without cache: True" in kv["uncached_s"]["note"]


def test_random_weights_are_never_silent(tmp_path):
    from digit_bench.doctor import main

    out = tmp_path / "x.json"
    assert main(["--device", "cpu", "--tiny", "--only", "features", "--out", str(out)]) == 0
    section = json.loads(out.read_text())["sections"]["features"]
    assert section["status"] == "error" and "--random-weights" in section["error"]


def test_time_guard_skips_and_says_so(tmp_path):
    from digit_bench.doctor import main

    out = tmp_path / "x.json"
    assert main(["--device", "cpu", "--tiny", "--only", "fid", "--time-budget-s", "0", "--out", str(out)]) == 0
    section = json.loads(out.read_text())["sections"]["fid"]
    assert section["status"] == "skipped" and "time guard" in section["error"]


@pytest.mark.slow
def test_whole_tiny_check_on_cpu(tmp_path):
    """`bash scripts/gpu_check.sh --device cpu --tiny`: every section ok, in the table shape of the GPU run."""
    result, stdout = gpu_check(tmp_path)
    assert_shape(result, stdout)
    assert list(result["sections"]) == list(SECTIONS)
    failed = {k: s.get("error") for k, s in result["sections"].items() if s["status"] != "ok"}
    assert not failed, failed
    rows = {(k, r["metric"]): r for k, s in result["sections"].items() for r in s["rows"]}
    assert rows[("fid", "fid_rel_diff")]["value"] <= 1e-3
    assert "random-init" in rows[("features", "tflops")]["note"]
    assert rows[("ddp", "world_size")]["value"] == 1 and "gloo" in rows[("ddp", "world_size")]["note"]


def test_digit_bench_doctor_is_the_same_command(tmp_path):
    from digit_bench.cli import main

    out = tmp_path / "x.json"
    assert main(["doctor", "--device", "cpu", "--tiny", "--only", "kv_cache", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["sections"]["kv_cache"]["status"] == "ok"


def test_random_inception_is_reproducible_and_its_features_do_not_collapse(tmp_path):
    import numpy as np

    from digit_bench.eval.fidelity import extract_features, random_inception_extractor

    import torch

    def weights(ex):
        return torch.load(ex.weights, weights_only=True)["Conv2d_1a_3x3.conv.weight"]

    a = random_inception_extractor(tmp_path / "a.pth", seed=0)
    assert torch.equal(weights(random_inception_extractor(tmp_path / "b.pth", seed=0)), weights(a))
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)  # (N, H, W, 3)
    feats = extract_features(images, a, 4, [a.feature_layer], cuda=False)[a.feature_layer]  # (4, 2048)
    assert feats.shape == (4, 2048) and feats.std(0).mean() > 1e-3


def test_micro_run_overrides_every_step_count(tmp_path):
    """The paper micro-run must not inherit a paper-sized loop (a 100k-step probe once ran for hours inside it)."""
    from digit_bench.config import flatten, load_sweep
    from digit_bench.doctor import micro_run_sets
    from digit_bench.engine.dag import make_plan

    for tiny in (True, False):
        sets = micro_run_sets(tiny, tmp_path, tmp_path / "b.pth", tmp_path / "i.pth", 8)
        (tmp_path / "d.yaml").write_text(f"include: {REPO / 'ablations' / '_base.yaml'}\nname: d\nseeds: [0]\n")
        sweep = load_sweep(tmp_path / "d.yaml", "paper", [f"{k}={v}" for k, v in sets.items()])
        loops = {}
        for node in (n for wave in make_plan(sweep).waves for n in wave if isinstance(n.cfg, dict)):
            flat = flatten(node.cfg)
            converged = flat.get("probe.protocol") == "converged"  # its SGD fields are defaults it never reads
            loops.update({f"{node.stage}:{k}": v for k, v in flat.items()
                          if k.rsplit(".", 1)[-1] in ("steps", "max_iter", "niter")
                          and not (converged and k == "probe.steps")})
        assert {"train:train.steps", "probe:probe.steps", "tokenizer_metrics:probe.max_iter"} <= set(loops)
        assert {k: v for k, v in loops.items() if v > 5} == {}
