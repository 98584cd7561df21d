"""Linear probe: finds the layer that carries the label, never uses test data to choose l2 or layer, converges to
scikit-learn's logistic regression, and grows its L2 grid until the choice is interior."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from digit_bench.eval.linear_probe import fit_head, train_linear_probes

C = 4
SETTINGS = dict(l2s=(1e-3, 1e-2, 1e-1), max_iter=500, holdout_fraction=0.2, seed=0, num_classes=C)


def layers(labels: torch.Tensor, noise: tuple[float, ...], seed: int, dims=(12, 16, 8)) -> list[torch.Tensor]:
    """One (N, D) tensor per layer: fixed class means plus noise of the layer's scale, on a large offset and scale."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, (d, sigma) in enumerate(zip(dims, noise)):
        means = torch.randn(C, d, generator=torch.Generator().manual_seed(100 + i))  # same classes in every split
        x = means[labels] + sigma * torch.randn(len(labels), d, generator=g)  # (N, D)
        out.append((50.0 + 20.0 * x).half())  # far from standardised: the probe must standardise
    return out


def data(train_noise: tuple[float, ...], test_noise: tuple[float, ...]):
    g = torch.Generator().manual_seed(1)
    y_train, y_test = torch.randint(0, C, (600,), generator=g), torch.randint(0, C, (300,), generator=g)
    return layers(y_train, train_noise, seed=2), y_train, layers(y_test, test_noise, seed=3), y_test


def test_probe_finds_the_informative_layer():
    train_x, train_y, test_x, test_y = data((30.0, 0.3, 30.0), (30.0, 0.3, 30.0))
    out = train_linear_probes(train_x, train_y, test_x, test_y, **SETTINGS)
    assert out["probe_layer"] == 1
    assert out["probe_top1"] > 95.0 and out["probe_top5"] >= out["probe_top1"]
    assert out["probe_layer_top1"][0] < 50.0 and out["probe_layer_top1"][2] < 50.0
    assert len(out["probe_layer_l2"]) == 3
    for l2, grid in zip(out["probe_layer_l2"], out["probe_layer_l2_grid"]):
        assert grid[0] < l2 < grid[-1], (l2, grid)  # interior: the grid grew past any edge it chose
    assert out == train_linear_probes(train_x, train_y, test_x, test_y, **SETTINGS)


def test_selection_never_looks_at_test():
    """Test data that favour layer 2 (and shuffled test labels) leave every choice unchanged."""
    train_x, train_y, test_x, test_y = data((30.0, 0.5, 0.9), (30.0, 3.0, 0.3))  # train favours 1, test favours 2
    out = train_linear_probes(train_x, train_y, test_x, test_y, **SETTINGS)
    assert out["probe_layer"] == 1
    assert out["probe_layer_top1"][2] > out["probe_layer_top1"][1] + 10  # a test-based choice would pick layer 2
    other_labels = test_y[torch.randperm(300, generator=torch.Generator().manual_seed(9))]
    shuffled = train_linear_probes(train_x, train_y, test_x, other_labels, **SETTINGS)
    for key in ("probe_layer", "probe_layer_l2", "probe_layer_l2_grid", "probe_layer_holdout_top1"):
        assert shuffled[key] == out[key], key


def test_agrees_with_scikit_learn_logistic_regression():
    """Fixed, overlapping classes on badly scaled 64-d features: at the same objective (C = 1 / (l2 N)) the test
    accuracy is within 1 point of scikit-learn's, and so are the weights (up to the softmax's shared shift)."""
    rng = np.random.default_rng(0)
    n, d, k, l2 = 3000, 64, 10, 1e-3
    means = rng.normal(0, 0.35, (k, d))
    scale, shift = rng.uniform(0.5, 20, d), rng.normal(0, 30, d)

    def sample(m: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, k, m)
        return (means[y] + rng.normal(0, 1, (m, d))) * scale + shift, y  # (m, D), (m,)

    (x, y), (x_test, y_test) = sample(n), sample(2000)
    scaler = StandardScaler().fit(x)
    sk = LogisticRegression(C=1 / (l2 * n), max_iter=10000, tol=1e-10).fit(scaler.transform(x), y)
    theirs = 100 * sk.score(scaler.transform(x_test), y_test)
    w, b, mean, std = fit_head(torch.from_numpy(x), torch.from_numpy(y), l2, k)
    z_test = (torch.from_numpy(x_test) - mean) / std  # (2000, D)
    ours = 100 * ((z_test @ w + b).argmax(1).numpy() == y_test).mean()
    assert 40 < theirs < 90  # a problem where an under-trained probe would show
    assert abs(ours - theirs) < 1.0
    ours_w, their_w = w.numpy().T, sk.coef_  # (C, D)
    np.testing.assert_allclose(ours_w - ours_w.mean(0), their_w - their_w.mean(0), atol=5e-3)


