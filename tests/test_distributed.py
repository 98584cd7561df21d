"""The paper's global batch on any GPU count: `train.batch_size` is global, `train.micro_batch_size` and the world
size decide gradient accumulation; multi-node jobs (`launcher.nodes`) join through submitit's environment.

The stage-1 GPT trained by the real stage function at 1 rank x batch B, 1 rank x 4 micro-batches and 2 ranks x 2
micro-batches (two "nodes" of one task each, joined by engine.launch.distributed_setup from SLURM variables, gloo) follows
the same loss trajectory and ends with the same weights.
"""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from digit_bench import training
from digit_bench.config import GPTModelConfig, LauncherConfig, TrainConfig, load_sweep, training_world
from digit_bench.errors import UserError

V, N, T = 32, 64, 16
META = {"vocab_size": V, "seq_len": T, "grid": 4, "tokenizer": "kmeans", "num_classes": 0}
TOKENS = np.random.default_rng(0).integers(0, V, (2, N, T)).astype(np.uint16)  # (views, N, T)
LABELS = np.zeros(N, np.int64)
GCFG = GPTModelConfig(size="gpt-nano", dropout=0.0)  # dropout draws depend on the rank: off for an exact comparison


def tcfg(micro: int | None) -> TrainConfig:
    return TrainConfig(steps=4, batch_size=16, micro_batch_size=micro, lr=3e-3, warmup_steps=2, checkpoint_every=2)


def cpu(precision: str = "auto") -> torch.device:
    return torch.device("cpu")


def train(out: Path, micro: int | None) -> dict:
    from digit_bench.stages.train import tokens_to_checkpoint

    out.mkdir(parents=True, exist_ok=True)
    with pytest.MonkeyPatch.context() as patch:  # this process's tests after this one keep the real device picker
        patch.setattr(training, "device_for", cpu)
        return tokens_to_checkpoint(TOKENS, LABELS, META, GCFG, tcfg(micro), out, seed=0)


def trajectory(out: Path) -> list[float]:
    return [json.loads(line)["loss/main"] for line in (out / "log.jsonl").read_text().splitlines()]


def _node(rank: int, job_id: int, tmp: str) -> None:
    """One task of a 2-node SLURM job: the variables srun sets, then the sweep's own rendezvous."""
    from digit_bench.engine.launch import distributed_setup

    for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        os.environ.pop(k, None)
    os.environ.update(SLURM_JOB_ID=str(job_id), SLURM_NTASKS="2", SLURM_JOB_NUM_NODES="2", SLURM_NODEID=str(rank),
                      SLURM_PROCID=str(rank), SLURM_LOCALID="0", SLURM_JOB_NODELIST="localhost,localhost", SUBMITIT_EXECUTOR="slurm",
                      )  # submitit derives the master port from the job id
    torch.set_num_threads(1)
    got = distributed_setup()
    assert got == (rank, 2) and dist.get_backend() == "gloo"
    out = Path(tmp) / ("ddp" if rank == 0 else f"ddp_rank{rank}")
    stats = train(out, micro=4)
    if rank == 0:
        (Path(tmp) / "ddp_stats.json").write_text(json.dumps({k: stats[k] for k in ("world_size", "micro_batch_size", "grad_accum")}))
    dist.destroy_process_group()


def test_accumulation_and_two_nodes_match_the_full_batch(tmp_path):
    full = train(tmp_path / "full", micro=None)
    accum = train(tmp_path / "accum", micro=4)
    mp.spawn(_node, args=(os.getpid(), str(tmp_path)), nprocs=2, join=True)
    assert (full["world_size"], full["micro_batch_size"], full["grad_accum"]) == (1, 16, 1)
    assert (accum["world_size"], accum["micro_batch_size"], accum["grad_accum"]) == (1, 4, 4)
    assert json.loads((tmp_path / "ddp_stats.json").read_text()) == {"world_size": 2, "micro_batch_size": 4, "grad_accum": 2}
    ref = trajectory(tmp_path / "full")
    assert len(ref) == 4
    for run in ("accum", "ddp"):
        np.testing.assert_allclose(trajectory(tmp_path / run), ref, rtol=0, atol=1e-5)
        want = training.load_checkpoint(tmp_path / "full" / "ckpt.pt")["model"]
        got = training.load_checkpoint(tmp_path / run / "ckpt.pt")["model"]
        for name, w in want.items():
            g = got[name]
            if name.endswith("qkv.bias"):  # key biases: exactly-zero true gradient, Adam turns float noise into steps
                d = w.shape[0] // 3
                g, w = torch.cat([g[:d], g[2 * d:]]), torch.cat([w[:d], w[2 * d:]])
            torch.testing.assert_close(g, w, rtol=0, atol=1e-4, msg=f"{run}: {name}")  # Adam: ~lr x float noise


def test_accumulation_is_derived_from_the_world_size():
    t = TrainConfig(batch_size=1024, micro_batch_size=64)
    assert t.accumulation(4) == (64, 4)
    assert t.accumulation(16) == (64, 1)
    assert TrainConfig(batch_size=1024).accumulation(8) == (128, 1)
    with pytest.raises(UserError, match="micro_batch_size"):
        TrainConfig(batch_size=1024, micro_batch_size=96).accumulation(4)
    with pytest.raises(UserError, match="multiple of 3"):
        TrainConfig(batch_size=1024).accumulation(3)
    assert training_world(LauncherConfig(cluster="slurm", nodes=4, tasks_per_node=8, gpus_per_node=8)) == 32
    assert training_world(LauncherConfig(cluster="local", nodes=4, tasks_per_node=8)) == 1


def test_sweep_rejects_a_batch_that_does_not_split_over_the_launcher():
    sets = ["launcher.nodes=3"]
    with pytest.raises(UserError, match=r"train\.batch_size .* launcher.nodes 3"):
        load_sweep("ablations/backbones.yaml", "paper", sets)


def test_multi_node_sbatch_script(tmp_path, monkeypatch):
    from submitit.slurm.slurm import _make_sbatch_string

    from digit_bench.engine.launch import executor_for

    if shutil.which("srun") is None:  # submitit renders sbatch scripts only where it finds srun; nothing here runs it
        (tmp_path / "bin").mkdir()
        (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 1\n")
        (tmp_path / "bin" / "srun").chmod(0o755)
        monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")

    launcher = LauncherConfig(cluster="slurm", partition="gpu", nodes=4, gpus_per_node=8, tasks_per_node=8)
    train_job = executor_for("slurm", launcher, tmp_path, training=True)._executor.parameters
    script = _make_sbatch_string(command="run", folder=tmp_path, **train_job)
    for flag in ("--nodes=4", "--ntasks-per-node=8", "--gpus-per-node=8"):
        assert f"#SBATCH {flag}\n" in script
    other = executor_for("slurm", launcher, tmp_path, training=False)._executor.parameters
    script = _make_sbatch_string(command="run", folder=tmp_path, **other)
    for flag in ("--nodes=1", "--ntasks-per-node=1", "--gpus-per-node=1"):
        assert f"#SBATCH {flag}\n" in script
