"""fit(): exact resume, divergence keeps the checkpoint, 2-process gloo data parallel equals one process, lr schedule,
multi-group (GAN-style) training."""

import json
import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from digit_bench import training
from digit_bench.config import TrainConfig
from digit_bench.models.gpt import GPT, GPTConfig
from digit_bench.training import TrainingDiverged, fit, load_checkpoint, lr_multiplier

V, T, N = 16, 8, 64
DATA = torch.randint(0, V, (N, T), generator=torch.Generator().manual_seed(0))


def cpu(precision: str) -> torch.device:
    return torch.device("cpu")


@pytest.fixture(autouse=True)
def cpu_only(monkeypatch):
    """fit picks CUDA when there is one; pin it to the CPU, where bit-exact resume is guaranteed."""
    monkeypatch.setattr(training, "device_for", cpu)


def tiny_gpt(init_seed: int = 0, dropout: float = 0.1) -> GPT:
    torch.manual_seed(init_seed)
    return GPT(GPTConfig(vocab_size=V, seq_len=T, n_layer=2, n_head=2, n_embd=32, n_ffn=64, dropout=dropout))


def train_cfg(**overrides) -> TrainConfig:
    cfg = dict(steps=10, batch_size=8, micro_batch_size=4, lr=3e-3, warmup_steps=3, checkpoint_every=4, ema=0.9)
    return TrainConfig(**{**cfg, **overrides})


def batches(cfg: TrainConfig, seed: int = 0):
    """batch_fn: a pure function of (seed, step); rank r of w takes its slice of the global batch."""
    def batch_fn(step, rank, world):
        rows = torch.randperm(N, generator=torch.Generator().manual_seed(seed * 100_003 + step))[:cfg.batch_size]
        mine = rows.view(world, -1)[rank]  # (batch_size / world,)
        return list(DATA[mine].chunk(cfg.accumulation(world)[1]))  # accum x (B_micro, T)
    return batch_fn


def gpt_loss(label_smoothing: float):
    return lambda model, idx: ({"main": model.loss(idx, label_smoothing=label_smoothing)}, {})


def test_killed_and_resumed_run_is_bit_identical(tmp_path):
    cfg = train_cfg()
    straight = tiny_gpt()
    fit(straight, gpt_loss(0.1), batches(cfg), cfg, tmp_path / "a", seed=3)

    def crash_after_6(model, step):
        if step == 6:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        fit(tiny_gpt(), gpt_loss(0.1), batches(cfg), cfg, tmp_path / "b", seed=3, after_step=crash_after_6)
    assert load_checkpoint(tmp_path / "b" / "ckpt.pt")["step"] == 4
    resumed = tiny_gpt(init_seed=1)  # different init: everything must come from the checkpoint
    stats = fit(resumed, gpt_loss(0.1), batches(cfg), cfg, tmp_path / "b", seed=3)

    assert stats["start_step"] == 4 and stats["steps"] == 10
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    ema_a = load_checkpoint(tmp_path / "a" / "ckpt.pt")["ema"]
    ema_b = load_checkpoint(tmp_path / "b" / "ckpt.pt")["ema"]
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    assert not torch.equal(ema_a["head.weight"], straight.head.weight.detach())
    log = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 11))
    assert math.isfinite(log[-1]["loss/main"]) and log[-1]["items_per_s"] > 0


