"""MaskGIT stage-2 decoder: decoding schedule, training mask and loss, batch-size independence."""

import math

import pytest
import torch

from digit_bench.models.maskgit import MaskGIT, MaskGITConfig, mask_schedule, random_mask

CFG = MaskGITConfig(vocab_size=16, seq_len=16, prefix_vocab_size=10, prefix_len=4, n_layer=2, n_head=2, n_embd=32,
                    n_ffn=64, dropout=0.0)


@pytest.fixture
def model() -> MaskGIT:
    torch.manual_seed(0)
    return MaskGIT(CFG).eval()


def prefixes(batch: int) -> torch.Tensor:
    return torch.randint(0, CFG.prefix_vocab_size, (batch, CFG.prefix_len), generator=torch.Generator().manual_seed(1))


def test_mask_schedule_paper_counts():
    # floor(256 * cos(pi/2 * t/8)) for t = 1..7 (paper §3.3, T = 8), then everything revealed.
    assert mask_schedule(8, 256) == [251, 236, 212, 181, 142, 97, 49, 0]


def test_mask_schedule_reveals_at_least_one_token_per_step():
    assert mask_schedule(8, 4) == [3, 2, 1, 0, 0, 0, 0, 0]
    assert mask_schedule(1, 7) == [0]


def test_generate_follows_schedule_and_ends_unmasked(model):
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append((args[1] == m.mask_id).sum(1).tolist()))
    out = model.generate(prefixes(3), seeds=[0, 1, 2], steps=5, choice_temperature=4.5)
    schedule = mask_schedule(5, CFG.seq_len)
    assert seen == [[n] * 3 for n in [CFG.seq_len] + schedule[:-1]]  # masked count entering each step
    assert out.shape == (3, CFG.seq_len)
    assert (out != model.mask_id).all() and out.min() >= 0 and out.max() < CFG.vocab_size


def test_known_tokens_are_never_remasked(model):
    history = []
    model.register_forward_pre_hook(lambda m, args: history.append(args[1].clone()))
    out = model.generate(prefixes(2), seeds=[3, 4], steps=6)
    for before, after in zip(history, history[1:] + [out]):
        known = before != model.mask_id
        assert torch.equal(after[known], before[known])


def test_samples_do_not_depend_on_batch_size(model):
    p = prefixes(4)
    together = model.generate(p, seeds=[10, 11, 12, 13])
    alone = torch.cat([model.generate(p[i:i + 1], seeds=[10 + i]) for i in range(4)])
    assert torch.equal(together, alone)
    assert not torch.equal(model.generate(p, seeds=[20, 21, 22, 23]), together)  # the seeds matter


def test_random_mask_follows_cosine_schedule():
    mask = random_mask(4000, 32, torch.Generator().manual_seed(0))
    counts = mask.sum(1).float()
    assert counts.min() >= 1 and counts.max() <= 32
    # E[floor(n cos(pi u / 2)) + 1] is about n * 2/pi + 1/2.
    assert abs(counts.mean().item() - (32 * 2 / math.pi + 0.5)) < 0.5


def test_loss_ignores_unmasked_positions(model):
    tokens = torch.randint(0, CFG.vocab_size, (2, CFG.seq_len), generator=torch.Generator().manual_seed(2))
    mask = torch.zeros(2, CFG.seq_len, dtype=torch.bool)
    mask[0, [1, 5]] = True
    mask[1, [0, 9, 15]] = True
    captured = {}

    def keep(module, args, output):
        output.retain_grad()
        captured["logits"] = output

    model.head.register_forward_hook(keep)
    model.loss(prefixes(2), tokens, mask, label_smoothing=0.1).backward()
    grad_norm = captured["logits"].grad.abs().sum(-1)  # (B, N)
    assert (grad_norm[~mask] == 0).all()
    assert (grad_norm[mask] > 0).all()


def test_attention_is_bidirectional_and_reads_the_prefix(model):
    tokens = torch.full((1, CFG.seq_len), model.mask_id)
    base = model(prefixes(1), tokens)
    later = tokens.clone()
    later[0, -1] = 3
    assert not torch.allclose(model(prefixes(1), later)[0, 0], base[0, 0])  # position 0 sees the last token
    assert not torch.allclose(model(prefixes(1) % 3, tokens), base)  # and the DiGIT prefix
