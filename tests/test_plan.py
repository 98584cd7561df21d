"""The analytic model of digit_bench.plan against real models: exact parameter counts, saved-activation bytes."""

from pathlib import Path

import pytest
import torch

from digit_bench.models.gpt import GPT, GPT_SIZES, gpt_config
from digit_bench.plan import (activation_bytes, gpt_params, gpt_train_flops, gpu_spec, kv_cache_bytes,
                              max_micro_batch, saved_activation_bytes, train_memory)

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("size", list(GPT_SIZES))
def test_param_counts_are_exact_for_every_size(size):
    for overrides in ({}, {"post_ln": False, "prefix_len": 16, "prefix_vocab_size": 300}, {"num_classes": 10}):
        cfg = gpt_config(size, **overrides)
        with torch.device("meta"):
            model = GPT(cfg)
        assert gpt_params(cfg) == sum(p.numel() for p in model.parameters()), (size, overrides)


def test_paper_sizes_count_what_the_paper_says():
    assert abs(gpt_params(gpt_config("digit-b")) / 219e6 - 1) < 0.02
    assert abs(gpt_params(gpt_config("digit-l")) / 732e6 - 1) < 0.02


def test_flops_match_the_model_without_prefix():
    cfg = gpt_config("gpt-micro")
    assert gpt_train_flops(cfg) == pytest.approx(GPT(cfg).flops_per_token() * cfg.seq_len)
    prefixed = gpt_config("gpt-micro", post_ln=False, prefix_len=64, prefix_vocab_size=512)
    assert gpt_train_flops(prefixed) > 1.9 * gpt_train_flops(cfg)  # the prefix goes through every block


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("layout", ["stage1", "stage2", "stage1-nodrop"])
def test_activation_bytes_match_autograd_saved_tensors_on_cpu(precision, layout):
    """Tolerance 1%: the model counts position ids per sequence, autograd keeps them once per batch."""
    overrides = {"stage1": {}, "stage1-nodrop": {"dropout": 0.0},
                 "stage2": {"post_ln": False, "prefix_len": 64, "prefix_vocab_size": 300}}[layout]
    cfg = gpt_config("gpt-micro", **overrides)
    torch.manual_seed(0)
    model = GPT(cfg).train()
    batch = 4
    idx = torch.randint(0, cfg.vocab_size, (batch, cfg.seq_len))  # (B, T)
    prefix = torch.randint(0, 300, (batch, cfg.prefix_len)) if cfg.prefix_len else None  # (B, P)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        measured = saved_activation_bytes(model, lambda: model.loss(idx, prefix=prefix))
    predicted = batch * activation_bytes(cfg, precision, device_type="cpu")
    assert measured == pytest.approx(predicted, rel=0.01)


def test_train_memory_of_a_real_cpu_step_is_within_tolerance():
    """Weights, grads and AdamW state after one CPU step are exactly what train_memory says."""
    cfg = gpt_config("gpt-nano")
    model = GPT(cfg)
    opt = torch.optim.AdamW(model.parameters())
    model.loss(torch.randint(0, cfg.vocab_size, (2, cfg.seq_len))).backward()
    opt.step()
    mem = train_memory(cfg, 2, precision="fp32", device_type="cpu")
    state = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if t.dim() > 0)
    assert mem.optimizer == state
    assert mem.grads == sum(p.grad.numel() * p.grad.element_size() for p in model.parameters())
    assert mem.autocast_copies == 0


def test_max_micro_batch_is_the_largest_that_fits():
    cfg = gpt_config("digit-b")
    budget = 141e9 * 0.9
    b = max_micro_batch(cfg, budget)
    assert 64 <= b < 1024  # ~170 MiB per sequence: batch 1024 does not fit one H200
    assert train_memory(cfg, b).total <= budget < train_memory(cfg, b + 1).total
    assert max_micro_batch(cfg, 1e9) == 0  # 219M params x 18 bytes of state alone exceed 1 GB


