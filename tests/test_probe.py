"""Linear probe: finds the layer that carries the label, and never uses test data to choose lr or layer."""

from __future__ import annotations

import torch

from digit_bench.eval.linear_probe import train_linear_probes

C = 4
SETTINGS = dict(lrs=(0.01, 0.1, 0.4), epochs=5, batch_size=64, holdout_fraction=0.2, seed=0, num_classes=C)


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
    assert out["probe_lr"] in SETTINGS["lrs"] and len(out["probe_layer_lr"]) == 3
    assert out == train_linear_probes(train_x, train_y, test_x, test_y, **SETTINGS)


def test_selection_never_looks_at_test():
    """Test data that favour layer 2 (and shuffled test labels) leave every choice unchanged."""
    train_x, train_y, test_x, test_y = data((30.0, 0.5, 0.9), (30.0, 3.0, 0.3))  # train favours 1, test favours 2
    out = train_linear_probes(train_x, train_y, test_x, test_y, **SETTINGS)
    assert out["probe_layer"] == 1
    assert out["probe_layer_top1"][2] > out["probe_layer_top1"][1] + 10  # a test-based choice would pick layer 2
    other_labels = test_y[torch.randperm(300, generator=torch.Generator().manual_seed(9))]
    shuffled = train_linear_probes(train_x, train_y, test_x, other_labels, **SETTINGS)
    for key in ("probe_layer", "probe_lr", "probe_layer_lr", "probe_layer_holdout_top1"):
        assert shuffled[key] == out[key], key