def test_a_class_conditional_gpt_is_probed_with_the_null_class_not_the_label():
    from digit_bench.models.gpt import GPT, gpt_config
    from digit_bench.stages.probe import pooled_hidden_states

    torch.manual_seed(0)
    model = GPT(gpt_config("gpt-nano", vocab_size=16, seq_len=8, num_classes=3)).eval()
    tokens = np.random.default_rng(0).integers(0, 16, (5, 8)).astype(np.uint16)
    feats = pooled_hidden_states(model, tokens)
    null = model.hidden_states(torch.from_numpy(tokens.astype(np.int64)), torch.full((5,), 3), last_token=True)
    assert all(torch.allclose(f, h.float().mean(1)) for f, h in zip(feats, null))


def test_pooling_sees_every_token_the_last_one_included():
    """Changing only the last token changes every layer's pooled features (it has an input position), and the
    first T positions are those of the training forward pass (the extra position is causal, after them)."""
    from digit_bench.models.gpt import GPT, gpt_config
    from digit_bench.stages.probe import pooled_hidden_states

    torch.manual_seed(0)
    model = GPT(gpt_config("gpt-nano", vocab_size=16, seq_len=8)).eval()
    tokens = np.random.default_rng(0).integers(0, 16, (4, 8)).astype(np.uint16)
    changed = tokens.copy()
    changed[:, -1] = (changed[:, -1] + 1) % 16
    a, b = pooled_hidden_states(model, tokens), pooled_hidden_states(model, changed)
    assert all((x - y).abs().amax() > 1e-4 for x, y in zip(a, b))  # every layer, the embedding output included
    idx = torch.from_numpy(tokens.astype(np.int64))
    with torch.no_grad():
        full, train_view = model.hidden_states(idx, last_token=True), model.hidden_states(idx)
    assert all(f.shape == (4, 9, 64) for f in full)
    for f, t in zip(full, train_view):
        torch.testing.assert_close(f[:, :8], t, rtol=1e-5, atol=1e-5)


def test_a_grid_that_starts_at_an_edge_grows_until_the_choice_is_interior():
    train_x, train_y, test_x, test_y = data((30.0, 0.5, 30.0), (30.0, 0.5, 30.0))
    out = train_linear_probes(train_x, train_y, test_x, test_y, **{**SETTINGS, "l2s": (10.0, 100.0)})
    for l2, grid in zip(out["probe_layer_l2"], out["probe_layer_l2_grid"]):
        assert grid[0] < l2 < grid[-1], (l2, grid)
    assert min(out["probe_layer_l2_grid"][1]) < 10.0  # the informative layer wanted weaker regularisation


def test_chunked_solve_matches_the_one_shot_solve(monkeypatch, tmp_path):
    """Features read from memory maps in chunks of 97 rows give the same choices and accuracies as one chunk."""
    import digit_bench.eval.linear_probe as lp

    train_x, train_y, test_x, test_y = data((30.0, 0.5, 0.9), (30.0, 3.0, 0.3))
    one = train_linear_probes(train_x, train_y, test_x, test_y, **SETTINGS)
    maps = []
    for i, x in enumerate(train_x):
        m = np.lib.format.open_memmap(tmp_path / f"L{i}.npy", "w+", np.float16, tuple(x.shape))
        m[:] = x.numpy()
        maps.append(torch.from_numpy(np.load(tmp_path / f"L{i}.npy", mmap_mode="r+")))
    monkeypatch.setattr(lp, "CHUNK", 97)
    chunked = train_linear_probes(maps, train_y, test_x, test_y, **SETTINGS)
    for key in ("probe_layer", "probe_layer_l2", "probe_layer_l2_grid"):
        assert chunked[key] == one[key], key
    np.testing.assert_allclose(chunked["probe_layer_top1"], one["probe_layer_top1"], atol=0.5)