def test_kv_cache_and_gpu_specs():
    cfg = gpt_config("gpt-nano")
    model = GPT(cfg)
    assert kv_cache_bytes(cfg, 3) == sum(2 * 3 * cfg.n_head * cfg.seq_len * (cfg.n_embd // cfg.n_head) * 4
                                         for _ in model.blocks)
    assert gpu_spec("NVIDIA H200").memory_gb == 141
    assert gpu_spec("NVIDIA H100 80GB HBM3").bf16_tflops == pytest.approx(989.4)
    assert gpu_spec("NVIDIA A100-SXM4-40GB").memory_gb == 40
    assert gpu_spec("Tesla T4") is None and gpu_spec(None) is None


# ------------------------------------------------------------------------------------------------ sweep planning
def paper_sweep(launcher_extra: dict | None = None, train_extra: dict | None = None):
    """The first run of the backbones sweep's paper profile, its launcher and train blocks (stage 1 and 2) replaced."""
    import dataclasses

    from digit_bench.config import load_sweep

    sweep = load_sweep("ablations/backbones.yaml", "paper", [])
    cfg = sweep.runs[0].cfg
    replaced = {}
    if launcher_extra:
        replaced["launcher"] = dataclasses.replace(cfg.launcher, **launcher_extra)
    if train_extra:
        replaced["train"] = dataclasses.replace(cfg.train, **train_extra)
        replaced["stage2"] = dataclasses.replace(cfg.stage2, train=dataclasses.replace(cfg.stage2.train, **train_extra))
    run = dataclasses.replace(sweep.runs[0], cfg=dataclasses.replace(cfg, **replaced))
    return dataclasses.replace(sweep, runs=(run,))


ONE_GPU = {"gpus_per_node": 1, "tasks_per_node": 1}  # the paper's global batch on one GPU, no micro-batches


@pytest.mark.parametrize("gpu", ["h200", "h100"])
def test_plan_flags_batch_1024_on_one_gpu_and_accepts_the_paper_profile(gpu):
    from digit_bench.plan import plan_sweep

    gpt = next(j for j in plan_sweep(paper_sweep({"gpu_type": gpu, **ONE_GPU}, {"micro_batch_size": None}))
               if j.role == "gpt")
    assert (gpt.world, gpt.micro_batch, gpt.accum) == (1, 1024, 1)
    assert 215e6 < gpt.params < 223e6
    assert gpt.fits_memory is False and "train.micro_batch_size <=" in gpt.advice
    jobs = plan_sweep(paper_sweep({"gpu_type": gpu}))  # the profile as resolved: 4 GPUs x 128 x 2 accumulation steps
    fixed = next(j for j in jobs if j.role == "gpt")
    assert (fixed.world, fixed.micro_batch, fixed.accum) == (4, 128, 2)
    assert fixed.fits_memory is True and fixed.fits_time is True and not fixed.advice
    assert fixed.gpu_hours == pytest.approx(gpt.gpu_hours)  # the same work, spread and accumulated
    stage2 = next(j for j in jobs if j.role == "stage2")
    assert stage2.fits_memory is True and stage2.params == pytest.approx(212.6e6, rel=0.01)


def test_plan_without_a_gpu_type_checks_nothing_and_nodes_multiply_ranks():
    from digit_bench.plan import check_fits, plan_sweep

    jobs = plan_sweep(paper_sweep())
    assert all(j.fits_memory is None and j.fits_time is None and j.gpu_hours is None for j in jobs)
    check_fits(paper_sweep())  # nothing known: nothing refused
    gpt = next(j for j in plan_sweep(paper_sweep({"gpu_type": "h200", "nodes": 4}, {"micro_batch_size": None}))
               if j.role == "gpt")
    assert (gpt.world, gpt.micro_batch, gpt.accum) == (16, 64, 1) and gpt.fits_memory


def test_sweep_refuses_a_job_that_cannot_fit():
    from digit_bench.errors import UserError
    from digit_bench.plan import check_fits

    with pytest.raises(UserError, match=r"gpt job .* does not fit .*memory.*train.micro_batch_size <="):
        check_fits(paper_sweep({"gpu_type": "h200", **ONE_GPU}, {"micro_batch_size": None}))
    with pytest.raises(UserError, match=r"time limit.*launcher.timeout_min"):
        check_fits(paper_sweep({"gpu_type": "h200", "timeout_min": 60, "max_num_timeout": 0}))
    check_fits(paper_sweep({"gpu_type": "h200"}))


def test_plan_command(disk, capsys):
    import json

    from digit_bench.cli import main

    one_gpu = ["--set", "launcher.gpus_per_node=1", "--set", "launcher.tasks_per_node=1",
               "--set", "train.micro_batch_size=null"]
    yaml = str(REPO / "ablations" / "backbones.yaml")
    assert main(["plan", yaml, "--profile", "paper", "--gpu-type", "h200", *one_gpu]) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert summary["all_fit"] is False and summary["gpu_type"] == "h200"
    assert {j["role"] for j in summary["jobs"]} == {"features", "tokens", "gpt", "samples", "stage2", "probe"}
    assert "NO (mem NO" in err and "h200 (141 GB" in err
    assert main(["plan", yaml, "--profile", "paper", "--gpu-type", "h200"]) == 0
    assert json.loads(capsys.readouterr().out)["all_fit"] is True
    assert main(["plan", yaml, "--profile", "smoke"]) == 0
    assert "MFU/peaks unknown" in capsys.readouterr().err


def test_plan_counts_the_paper_probe_on_one_gpu():
    """100k x 1024 views, each through DINOv2 ViT-B/14 at 224 and the 219M GPT over 257 positions (forward only):
    about 1.6e19 FLOPs, ~11 h of one H200 at 40% MFU."""
    from digit_bench.plan import plan_sweep

    probe = next(j for j in plan_sweep(paper_sweep({"gpu_type": "h200"})) if j.role == "probe")
    per_view = 2 * 218e6 * 257 + 12 * (24 * 768**2 * 256 + 4 * 256**2 * 768)  # GPT (no attention) + ViT-B
    assert probe.flops == pytest.approx(100_000 * 1024 * per_view, rel=0.1)
    assert probe.fits_memory is True and probe.fits_time is True and 5 < probe.gpu_hours < 20
