"""The device check at full size on a GPU, against the readiness targets (bf16 MFU, memory model, FID agreement)."""

import json

import pytest
import torch

from digit_bench.doctor import main


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu") / "gpu.json"
    assert main(["--device", "cuda", "--random-weights", "--only", "gpt_train", "--only", "fid", "--only", "kv_cache",
                 "--out", str(out)]) == 0
    return json.loads(out.read_text())


def rows(result, section):
    s = result["sections"][section]
    assert s["status"] == "ok", s.get("error")
    return {r["metric"]: r for r in s["rows"]}


def test_memory_model_predicts_the_measured_peak(result):
    for size in ("digit-b", "digit-l"):
        peak = rows(result, "gpt_train")[f"{size}.peak_mem"]
        assert 0.85 <= peak["ratio"] <= 1.05, peak  # measured / predicted; the model slightly overestimates


def test_fid_on_the_gpu_equals_the_cpu(result):
    assert rows(result, "fid")["fid_rel_diff"]["value"] <= 1e-3


def test_kv_cache_is_faster_and_exact(result):
    kv = rows(result, "kv_cache")["uncached_s"]
    assert kv["ratio"] > 1 and "identical with and without cache: True" in kv["note"]


def test_nccl_step(tmp_path):
    out = tmp_path / "ddp.json"
    assert main(["--device", "cuda", "--only", "ddp", "--out", str(out)]) == 0
    ddp = json.loads(out.read_text())["sections"]["ddp"]
    assert ddp["status"] == "ok", ddp.get("error")
    assert ddp["rows"][0]["value"] == min(2, torch.cuda.device_count())
