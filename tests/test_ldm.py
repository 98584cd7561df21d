"""LDM baseline (digit_bench.models.ldm): one step lowers each loss, seeded sampling does not depend on the batch,
guidance at scale 1 is the conditional prediction, latents round-trip through the VAE, resume is exact."""

import dataclasses

import numpy as np
import pytest
import torch

from digit_bench import training
from digit_bench.config import LDMConfig, TrainConfig
from digit_bench.errors import UserError
from digit_bench.models import ldm

NUM_CLASSES = 3
TINY_TRAIN = TrainConfig(steps=4, batch_size=4, lr=1e-3, schedule="constant", warmup_steps=1, betas=(0.9, 0.999),
                         weight_decay=0.0, label_smoothing=0.0, ema=0.9, checkpoint_every=2)
CFG = LDMConfig(vae_channels=(32, 32), unet_channels=(32, 64), num_inference_steps=4, vae_train=TINY_TRAIN,
                train=TINY_TRAIN)


@pytest.fixture(autouse=True)
def cpu_only(monkeypatch):
    """fit picks CUDA when there is one; pin it to the CPU, where bit-exact resume is guaranteed."""
    monkeypatch.setattr(training, "device_for", lambda precision: torch.device("cpu"))


@pytest.fixture(autouse=True)
def one_thread():
    """Tensors this small gain nothing from threads; on a busy 2-core machine OpenMP waits made them ~100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def images(n: int, seed: int = 0) -> np.ndarray:
    """Smooth seeded 8x8 RGB images (uint8 (n, 8, 8, 3)) an autoencoder can learn quickly."""
    rng = np.random.default_rng(seed)
    low = rng.uniform(0, 255, (n, 2, 2, 3))  # (n, 2, 2, 3)
    return np.repeat(np.repeat(low, 4, axis=1), 4, axis=2).astype(np.uint8)  # (n, 8, 8, 3)


def seeded(build, seed: int = 0):
    torch.manual_seed(seed)
    return build()


def unet(cfg: LDMConfig = CFG) -> ldm.Denoiser:
    return seeded(lambda: ldm.build_denoiser(cfg, NUM_CLASSES, latent_channels=4, latent_size=4)).eval()


def dit() -> ldm.Denoiser:
    return seeded(lambda: ldm.build_dit("dit-tiny", NUM_CLASSES, latent_channels=4, latent_size=4)).eval()


def denoiser_batch(seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(8, 4, 4, 4, generator=gen)  # (B, C, h, w)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])  # 3 = the null class
    t = torch.randint(0, 1000, (8,), generator=gen)
    return x0, labels, t, torch.randn(8, 4, 4, 4, generator=gen)


def one_step_lowers(model: torch.nn.Module, loss, lr: float = 1e-3) -> tuple[float, float]:
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    before = loss(model)
    opt.zero_grad()
    before.backward()
    opt.step()
    with torch.no_grad():
        after = loss(model)
    return before.item(), after.item()


@pytest.mark.parametrize("denoiser, prediction_type",
                         [("unet", "epsilon"), ("unet", "v_prediction"), ("dit", "epsilon")])
def test_one_denoiser_step_lowers_the_loss_on_a_fixed_batch(denoiser, prediction_type):
    cfg = dataclasses.replace(CFG, prediction_type=prediction_type)
    model = (unet(cfg) if denoiser == "unet" else dit()).train()
    scheduler, batch = ldm.noise_scheduler(cfg), denoiser_batch()
    before, after = one_step_lowers(model, lambda m: ldm.diffusion_loss(m, batch, scheduler)[0]["main"])
    assert after < before


def test_one_vae_step_lowers_the_loss_on_a_fixed_batch():
    vae = seeded(lambda: ldm.build_vae(CFG))
    batch = (torch.from_numpy(images(4)), torch.randn(4, 4, 4, 4, generator=torch.Generator().manual_seed(1)))
    before, after = one_step_lowers(vae, lambda m: ldm.vae_loss(m, batch, kl_weight=CFG.kl_weight)[0]["main"])
    assert after < before


def sample(model, vae, labels, seeds, batch_size, **overrides):
    cfg = dataclasses.replace(CFG, **overrides)
    return ldm.sample_ldm(model, vae, 2.0, np.array(labels), np.array(seeds), cfg, batch_size)


@pytest.mark.parametrize("overrides", [{}, {"cfg_scale": 3.0}, {"scheduler": "EulerAncestralDiscreteScheduler"}],
                         ids=["ddim", "ddim-cfg3", "euler-ancestral"])
def test_seeded_sampling_is_deterministic_and_independent_of_batch_size(overrides):
    model, vae = unet(), seeded(lambda: ldm.build_vae(CFG)).eval()
    together = sample(model, vae, [0, 1, 3], [5, 6, 7], batch_size=3, **overrides)
    one_by_one = sample(model, vae, [0, 1, 3], [5, 6, 7], batch_size=1, **overrides)
    again = sample(model, vae, [0, 1, 3], [5, 6, 7], batch_size=2, **overrides)
    assert together.shape == (3, 8, 8, 3) and together.dtype == np.uint8
    np.testing.assert_array_equal(together, one_by_one)
    np.testing.assert_array_equal(together, again)
    other_seeds = sample(model, vae, [0, 1, 3], [8, 9, 10], batch_size=3, **overrides)
    assert (other_seeds != together).any()


def test_dit_sampling_is_independent_of_batch_size():
    model, vae = dit(), seeded(lambda: ldm.build_vae(CFG)).eval()
    np.testing.assert_array_equal(sample(model, vae, [0, 2], [1, 2], batch_size=2),
                                  sample(model, vae, [0, 2], [1, 2], batch_size=1))


@torch.no_grad()
def test_guidance_scale_one_is_the_conditional_prediction_and_other_scales_mix_in_the_null_class():
    model = unet()
    x0, labels, t, _ = denoiser_batch()
    labels = labels.clamp(max=NUM_CLASSES - 1)
    cond = model(x0, t, labels)
    uncond = model(x0, t, torch.full_like(labels, NUM_CLASSES))
    torch.testing.assert_close(ldm.guided_prediction(model, x0, t, labels, 1.0), cond, rtol=0, atol=0)
    guided = ldm.guided_prediction(model, x0, t, labels, 3.0)
    torch.testing.assert_close(guided, uncond + 3.0 * (cond - uncond))
    assert not torch.allclose(guided, cond)


def test_scaling_factor_is_measured_on_the_latents_and_decoding_inverts_it(tmp_path):
    vae = seeded(lambda: ldm.build_vae(CFG)).eval()
    pixels = images(6)
    latents, factor = ldm.encode_latents(vae, pixels, batch_size=4)
    assert latents.shape == (6, 4, 4, 4) and latents.dtype == np.float32
    assert latents.std(ddof=1) == pytest.approx(1.0, rel=1e-4)
    with torch.no_grad():
        means = vae.encode(ldm.to_model_range(torch.from_numpy(pixels))).latent_dist.mean  # (6, 4, 4, 4)
        direct = ldm.to_uint8(vae.decode(means).sample)
    decoded = ldm.decode_latents(vae, torch.from_numpy(latents), factor)
    assert (decoded.int() - direct.int()).abs().max() <= 1  # same latents up to float rounding of the scaling

    vae.save_pretrained(tmp_path / "vae")
    assert ldm.load_vae(tmp_path / "vae").config.scaling_factor is None  # a trained VAE's factor is measured
    vae.register_to_config(scaling_factor=0.5)  # e.g. sd-vae-ft-ema's 0.18215
    assert ldm.encode_latents(vae, pixels, batch_size=4)[1] == 0.5


def test_a_vae_overfit_on_a_few_images_reconstructs_them_through_the_scaled_latents(tmp_path):
    train = dataclasses.replace(TINY_TRAIN, steps=100, lr=3e-3, ema=0.0, checkpoint_every=1000)
    pixels = images(4)
    vae, stats = ldm.train_vae(pixels, dataclasses.replace(CFG, vae_train=train), tmp_path, seed=0)
    latents, factor = ldm.encode_latents(ldm.load_vae(tmp_path / "vae"), pixels, batch_size=4)
    recon = ldm.decode_latents(vae, torch.from_numpy(latents), factor).numpy()
    error = np.abs(recon.astype(int) - pixels).mean()
    assert stats["steps"] == 100 and stats["params"] > 0
    assert error < 12, f"mean reconstruction error {error:.1f} grey levels"


def test_resumed_training_ends_with_the_same_weights_as_an_uninterrupted_run(tmp_path):
    rng = np.random.default_rng(0)
    latents = rng.standard_normal((10, 4, 4, 4)).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, 10)
    straight, _ = ldm.train_ldm(latents, labels, CFG, tmp_path / "a", seed=1, num_classes=NUM_CLASSES)
    halfway = dataclasses.replace(CFG, train=dataclasses.replace(TINY_TRAIN, steps=2))
    ldm.train_ldm(latents, labels, halfway, tmp_path / "b", seed=1, num_classes=NUM_CLASSES)
    resumed, stats = ldm.train_ldm(latents, labels, CFG, tmp_path / "b", seed=1, num_classes=NUM_CLASSES)
    assert stats["start_step"] == 2 and stats["steps"] == 4
    for name, value in straight.state_dict().items():  # the EMA weights
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=0)
    ckpt_a, ckpt_b = (training.load_checkpoint(tmp_path / d / "ckpt.pt") for d in "ab")
    for name, value in ckpt_a["model"].items():
        torch.testing.assert_close(ckpt_b["model"][name], value, rtol=0, atol=0)
    loaded = ldm.load_denoiser(tmp_path / "a" / "ckpt.pt", CFG, NUM_CLASSES, latent_channels=4, latent_size=4)
    for name, value in straight.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value, rtol=0, atol=0)


def test_user_mistakes_name_the_fix(tmp_path):
    with pytest.raises(UserError, match="sd-vae-ft-ema"):
        ldm.load_vae(tmp_path / "missing")
    with pytest.raises(UserError, match="DDIMScheduler"):
        ldm.sampling_scheduler(dataclasses.replace(CFG, scheduler="DDIMSchedular"))
    with pytest.raises(UserError, match="dit-tiny"):
        ldm.build_dit("dit-tny", NUM_CLASSES, latent_channels=4, latent_size=4)