def test_non_finite_loss_raises_and_keeps_last_checkpoint(tmp_path):
    cfg = train_cfg(checkpoint_every=2, ema=0.0)
    calls = []

    def loss_fn(model, idx):
        calls.append(1)
        poison = math.nan if len(calls) > 2 * 4 else 1.0  # 2 micro-batches: update 5 is poisoned
        return {"main": model.loss(idx) * poison}, {}

    model = tiny_gpt()
    with pytest.raises(TrainingDiverged, match="step 5"):
        fit(model, loss_fn, batches(cfg), cfg, tmp_path, seed=0)
    ckpt = load_checkpoint(tmp_path / "ckpt.pt")
    assert ckpt["step"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the poisoned update was never applied


def _ddp_worker(rank: int, world: int, tmp: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=world)
    torch.set_num_threads(1)
    training.device_for = cpu  # a fresh process: the fixture's patch does not reach it
    cfg = train_cfg(steps=2, micro_batch_size=None, ema=0.0)
    model = tiny_gpt(init_seed=rank, dropout=0.0)  # rank 1 starts different: rank 0's weights must be broadcast
    grads = {}
    fit(model, gpt_loss(0.1), batches(cfg), cfg, f"{tmp}/ddp", seed=0,
        after_step=lambda m, step: grads.setdefault(step, {n: p.grad.clone() for n, p in m.named_parameters()}))
    torch.save({"model": model.state_dict(), "grads": grads[1]}, f"{tmp}/rank{rank}.pt")
    dist.destroy_process_group()


def test_two_process_gloo_equals_one_process_on_the_combined_batch(tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    cfg = train_cfg(steps=2, micro_batch_size=None, ema=0.0)
    single = tiny_gpt(init_seed=0, dropout=0.0)
    grads = {}
    fit(single, gpt_loss(0.1), batches(cfg), cfg, tmp_path / "single", seed=0,
        after_step=lambda m, step: grads.setdefault(step, {n: p.grad.clone() for n, p in m.named_parameters()}))
    for rank in (0, 1):
        out = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for name, g in grads[1].items():
            torch.testing.assert_close(out["grads"][name], g, rtol=0, atol=1e-6)
        for name, w in single.state_dict().items():
            got = out["model"][name]
            if name.endswith("qkv.bias"):
                # NOTE: key biases have an exactly-zero true gradient (softmax is shift invariant) and Adam turns
                # their float noise into +-lr steps; compare the query and value biases only.
                got, w = torch.cat([got[:32], got[64:]]), torch.cat([w[:32], w[64:]])
            torch.testing.assert_close(got, w, rtol=0, atol=1e-6)


def test_lr_schedules():
    for schedule, expected in {
        "inverse_sqrt": {0: 0.25, 3: 1.0, 4: 1.0, 16: 0.5, 64: 0.25},
        "cosine": {0: 0.25, 3: 1.0, 4: 1.0, 12: 0.5, 19: 0.5 * (1 + math.cos(math.pi * 15 / 16))},
        "constant": {0: 0.25, 2: 0.75, 4: 1.0, 19: 1.0},
    }.items():
        multiplier = lr_multiplier(TrainConfig(steps=20, warmup_steps=4, schedule=schedule))
        for step, value in expected.items():
            assert multiplier(step) == pytest.approx(value), (schedule, step)


def test_fit_applies_the_schedule_it_logs(tmp_path):
    cfg = train_cfg(steps=6, warmup_steps=2, schedule="inverse_sqrt", ema=0.0)
    fit(tiny_gpt(), gpt_loss(0.1), batches(cfg), cfg, tmp_path, seed=0)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["lr/main"] for r in log] == pytest.approx([cfg.lr * lr_multiplier(cfg)(s) for s in range(6)])


class Gan(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.gen, self.disc = nn.Linear(4, 4), nn.Linear(4, 1)


@pytest.mark.parametrize("disc_learns", [True, False])
def test_multi_group_fit_steps_each_optimizer_on_its_own_loss(tmp_path, disc_learns):
    model = Gan()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def loss_fn(m, z):
        fake = m.gen(z)  # (B, 4)
        gen_loss = -m.disc(fake).mean()  # also reaches the discriminator's weights
        disc_loss = m.disc(fake.detach()).mean() + (m.disc(z + 1.0) - 1).pow(2).mean()
        if not disc_learns:
            disc_loss = disc_loss * 0.0
        return {"gen": gen_loss, "disc": disc_loss}, {"fake_mean": fake.mean().item()}

    cfg = TrainConfig(steps=3, batch_size=8, lr=1e-2, warmup_steps=0, schedule="constant", weight_decay=0.0,
                      checkpoint_every=10)

    def batch_fn(step, rank, world):
        return [torch.randn(8, 4, generator=torch.Generator().manual_seed(step))]

    groups = {"gen": list(model.gen.parameters()), "disc": list(model.disc.parameters())}
    stats = fit(model, loss_fn, batch_fn, cfg, tmp_path, seed=0, param_groups=groups)
    assert set(stats["losses"]) == {"loss/gen", "loss/disc", "fake_mean"}
    assert not torch.equal(model.gen.weight, before["gen.weight"])
    # a zero discriminator loss must leave it untouched although the generator loss reaches it
    assert torch.equal(model.disc.weight, before["disc.weight"]) != disc_learns
    assert set(load_checkpoint(tmp_path / "ckpt.pt")["optimizer"]) == {"gen", "disc"}


def test_tensorboard_mirrors_log_jsonl_when_asked(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("DIGIT_BENCH_TENSORBOARD", str(tmp_path / "tb"))
    cfg = train_cfg(steps=4, ema=0.0)
    work = tmp_path / "gpt-nano-abc.work"
    fit(tiny_gpt(), gpt_loss(0.1), batches(cfg), cfg, work, seed=0)
    log = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(tmp_path / "tb" / "gpt-nano-abc")).Reload()
    assert [e.value for e in events.Scalars("loss/main")] == pytest.approx([r["loss/main"] for r in log])
    assert [e.step for e in events.Scalars("loss/main")] == [1, 2, 3, 4]


def test_tensorboard_unset_writes_nothing_and_missing_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.delenv("DIGIT_BENCH_TENSORBOARD", raising=False)
    assert training.tensorboard_writer(tmp_path) is None
    monkeypatch.setenv("DIGIT_BENCH_TENSORBOARD", str(tmp_path / "tb"))
    monkeypatch.setitem(__import__("sys").modules, "torch.utils.tensorboard", None)  # as if not installed
    with pytest.raises(training.UserError, match="pip install 'digit_bench\\[tensorboard\\]'"):
        training.tensorboard_writer(tmp_path / "x.work")


def test_preemption_signal_checkpoints_after_the_running_update_and_resume_is_exact(tmp_path):
    """SIGTERM mid-run (SLURM pre-emption): checkpoint at that update, the signal reaches the earlier handler."""
    import signal

    cfg = train_cfg(steps=12, checkpoint_every=5)
    straight = tiny_gpt()
    fit(straight, gpt_loss(0.1), batches(cfg), cfg, tmp_path / "a", seed=3)

    class Requeued(Exception):
        pass

    def submitit_like(signum, frame):
        raise Requeued(signum)

    def term_at_7(model, step):
        if step == 7:
            os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, submitit_like)
    try:
        with pytest.raises(Requeued):
            fit(tiny_gpt(), gpt_loss(0.1), batches(cfg), cfg, tmp_path / "b", seed=3, after_step=term_at_7)
        assert signal.getsignal(signal.SIGTERM) is submitit_like  # fit put the handler back
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert load_checkpoint(tmp_path / "b" / "ckpt.pt")["step"] == 7  # not 5: nothing since the last one is lost
    resumed = tiny_gpt(init_seed=1)
    assert fit(resumed, gpt_loss(0.1), batches(cfg), cfg, tmp_path / "b", seed=3)["start_step"] == 7
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert not list((tmp_path / "b").glob("*.tmp-*"))


def test_log_is_cut_back_to_the_checkpoint_even_without_one(tmp_path):
    """A run killed before its first checkpoint restarts from 0: its log lines are not kept twice."""
    cfg = train_cfg(steps=6, checkpoint_every=100)

    def crash_after_4(model, step):
        if step == 4:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        fit(tiny_gpt(), gpt_loss(0.1), batches(cfg), cfg, tmp_path, seed=3, after_step=crash_after_4)
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write('{"step": 5, "loss/ma')  # cut off by the kill
    fit(tiny_gpt(), gpt_loss(0.1), batches(cfg), cfg, tmp_path, seed=3)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]


