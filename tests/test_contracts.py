"""Property tests of the contracts written once in training.py: how a global batch is sharded over ranks and
micro-batches, per-step randomness, seeded init; and of the recipes that use them (a sample never depends on the
world size or the accumulation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from digit_bench import ssl
from digit_bench.config import SSLConfig, TrainConfig
from digit_bench.errors import UserError
from digit_bench.stages.train import token_batches
from digit_bench.training import seeded_init, shard, step_rng, step_seed

SHAPES = st.tuples(st.integers(1, 8), st.integers(1, 6), st.integers(1, 5))  # world, accum, micro-batch size


@given(SHAPES)
def test_every_sample_lands_on_exactly_one_rank_and_micro_batch(shape):
    world, accum, micro = shape
    batch = world * accum * micro
    owner = np.full(batch, -1)
    for rank in range(world):
        slices = shard(batch, accum, rank, world)
        assert len(slices) == accum
        for i, s in enumerate(slices):
            positions = np.arange(batch)[s]
            assert len(positions) == micro
            assert (owner[positions] == -1).all()  # never on two (rank, micro-batch) pairs
            owner[positions] = rank * accum + i
    assert (owner >= 0).all()  # every sample somewhere
    assert (np.diff(owner) >= 0).all()  # rank-major, then micro-batch: the order of the global batch


@given(SHAPES, st.integers(1, 47))
def test_a_batch_that_does_not_split_is_refused(shape, extra):
    world, accum, micro = shape
    assume(extra % (world * accum))
    with pytest.raises(UserError, match="does not split"):
        shard(world * accum * micro + extra, accum, 0, world)
    with pytest.raises(UserError, match="does not split"):
        shard(world * accum * micro, accum, world, world)  # no such rank


@given(SHAPES)
def test_train_config_accumulation_agrees_with_shard(shape):
    world, accum, micro = shape
    cfg = TrainConfig(batch_size=world * accum * micro, micro_batch_size=micro)
    assert cfg.accumulation(world) == (micro, accum)
    assert sum(len(range(cfg.batch_size)[s]) for r in range(world) for s in shard(cfg.batch_size, accum, r, world)) \
        == cfg.batch_size


@given(st.integers(0, 2**31 - 1), st.integers(0, 10**6))
def test_step_randomness_is_a_pure_function_of_seed_and_step(seed, step):
    assert step_seed(seed, step) == step_seed(seed, step) and 0 <= step_seed(seed, step) < 2**32
    assert np.array_equal(step_rng(seed, step).integers(0, 2**31, 8), step_rng(seed, step).integers(0, 2**31, 8))
    assert not np.array_equal(step_rng(seed, step).random(4), step_rng(seed, step + 1).random(4))
    assert step_seed(seed, step, 0) != step_seed(seed, step, 1)  # ranks drop out differently


@settings(max_examples=25, deadline=None)
@given(SHAPES, st.integers(0, 1000), st.integers(0, 1000))
def test_gpt_batches_do_not_depend_on_world_or_accum(shape, seed, step):
    """The GPT recipe's batch of a step, gathered over all ranks and micro-batches, is the one-rank batch."""
    world, accum, micro = shape
    batch = world * accum * micro
    tokens = np.random.default_rng(0).integers(0, 512, (2, 50, 6)).astype(np.uint16)  # (V, N, T)
    labels = np.arange(50) % 10
    one = token_batches(tokens, labels, TrainConfig(batch_size=batch), seed)(step, 0, 1)
    split = token_batches(tokens, labels, TrainConfig(batch_size=batch, micro_batch_size=micro), seed)
    gathered = [m for rank in range(world) for m in split(step, rank, world)]
    assert len(gathered) == world * accum and len(one) == 1
    assert torch.equal(torch.cat([x for x, _ in gathered]), one[0][0])  # (B, T) tokens, same rows, same order
    assert torch.equal(torch.cat([y for _, y in gathered]), one[0][1])  # (B,) labels


@settings(max_examples=10, deadline=None)
@given(st.sampled_from([(1, 4), (2, 2), (4, 1)]), st.integers(0, 100))
def test_ssl_noise_of_a_sample_does_not_depend_on_world_or_accum(shape, seed):
    """MAE masking noise and crops are drawn for the whole global batch, then sharded."""
    world, accum = shape
    cfg = SSLConfig(image_size=8, patch_size=4, train=TrainConfig(batch_size=8))
    images = np.random.default_rng(1).integers(0, 255, (20, 8, 8, 3), dtype=np.uint8)  # (N, S, S, 3)
    labels = np.arange(20) % 3
    whole = ssl.make_batch("mae", images, labels, cfg, seed, step=3)
    parts = [m for rank in range(world) for m in ssl.split_batch(whole, shard(8, accum, rank, world))]
    for key, value in whole.items():
        assert torch.equal(torch.cat([m[key] for m in parts]), value), key


@given(st.integers(0, 2**31 - 1))
def test_seeded_init_is_reproducible_and_leaves_the_callers_generator_alone(seed):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    with seeded_init(seed):
        a = torch.nn.Linear(3, 2).weight.detach().clone()  # (2, 3)
    assert torch.equal(torch.get_rng_state(), before)
    with seeded_init(seed):
        b = torch.nn.Linear(3, 2).weight.detach().clone()  # (2, 3)
    assert torch.equal(a, b)
