"""GPT: causality (also with a prefix), KV-cache equivalence, overfitting, paper sizes, sampling filters, per-sample
seeds, stage-2 loss masking, classifier-free guidance."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from digit_bench.errors import UserError
from digit_bench.models import gpt as gpt_module
from digit_bench.models.gpt import GPT, GPTConfig, gpt_config, sample_next

V, T = 16, 12


def tiny(**overrides) -> GPT:
    torch.manual_seed(0)
    cfg = dict(vocab_size=V, seq_len=T, n_layer=2, n_head=2, n_embd=32, n_ffn=64, dropout=0.0)
    return GPT(GPTConfig(**{**cfg, **overrides})).eval()


def tokens(*shape, high=V, seed=1) -> torch.Tensor:
    return torch.randint(0, high, shape, generator=torch.Generator().manual_seed(seed))


STAGE2 = dict(prefix_vocab_size=20, prefix_len=5, post_ln=False)


@pytest.mark.parametrize("overrides", [{}, dict(post_ln=False), STAGE2], ids=["post_ln", "pre_ln", "prefix"])
def test_changing_a_token_changes_only_later_logits(overrides):
    model = tiny(**overrides)
    prefix = tokens(2, 5, high=20) if overrides.get("prefix_len") else None
    idx = tokens(2, T)
    t = 6
    changed = idx.clone()
    changed[:, t] = (changed[:, t] + 1) % V
    a, b = model(idx, prefix=prefix), model(changed, prefix=prefix)  # (2, T, V)
    # logits at position s predict idx[:, s] from idx[:, :s]: positions <= t cannot see idx[:, t]
    torch.testing.assert_close(a[:, :t + 1], b[:, :t + 1], rtol=0, atol=0)
    assert (a[:, t + 1:] - b[:, t + 1:]).abs().amax() > 1e-4


def test_prefix_is_encoded_causally_and_conditions_every_target():
    model = tiny(**STAGE2)
    idx, prefix = tokens(2, T), tokens(2, 5, high=20)
    changed = prefix.clone()
    changed[:, 3] = (changed[:, 3] + 1) % 20
    states_a = model.hidden_states(idx, prefix=prefix)[-1]  # (2, 5 + T, D)
    states_b = model.hidden_states(idx, prefix=changed)[-1]
    torch.testing.assert_close(states_a[:, :3], states_b[:, :3], rtol=0, atol=0)
    assert ((model(idx, prefix=prefix) - model(idx, prefix=changed)).abs().amax(dim=-1) > 1e-5).all()


def test_hidden_states_shapes_and_head_on_last_state():
    model = tiny(**STAGE2)
    idx, prefix = tokens(3, T), tokens(3, 5, high=20)
    states = model.hidden_states(idx, prefix=prefix)
    assert len(states) == 3 and all(s.shape == (3, 5 + T, 32) for s in states)
    torch.testing.assert_close(model.head(model.ln_f(states[-1][:, 5:])), model(idx, prefix=prefix))


def test_stage2_loss_ignores_prefix_positions():
    model = tiny(**STAGE2).train()
    idx, prefix = tokens(2, T), tokens(2, 5, high=20)
    captured = {}

    def keep_output(module, args, output):
        output.retain_grad()
        captured["out"] = output

    model.blocks[-1].register_forward_hook(keep_output)
    model.loss(idx, prefix=prefix).backward()
    grad = captured["out"].grad  # (2, 5 + T, D)
    assert torch.count_nonzero(grad[:, :5]) == 0  # no loss term reads a prefix position's output
    assert (grad[:, 5:].abs().sum(dim=-1) > 0).all()  # separator + target positions each carry a loss term
    assert model.loss(idx, prefix=prefix).item() != pytest.approx(model.loss(idx, prefix=(prefix + 1) % 20).item())


@pytest.mark.parametrize("overrides, kwargs", [
    ({}, {}),
    (dict(post_ln=False, num_classes=3), dict(labels=torch.tensor([0, 2, 3]))),
    (dict(num_classes=3), dict(labels=torch.tensor([0, 1, 2]), cfg_scale=2.5)),
    (STAGE2, dict(prefix=tokens(3, 5, high=20, seed=4))),
], ids=["uncond", "class", "cfg", "prefix"])
def test_kv_cache_logits_equal_full_forward(monkeypatch, overrides, kwargs):
    model = tiny(**overrides)
    recorded = []

    def recording(logits, uniforms, **kw):
        recorded.append(logits.clone())
        return sample_next(logits, uniforms, **kw)

    monkeypatch.setattr(gpt_module, "sample_next", recording)
    cached = model.generate(3, seeds=[0, 1, 2], **kwargs)
    logits_cached, recorded[:] = torch.stack(recorded), []
    full = model.generate(3, seeds=[0, 1, 2], use_cache=False, **kwargs)
    torch.testing.assert_close(logits_cached, torch.stack(recorded), rtol=0, atol=1e-5)
    assert torch.equal(cached, full) and cached.shape == (3, T)


def test_tiny_model_overfits_one_batch():
    model = tiny(n_embd=64, n_ffn=128).train()
    idx = tokens(4, T)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    for _ in range(50):
        loss = model.loss(idx, label_smoothing=0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    logits = model.eval()(idx)  # (4, T, V)
    # the first token follows the same BOS in all four sequences, so only later positions can be memorised
    assert torch.nn.functional.cross_entropy(logits[:, 1:].flatten(0, 1), idx[:, 1:].flatten()).item() < 0.01


@pytest.mark.parametrize("size, paper", [("digit-b", 219e6), ("digit-l", 732e6)])
def test_paper_sizes_match_paper_param_counts(size, paper):
    with torch.device("meta"):
        model = GPT(gpt_config(size))
    assert abs(model.num_params() - paper) / paper < 0.02
    assert model.flops_per_token() > 6 * model.num_params(non_embedding=True)


def test_gpt_config_rejects_unknown_names():
    with pytest.raises(UserError, match="did you mean gpt-nano"):
        gpt_config("gpt-nana")
    with pytest.raises(UserError, match="did you mean n_layer"):
        gpt_config("gpt-nano", n_layers=3)


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), vocab=st.integers(2, 40), top_k=st.integers(0, 40),
       top_p=st.floats(0.01, 1.0), temperature=st.floats(0.2, 3.0))
def test_sampling_never_emits_filtered_tokens(seed, vocab, top_k, top_p, temperature):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(64, vocab, generator=g) * 4  # (B, V)
    logits[:, : vocab // 3] = logits[:, :1]  # ties, the hard case for both filters
    token = sample_next(logits, torch.rand(64, generator=g), top_k=top_k, top_p=top_p, temperature=temperature)
    scaled = logits / temperature
    chosen = scaled.gather(1, token[:, None])  # (B, 1)
    if top_k:
        assert (chosen >= scaled.topk(min(top_k, vocab)).values[:, -1:]).all()
        scaled = scaled.masked_fill(scaled < scaled.topk(min(top_k, vocab)).values[:, -1:], float("-inf"))
    probs = scaled.softmax(-1)  # (B, V)
    p_chosen = probs.gather(1, token[:, None])  # (B, 1)
    assert (p_chosen > 0).all()
    more_likely_mass = (probs * (probs > p_chosen)).sum(-1)  # (B,)
    assert (more_likely_mass < top_p + 1e-5).all()


def test_top_k_1_is_greedy_whatever_the_seed():
    model = tiny()
    a = model.generate(2, seeds=[0, 1], top_k=1)
    assert torch.equal(a[0], a[1]) and torch.equal(a, model.generate(2, seeds=[7, 8], top_k=1))


@pytest.mark.parametrize("overrides", [{}, dict(num_classes=3)], ids=["uncond", "class"])
def test_samples_do_not_depend_on_batch(overrides):
    model = tiny(**overrides)
    labels = torch.tensor([0, 1, 2, 1]) if overrides else None
    batch = model.generate(4, labels=labels, seeds=[10, 11, 12, 13], top_p=0.9)
    for i, seed in enumerate([10, 11, 12, 13]):
        one = model.generate(1, labels=None if labels is None else labels[i:i + 1], seeds=[seed], top_p=0.9)
        assert torch.equal(one[0], batch[i])
    assert not torch.equal(batch[0], batch[2])


def test_classifier_free_guidance_scales():
    model = tiny(num_classes=3, label_dropout=0.1)
    labels, seeds = torch.tensor([0, 2]), [5, 6]
    conditional = model.generate(2, labels=labels, seeds=seeds)
    assert torch.equal(model.generate(2, labels=labels, seeds=seeds, cfg_scale=1.0), conditional)
    null_only = model.generate(2, labels=torch.tensor([3, 3]), seeds=seeds)
    assert torch.equal(model.generate(2, labels=labels, seeds=seeds, cfg_scale=0.0), null_only)
    assert not torch.equal(model.generate(2, labels=labels, seeds=seeds, cfg_scale=4.0), conditional)


def test_label_dropout_replaces_labels_with_the_null_class_in_training_only():
    model = tiny(num_classes=3, label_dropout=1.0).train()
    idx, labels = tokens(2, T), torch.tensor([0, 1])
    null = torch.tensor([3, 3])
    assert model.loss(idx, labels).item() == model.loss(idx, null).item()
    model.eval()
    assert model.loss(idx, labels).item() != model.loss(idx, null).item()
