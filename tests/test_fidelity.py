"""torch-fidelity wrapper: parity with a direct calculate_metrics call, FD sanity, bootstrap, PRC reading, errors.

Every test but the `slow` one uses a tiny randomly initialised `local` classifier written to tmp_path and
seeded synthetic images, so no weights or data are needed.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
import torch
import torch_fidelity
from PIL import Image

from digit_bench.config import EvalConfig
from digit_bench.errors import UserError
from digit_bench.eval.fidelity import (INCEPTION_FILE, LOCAL_NAME, Extractor, Reference, UInt8Images, bootstrap_fd,
                                       circular, class_accuracy, compute_metrics, dinov2_extractor, extract_features,
                                       fd_interval, frechet_distance, inception_extractor, load_reference,
                                       local_extractor, reference_features, save_reference)
from digit_bench.eval.grids import save_grid
from digit_bench.models.classifier import (Classifier, evaluate_accuracy, load_classifier, save_classifier,
                                           train_classifier)
from torch_fidelity.metric_fid import fid_features_to_statistics


def make_images(n: int, seed: int, shift: float = 0.0, size: int = 32) -> np.ndarray:
    """Seeded colour blobs on noise: uint8 (n, size, size, 3); `shift` brightens them."""
    rng = np.random.default_rng(seed)
    base = rng.normal(100 + 60 * shift, 40, (n, 1, 1, 3))  # per-image colour
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.uniform(8, size - 8, (2, n, 1, 1))
    blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 40.0)[..., None]  # (n, size, size, 1)
    img = base * (0.3 + blob) + rng.normal(0, 20, (n, size, size, 3))
    return img.clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> Extractor:
    """A random classifier whose BatchNorm statistics are set on synthetic images (else activations vanish)."""
    torch.manual_seed(0)
    model = Classifier(num_classes=10, width=4)  # 32-d features
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the calibration pass
    with torch.no_grad():
        model.train()(torch.from_numpy(make_images(256, seed=100)).permute(0, 3, 1, 2))
    path = tmp_path_factory.mktemp("clf") / "classifier.pt"
    save_classifier(model.eval(), path)
    return local_extractor(str(path))


@pytest.fixture(scope="module")
def real() -> np.ndarray:
    return make_images(240, seed=1)


@pytest.fixture(scope="module")
def ref(real, local):
    return reference_features(real, local)


QUIET = dict(isc=False, kid=False, prc=False, bootstrap=0)


def test_fd_of_a_set_with_itself_is_zero(real, ref, local):
    out = compute_metrics(real, ref, local, **QUIET)
    assert abs(out["fd_local"]) < 1e-6
    assert compute_metrics(make_images(240, seed=2, shift=1.0), ref, local, **QUIET)["fd_local"] > 1e-3


def test_equals_a_direct_torch_fidelity_call(real, ref, local):
    gen = make_images(200, seed=3, shift=0.5)
    ours = compute_metrics(gen, ref, local, kid_subset_size=100, prc_neighborhood=3, bootstrap=0)
    theirs = torch_fidelity.calculate_metrics(
        input1=UInt8Images(gen), input2=UInt8Images(real), cuda=False, isc=True, fid=True, kid=True, prc=True,
        feature_extractor=LOCAL_NAME, feature_extractor_weights_path=local.weights, kid_subset_size=100,
        save_cpu_ram=True, cache=False, verbose=False)
    pairs = {"is_local": "inception_score_mean", "is_local_std": "inception_score_std",
             "fd_local": "frechet_inception_distance", "kid_local": "kernel_inception_distance_mean",
             "precision_local": "precision", "recall_local": "recall"}
    for ours_key, their_key in pairs.items():
        assert ours[ours_key] == pytest.approx(theirs[their_key], rel=1e-6, abs=1e-9), ours_key


def test_metric_names_and_protocol(ref, local):
    out = compute_metrics(make_images(120, seed=4), ref, local, kid_subset_size=50, bootstrap=20,
                          reference_id="fashion_mnist-test-abc")
    assert set(out) == {"num_samples", "fd_local", "fd_local_bc", "fd_local_ci_low", "fd_local_ci_high",
                        "fd_local_interval", "is_local", "is_local_std", "kid_local", "precision_local", "recall_local",
                        "protocol_local"}
    assert "95%" in out["fd_local_interval"] and "20" in out["fd_local_interval"] and "true FD" in out["fd_local_interval"]
    assert out["num_samples"] == 120
    for part in (local.weights_sha256, "fashion_mnist-test-abc", "120 samples 32x32", torch_fidelity.__version__):
        assert part in out["protocol_local"]
    inception = dataclasses.replace(local, name="inception")
    names = ["is", "kid", "precision", "recall"]
    assert [inception.column(m) for m in ["fd", *names]] == ["fid", *names]


def test_frechet_distance_of_gaussians_matches_closed_form():
    rng = np.random.default_rng(0)
    d = 6
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))  # a shared rotation keeps the covariances commuting
    a, b = rng.uniform(0.5, 3.0, d), rng.uniform(0.5, 3.0, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    stats1 = {"mu": mu1, "sigma": q @ np.diag(a) @ q.T}
    stats2 = {"mu": mu2, "sigma": q @ np.diag(b) @ q.T}
    closed = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(stats1, stats2) == pytest.approx(closed, rel=1e-9)
    mixed = {"mu": mu1.astype(np.float32), "sigma": stats1["sigma"]}  # torch-fidelity's float32 mu vs an npz's float64
    assert frechet_distance(mixed, stats2) == pytest.approx(closed, rel=1e-6)


def _reference(feats: np.ndarray, keep_features: bool = True) -> Reference:
    stats = fid_features_to_statistics(torch.from_numpy(feats))
    return Reference("local", None, torch.from_numpy(feats) if keep_features else None, stats["mu"], stats["sigma"],
                     len(feats), None)


def test_bootstrap_resamples_equal_torch_fidelity_frechet_distance():
    rng = np.random.default_rng(1)
    feats = torch.from_numpy(rng.normal(size=(300, 16)).astype(np.float32))
    ref_feats = rng.normal(0.3, 1.2, size=(500, 16)).astype(np.float32)
    ref_stats = fid_features_to_statistics(torch.from_numpy(ref_feats))
    fixed = _reference(ref_feats, keep_features=False)  # mu/sigma only: the generated side alone is resampled
    first, second = bootstrap_fd(feats, fixed, num=3, seed=7)
    resample = np.random.default_rng(7)
    for a, b in zip(first, second):
        i = resample.integers(0, 300, 300)
        j = i[resample.integers(0, 300, 300)]
        for value, idx in ((a, i), (b, j)):
            stats = fid_features_to_statistics(feats[torch.from_numpy(idx)])
            assert value == pytest.approx(frechet_distance(stats, ref_stats), rel=1e-5)
    again = bootstrap_fd(feats, fixed, 3, seed=7)
    assert np.array_equal(first, again[0]) and np.array_equal(second, again[1])
    both = bootstrap_fd(feats, _reference(ref_feats), 3, seed=7)  # the reference is resampled too
    assert not np.allclose(both[0], first)


def test_interval_is_seeded_and_holds_the_bias_corrected_fd(ref, local):
    gen = make_images(240, seed=5, shift=1.0)
    out = compute_metrics(gen, ref, local, isc=False, kid=False, prc=False, bootstrap=50, seed=0)
    assert out["fd_local_ci_low"] < out["fd_local_bc"] < out["fd_local_ci_high"]
    assert out["fd_local_bc"] < out["fd_local"]  # the estimator is biased upwards
    again = compute_metrics(gen, ref, local, isc=False, kid=False, prc=False, bootstrap=50, seed=0)
    assert (again["fd_local_ci_low"], again["fd_local_ci_high"]) == (out["fd_local_ci_low"], out["fd_local_ci_high"])


def _coverage(dim: int, num_gen: int, num_ref: int, trials: int, resamples: int, shift: float = 1.0) -> float:
    """Fraction of trials whose interval holds the known FD of two Gaussians (diagonal covariances, shifted means)."""
    rng = np.random.default_rng(dim * 7 + num_gen)
    hits = 0
    for t in range(trials):
        var = 1 + rng.random(dim)  # (D,) generated variances; the reference is N(0, I)
        mean = np.zeros(dim)
        mean[:5] = shift
        true = mean @ mean + np.sum((np.sqrt(var) - 1) ** 2)
        gen = torch.from_numpy(rng.standard_normal((num_gen, dim)) * np.sqrt(var) + mean)  # (N, D)
        ref = _reference(rng.standard_normal((num_ref, dim)))
        fd = frechet_distance(fid_features_to_statistics(gen), {"mu": ref.mu, "sigma": ref.sigma})
        ci = fd_interval(fd, *bootstrap_fd(gen, ref, resamples, seed=t))
        hits += ci["low"] <= true <= ci["high"]
    return hits / trials


def test_interval_covers_the_true_fd_fast():
    # smoke sizes (200 generated vs 500 reference) on 32-d features, few trials: the default run's version
    assert _coverage(dim=32, num_gen=200, num_ref=500, trials=20, resamples=40) >= 0.9


@pytest.mark.slow
@pytest.mark.parametrize("num_gen, num_ref", [(200, 500), (1000, 2000)], ids=["smoke", "tiny"])
def test_interval_covers_the_true_fd(num_gen, num_ref):
    # the profiles' sample sizes with 128-d features; the percentile bootstrap covered 0% here (measured)
    assert _coverage(dim=128, num_gen=num_gen, num_ref=num_ref, trials=40, resamples=60) >= 0.9


def test_interval_near_zero_is_an_upper_bound():
    rng = np.random.default_rng(3)
    gen = torch.from_numpy(rng.standard_normal((300, 16)))
    ci = fd_interval(frechet_distance(fid_features_to_statistics(gen), {"mu": np.zeros(16), "sigma": np.eye(16)}),
                     *bootstrap_fd(gen, _reference(rng.standard_normal((600, 16))), 40, seed=0))
    assert ci["low"] == 0.0 and ci["interval"].startswith("<= ") and "upper bound" in ci["interval"]
    assert ci["high"] > 0


def test_results_do_not_depend_on_batch_size(real, ref, local):
    small = extract_features(real[:50], local, batch_size=7)
    large = extract_features(real[:50], local, batch_size=64)
    for layer in ("feat", "logits_unbiased"):
        torch.testing.assert_close(small[layer], large[layer], rtol=1e-5, atol=1e-6)
    gen = make_images(60, seed=6, shift=0.5)
    a = compute_metrics(gen, ref, local, isc=False, kid=False, prc=False, bootstrap=0, batch_size=9)
    b = compute_metrics(gen, ref, local, isc=False, kid=False, prc=False, bootstrap=0, batch_size=60)
    assert a["fd_local"] == pytest.approx(b["fd_local"], rel=1e-5)


def test_precision_recall_reading_mode_collapse(real, ref, local):
    """Generated = 5 real images, 40 copies each: all on the real manifold (precision 1), covering little (recall low).

    torch-fidelity's main branch before the 0.4.0 wheel swapped the two (toshas/torch-fidelity#58); this pins the
    reading we report.
    """
    collapsed = np.repeat(real[:5], 40, axis=0)
    out = compute_metrics(collapsed, ref, local, isc=False, fid=False, kid=False, prc=True, bootstrap=0)
    assert out["precision_local"] == 1.0
    assert out["recall_local"] < 0.1


def test_reference_round_trip_and_mismatch(tmp_path, real, ref, local):
    save_reference(ref, tmp_path / "ref.pt")
    loaded = load_reference(tmp_path / "ref.pt")
    gen = make_images(80, seed=8)
    a = compute_metrics(gen, ref, local, kid_subset_size=50, bootstrap=0)
    b = compute_metrics(gen, loaded, local, kid_subset_size=50, bootstrap=0)
    assert {k: v for k, v in a.items()} == b
    with pytest.raises(UserError, match="rebuild the reference"):
        compute_metrics(gen, dataclasses.replace(loaded, weights_sha256="0" * 12), local, **QUIET)


def test_npz_reference_gives_fid_only(tmp_path, real, ref, local):
    np.savez(tmp_path / "adm.npz", mu=ref.mu.astype(np.float64), sigma=ref.sigma)
    npz = load_reference(f"npz:{tmp_path / 'adm.npz'}")
    assert npz.extractor == "inception" and npz.features is None
    with pytest.raises(UserError, match="rebuild the reference"):
        compute_metrics(real, npz, local, **QUIET)
    as_local = dataclasses.replace(npz, extractor="local")  # exercise the mu/sigma path with the cheap extractor
    gen = make_images(100, seed=9, shift=0.5)
    assert compute_metrics(gen, as_local, local, **QUIET)["fd_local"] == pytest.approx(
        compute_metrics(gen, ref, local, **QUIET)["fd_local"], rel=1e-5)
    with pytest.raises(UserError, match="FID only"):
        compute_metrics(gen, as_local, local, isc=False, kid=True, prc=False, bootstrap=0)
    with pytest.raises(UserError, match="does not exist"):
        load_reference(f"npz:{tmp_path / 'missing.npz'}")


def test_is_needs_logits(ref, local):
    no_logits = dataclasses.replace(local, logits_layer=None)
    with pytest.raises(UserError, match="isc=False"):
        compute_metrics(make_images(10, seed=0), ref, no_logits, isc=True, fid=True, kid=False, prc=False, bootstrap=0)


def test_local_extractor_resizes_other_sizes(local):
    feats = extract_features(make_images(4, seed=0, size=28), local)
    assert feats["feat"].shape == (4, 32) and feats["logits_unbiased"].shape == (4, 10)


def test_circularity_flag():
    assert circular("dinov2_vitb14_reg4", "dinov2")
    assert circular("dinov2_vitl14", "dinov2")
    assert not circular("dinov2_vitb14_reg4", "inception")
    assert not circular("dinov2_vitb14_reg4", "local")
    assert not circular("mae_vitb16", "dinov2")
    assert not circular("dino_vitb16", "dinov2")


def test_missing_weights_give_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(UserError, match=INCEPTION_FILE) as err:
        inception_extractor()
    assert "\n" not in str(err.value) and str(tmp_path / "hub" / "checkpoints") in str(err.value)
    with pytest.raises(UserError, match="does not exist"):
        inception_extractor(str(tmp_path / "nope.pth"))
    with pytest.raises(UserError, match="dinov2_vitl14_pretrain.pth"):
        dinov2_extractor()
    with pytest.raises(UserError, match="classifier"):
        local_extractor(None)


def test_weights_in_the_hub_cache_are_found_and_hashed(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "hub" / "checkpoints" / INCEPTION_FILE)  # tensors only
    ext = inception_extractor()
    assert ext.weights == str(tmp_path / "hub" / "checkpoints" / INCEPTION_FILE) and len(ext.weights_sha256) == 12
    assert ext.fidelity_name == "inception-v3-compat" and ext.suffix == ""


def test_class_accuracy(local):
    model = load_classifier(local.weights)
    images = make_images(50, seed=10)
    with torch.no_grad():
        own = model(torch.from_numpy(images).permute(0, 3, 1, 2))[1].argmax(1).numpy()
    assert class_accuracy(images, own, model) == 100.0
    assert class_accuracy(images, (own + 1) % 10, model) == 0.0


def test_save_grid_sorts_by_class(tmp_path):
    images = np.zeros((70, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(70) % 7
    images[:, :, :, 0] = (labels * 30)[:, None, None]  # red channel encodes the class
    save_grid(images, tmp_path / "grid.png", labels=labels)
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    assert grid.shape == (8 * 34 + 2, 8 * 34 + 2, 3)
    cells = grid[2::34, 2::34, 0][:8, :8].reshape(-1)  # top-left pixel of each cell, row by row
    assert list(cells) == sorted(cells) and cells[0] == 0 and cells[-1] == 6 * 30


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_local_classifier_reaches_90_percent_on_fashion_mnist(tmp_path):
    """The `local` extractor is a usable judge: >= 90% test accuracy with EvalConfig.local_train (CPU minutes)."""
    from digit_bench.data import fashion_mnist

    data = fashion_mnist(None, image_size=32)
    start = time.perf_counter()
    stats = train_classifier(data.train.images[:], data.train.labels, EvalConfig().local_train, tmp_path,
                             seed=0, num_classes=10)
    accuracy = evaluate_accuracy(load_classifier(stats["path"]), data.test.images[:], data.test.labels)
    print(f"local classifier: test accuracy {accuracy:.4f}, train {stats['wall_s']:.0f} s, "
          f"total {time.perf_counter() - start:.0f} s")
    assert accuracy >= 0.90