def test_no_space_during_a_checkpoint_save_keeps_the_last_one_and_no_temporary_file(tmp_path, monkeypatch):
    import errno

    cfg = train_cfg(steps=8, checkpoint_every=4)
    real_save = torch.save

    def full_disk(obj, f, *a, **k):
        if obj["step"] == 8:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(training.torch, "save", full_disk)
    with pytest.raises(OSError):
        fit(tiny_gpt(), gpt_loss(0.1), batches(cfg), cfg, tmp_path, seed=3)
    assert load_checkpoint(tmp_path / "ckpt.pt")["step"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt", "log.jsonl"]
    monkeypatch.setattr(training.torch, "save", real_save)
    assert fit(tiny_gpt(), gpt_loss(0.1), batches(cfg), cfg, tmp_path, seed=3)["start_step"] == 4


def test_a_signal_whose_handler_returns_lets_training_go_on_and_catches_the_next(tmp_path):
    """submitit bypasses SIGTERM on preemption and requeues on the USR2 that follows: fit checkpoints at both."""
    import signal

    cfg = train_cfg(steps=10, checkpoint_every=100)
    seen, saved = [], []

    def bypass(signum, frame):
        seen.append(signum)
        saved.append(load_checkpoint(tmp_path / "ckpt.pt")["step"])

    def signal_at(model, step):
        if step in (3, 6):
            os.kill(os.getpid(), signal.SIGTERM if step == 3 else signal.SIGUSR2)

    previous = {sig: signal.signal(sig, bypass) for sig in (signal.SIGTERM, signal.SIGUSR2)}
    try:
        assert fit(tiny_gpt(), gpt_loss(0.1), batches(cfg), cfg, tmp_path, seed=3, after_step=signal_at)["steps"] == 10
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    assert seen == [signal.SIGTERM, signal.SIGUSR2] and saved == [3, 6]
