"""Latent-diffusion baseline (LDM, Rombach et al. 2022), built from diffusers parts.

Three pieces, in the order the pipeline runs them:

1. VAE: a diffusers `AutoencoderKL`, either trained here (`train_vae`: L1 reconstruction + KL, LDM's
   `LPIPSWithDiscriminator` without the LPIPS and GAN terms, see below) or loaded from a local diffusers folder
   (`load_vae`; the paper profile uses stabilityai/sd-vae-ft-ema, f = 8). `encode_latents` returns the posterior
   means times the scaling factor 1 / std(latents) measured on the training latents (LDM's `scale_by_std`), or the
   loaded VAE's own factor (sd-vae: 0.18215).
2. Denoiser: a class-conditional diffusers `UNet2DModel` (default) or `DiTTransformer2DModel`, trained with DDPM
   (`train_ldm`) to predict epsilon or v, with labels dropped to a null class (index `num_classes`) so that
   classifier-free guidance works at sampling, and EMA weights kept by `training.fit`.
3. Sampling (`sample_ldm`): any diffusers scheduler by class name (DDIM by default), classifier-free guidance, one
   `torch.Generator` per sample seed for the initial noise and every later noise draw, so an image depends only on
   its seed and label, never on the batch it was drawn in; then VAE decoding to uint8.

Choices and why:
- UNet is the default because the paper's LDM rows (Tables 3 and 4) are UNets; DiT (Peebles & Xie 2023) is the
  alternative `denoiser: dit`, for the DiT-XL/2 row, sizes in `DIT_SIZES`. A DiT is not slower per parameter here:
  we measured 0.50 s/M-params (DiT) vs 0.59 s/M (UNet) per batch-64 step on 32x32 latents; on the tiny
  profile's 8x8 latents (16 tokens) a batch-64 step of dit-tiny (1.4M) takes 0.09 s vs 0.38 s for the (64, 128)
  UNet (4.0M), one thread.
- The trained VAE uses LDM's loss balance (sum of |x - x_rec| over pixels + kl_weight * KL, here divided by the
  pixel count so the L1 term is a mean) but no patch-GAN and no LPIPS: LDM switches its discriminator on after
  50k updates, which a CPU profile never reaches, and LPIPS needs VGG weights this machine does not have. The
  pixel loss of `gan_loss.reconstruction_loss` (L1 + L2) is not LDM's (L1 only), so it is not reused here.
- Noise schedule: LDM-4's (ImageNet cin256-v2): 1000 steps, beta 0.0015 -> 0.0195 on a sqrt scale (diffusers
  "scaled_linear"), no sample clipping (latents are unbounded).
- UNet: LDM-4's layout (cin256-v2): 2 res blocks per level, attention at every level but the first and in the
  middle block; LDM's spatial transformers (self- and cross-attention + MLP) become diffusers' plain self-attention
  blocks with 32-channel heads, and the class enters through the timestep embedding. `unet_channels` sets the size.
- The DiT's built-in label dropout (a fixed 10%, from the global RNG) is switched off: train_ldm drops labels
  itself, at cfg.label_dropout, from the step's generator.

Sizes (parameters, 4 latent channels):
- tiny (CPU, Fashion-MNIST 32 px, 10 classes, latents 4x8x8): VAE `vae_channels=(16, 32, 32)` (f = 4) 0.33M;
  UNet `unet_channels=(64, 128)` 4.0M; DiT `dit-tiny` 1.4M.
- paper (ImageNet 256, 1000 classes, sd-vae-ft-ema latents 4x32x32): UNet `unet_channels=(256, 512, 768, 1152)`
  411M, the size of the paper's LDM-4 rows (400M class-conditional, 395M unconditional; LDM-4's own widths
  (192, 384, 576, 960) give 264M here, without its spatial transformers); DiT `dit-xl` = DiT-XL/2, 750M in
  diffusers' layout (675M in the DiT paper: diffusers repeats the timestep/label embedder in every block).
"""

from __future__ import annotations

import functools
import inspect
import math
from pathlib import Path

import diffusers
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, DiTTransformer2DModel, UNet2DModel
from diffusers.models.embeddings import LabelEmbedding
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor
from tqdm import tqdm

from digit_bench.config import LDMConfig
from digit_bench.errors import UserError
from digit_bench.registry import SCHEDULERS, did_you_mean
from digit_bench.training import fit, load_checkpoint, seeded_init, shard, step_seed

SD_VAE_HINT = ("download stabilityai/sd-vae-ft-ema on a machine with internet (`hf download "
               "stabilityai/sd-vae-ft-ema --local-dir <folder>`: config.json + diffusion_pytorch_model.safetensors), "
               "copy the folder here and set ldm.vae_weights to it")
LAYERS_PER_BLOCK = 2  # res blocks per resolution level, VAE and UNet (LDM and SD: 2)
ATTENTION_HEAD_DIM = 32  # channels per attention head in the UNet (LDM: num_head_channels 32)

# DiT sizes (Peebles & Xie 2023, Table 1) plus a CPU one; all with 2x2 patches.
DIT_SIZES = {
    "dit-tiny": dict(num_layers=4, num_attention_heads=4, attention_head_dim=32),
    "dit-s": dict(num_layers=12, num_attention_heads=6, attention_head_dim=64),
    "dit-b": dict(num_layers=12, num_attention_heads=12, attention_head_dim=64),
    "dit-l": dict(num_layers=24, num_attention_heads=16, attention_head_dim=64),
    "dit-xl": dict(num_layers=28, num_attention_heads=16, attention_head_dim=72),
}


def to_model_range(images: Tensor) -> Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1]."""
    return images.permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (B, 3, H, W)


def to_uint8(x: Tensor) -> Tensor:
    """float (B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3) on the CPU."""
    x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu()  # (B, H, W, 3)


# ----------------------------------------------------------------------------------------------------------- VAE
def build_vae(cfg: LDMConfig) -> AutoencoderKL:
    """A fresh AutoencoderKL from the config: f = 2^(len(vae_channels) - 1)."""
    levels = len(cfg.vae_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=cfg.latent_channels,
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(cfg.vae_channels), layers_per_block=LAYERS_PER_BLOCK,
        norm_num_groups=math.gcd(32, *cfg.vae_channels),  # 32 (SD) when the widths allow it
        scaling_factor=None,  # None = not known yet: encode_latents measures it on the training latents
    )


def load_vae(path: str | Path) -> AutoencoderKL:
    """An AutoencoderKL from a local diffusers folder (config.json + weights); nothing is downloaded."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise UserError(f"no diffusers VAE folder at {path} (config.json missing): {SD_VAE_HINT}")
    return AutoencoderKL.from_pretrained(path, low_cpu_mem_usage=False).eval()  # False: no `accelerate` warning


def vae_loss(vae: AutoencoderKL, batch: tuple[Tensor, Tensor], kl_weight: float
             ) -> tuple[dict[str, Tensor], dict[str, float]]:
    """fit's loss on (uint8 images (B, H, W, 3), posterior noise (B, C, h, w)).

    mean |x - x_rec| + kl_weight * KL / (3 H W): LDM's sum-over-pixels loss divided by the pixel count.
    """
    x = to_model_range(batch[0])  # (B, 3, H, W)
    posterior = vae.encode(x).latent_dist
    z = posterior.mean + posterior.std * batch[1]  # (B, C, h, w): a posterior sample with the step's noise
    rec = F.l1_loss(vae.decode(z).sample.float(), x)
    kl = posterior.kl().float().mean() / x[0].numel()
    return {"main": rec + kl_weight * kl}, {"rec_l1": rec.item(), "kl": kl.item()}


def train_vae(images: np.ndarray, cfg: LDMConfig, work_dir: Path, seed: int) -> tuple[AutoencoderKL, dict]:
    """Train an AutoencoderKL on uint8 images (N, H, W, 3) with `training.fit` (cfg.vae_train) and `vae_loss`.

    Each step draws its images and posterior noise from a generator of (seed, step). Saves the weights as a
    diffusers folder `work_dir / "vae"` (readable by `load_vae`).

    Returns:
        (the trained VAE in eval mode, fit's stats plus `params`).
    """
    work_dir = Path(work_dir)
    n, height, width, _ = images.shape
    f = 2 ** (len(cfg.vae_channels) - 1)
    if height % f or width % f:
        raise UserError(f"image size {height}x{width} must divide by the VAE factor f={f}; change ldm.vae_channels")
    with seeded_init(seed):  # diffusers initialises from the global RNG
        vae = build_vae(cfg)
    train = cfg.vae_train
    latent_shape = (cfg.latent_channels, height // f, width // f)

    def batch_fn(step: int, rank: int, world_size: int) -> list[tuple[Tensor, Tensor]]:
        gen = torch.Generator().manual_seed(step_seed(seed, step))
        idx = torch.randint(0, n, (train.batch_size,), generator=gen).numpy()  # (B,) with replacement
        eps = torch.randn((train.batch_size, *latent_shape), generator=gen)  # (B, C, h, w)
        x = torch.from_numpy(images[idx])  # (B, H, W, 3)
        return [(x[s], eps[s]) for s in shard(train.batch_size, train.accumulation(world_size)[1], rank, world_size)]

    loss_fn = functools.partial(vae_loss, kl_weight=cfg.kl_weight)
    stats = fit(vae, loss_fn, batch_fn, train, work_dir, seed=seed, desc="vae")
    vae.eval().save_pretrained(work_dir / "vae")
    return vae, {**stats, "params": sum(p.numel() for p in vae.parameters())}


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, images: np.ndarray, batch_size: int) -> tuple[np.ndarray, float]:
    """Posterior means of uint8 images (N, H, W, 3), scaled to unit variance.

    Returns:
        (float32 latents (N, C, h, w) already multiplied by the factor, the factor). The factor is the VAE's own
        `config.scaling_factor` when it has one (loaded VAEs), else 1 / std of these latents (LDM's scale_by_std).
    """
    vae.eval()
    device = next(vae.parameters()).device
    chunks = []
    for start in range(0, len(images), batch_size):
        x = to_model_range(torch.from_numpy(images[start:start + batch_size]).to(device))  # (b, 3, H, W)
        chunks.append(vae.encode(x).latent_dist.mean.float().cpu())  # (b, C, h, w)
    latents = torch.cat(chunks)  # (N, C, h, w)
    factor = vae.config.scaling_factor
    if factor is None:
        factor = 1.0 / latents.std().item()
    return (latents * factor).numpy(), float(factor)


@torch.no_grad()
def decode_latents(vae: AutoencoderKL, latents: Tensor, scaling_factor: float) -> Tensor:
    """Scaled latents (B, C, h, w) -> uint8 images (B, H, W, 3) on the CPU."""
    return to_uint8(vae.decode(latents.to(vae.device) / scaling_factor).sample)


# ------------------------------------------------------------------------------------------------------ denoiser
class Denoiser(nn.Module):
    """A diffusers UNet2DModel or DiTTransformer2DModel behind one call: (noisy latents, t, labels) -> prediction.

    Labels are class indices; `num_classes` is the null class used for label dropout and unconditional guidance.
    """

    def __init__(self, net: nn.Module, num_classes: int):
        super().__init__()
        self.net = net
        self.num_classes = num_classes

    def forward(self, x: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        return self.net(x, t, class_labels=labels).sample  # (B, C, h, w)


def build_denoiser(cfg: LDMConfig, num_classes: int, latent_channels: int, latent_size: int) -> Denoiser:
    """A fresh denoiser for latents (latent_channels, latent_size, latent_size) with num_classes + 1 label rows."""
    if cfg.denoiser == "unet":
        levels = len(cfg.unet_channels)
        net = UNet2DModel(
            sample_size=latent_size, in_channels=latent_channels, out_channels=latent_channels,
            block_out_channels=tuple(cfg.unet_channels), layers_per_block=LAYERS_PER_BLOCK,
            down_block_types=("DownBlock2D",) + ("AttnDownBlock2D",) * (levels - 1),
            up_block_types=("AttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",),
            attention_head_dim=ATTENTION_HEAD_DIM,
            num_class_embeds=num_classes + 1,  # the last row is the null class
        )
        return Denoiser(net, num_classes)
    return build_dit(cfg.dit_size, num_classes, latent_channels, latent_size)


def build_dit(size: str, num_classes: int, latent_channels: int, latent_size: int) -> Denoiser:
    """A fresh DiT of DIT_SIZES[size] with 2x2 patches and num_classes + 1 label rows."""
    if size not in DIT_SIZES:
        raise UserError(f"unknown ldm.dit_size {size!r}{did_you_mean(size, list(DIT_SIZES))}; "
                        f"choose one of: {', '.join(DIT_SIZES)}")
    if latent_size % 2:
        raise UserError(f"DiT needs an even latent size (2x2 patches), got {latent_size}; change ldm.vae_channels")
    net = DiTTransformer2DModel(
        in_channels=latent_channels, sample_size=latent_size, patch_size=2,
        num_embeds_ada_norm=num_classes,  # diffusers adds the null row itself (index num_classes)
        **DIT_SIZES[size],
    )
    for module in net.modules():
        if isinstance(module, LabelEmbedding):
            module.dropout_prob = 0.0  # its fixed 10% dropout is off: train_ldm drops labels at cfg.label_dropout
    return Denoiser(net, num_classes)


def noise_scheduler(cfg: LDMConfig) -> DDPMScheduler:
    """The training noise schedule (LDM-4's); samplers are built from its config."""
    return DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_start=0.0015, beta_end=0.0195,
                         beta_schedule="scaled_linear", clip_sample=False, prediction_type=cfg.prediction_type)


def diffusion_loss(model: nn.Module, batch: tuple[Tensor, ...], scheduler: DDPMScheduler
                   ) -> tuple[dict[str, Tensor], dict[str, float]]:
    """fit's DDPM loss on (clean latents, labels, timesteps, noise): MSE to the noise or to the velocity v."""
    x0, y, t, noise = batch
    noisy = scheduler.add_noise(x0, noise, t)  # (B, C, h, w)
    if scheduler.config.prediction_type == "epsilon":
        target = noise
    else:
        target = scheduler.get_velocity(x0, noise, t)  # (B, C, h, w)
    loss = F.mse_loss(model(noisy, t, y).float(), target)
    return {"main": loss}, {"mse": loss.item()}


def train_ldm(latents: np.ndarray, labels: np.ndarray, cfg: LDMConfig, work_dir: Path, seed: int,
              num_classes: int) -> tuple[Denoiser, dict]:
    """DDPM-train a class-conditional denoiser on scaled latents (N, C, h, w) with `training.fit` under `cfg.train`.

    Every step draws, from a generator of (seed, step): the images, the timesteps, the noise and which labels drop
    to the null class (probability cfg.label_dropout). Loss: MSE between the prediction and the noise (epsilon) or
    the velocity (v_prediction).

    Returns:
        (the denoiser in eval mode with the EMA weights when cfg.train.ema > 0, fit's stats plus `params`).
    """
    n, channels, size, _ = latents.shape
    with seeded_init(seed):  # diffusers initialises from the global RNG
        model = build_denoiser(cfg, num_classes, channels, size)
    train = cfg.train

    def batch_fn(step: int, rank: int, world_size: int) -> list[tuple[Tensor, ...]]:
        gen = torch.Generator().manual_seed(step_seed(seed, step))
        idx = torch.randint(0, n, (train.batch_size,), generator=gen).numpy()  # (B,) with replacement
        t = torch.randint(0, cfg.num_train_timesteps, (train.batch_size,), generator=gen)  # (B,)
        noise = torch.randn((train.batch_size, channels, size, size), generator=gen)  # (B, C, h, w)
        drop = torch.rand(train.batch_size, generator=gen) < cfg.label_dropout  # (B,)
        y = torch.where(drop, num_classes, torch.from_numpy(labels[idx]).long())  # (B,)
        x0 = torch.from_numpy(latents[idx]).float()  # (B, C, h, w); rows only, so a memmap stays on disk
        slices = shard(train.batch_size, train.accumulation(world_size)[1], rank, world_size)
        return [(x0[s], y[s], t[s], noise[s]) for s in slices]

    loss_fn = functools.partial(diffusion_loss, scheduler=noise_scheduler(cfg))
    stats = fit(model, loss_fn, batch_fn, train, Path(work_dir), seed=seed, desc=f"ldm-{cfg.denoiser}")
    if train.ema > 0:
        model.load_state_dict(load_checkpoint(Path(work_dir) / "ckpt.pt")["ema"])
    return model.eval(), {**stats, "params": sum(p.numel() for p in model.parameters())}


def load_denoiser(ckpt_path: Path, cfg: LDMConfig, num_classes: int, latent_channels: int, latent_size: int
                  ) -> Denoiser:
    """The denoiser of a `train_ldm` checkpoint, with its EMA weights when it has them, in eval mode."""
    ckpt = load_checkpoint(Path(ckpt_path))
    model = build_denoiser(cfg, num_classes, latent_channels, latent_size)
    model.load_state_dict(ckpt["ema"] if "ema" in ckpt else ckpt["model"])
    return model.eval()


# ------------------------------------------------------------------------------------------------------ sampling
def sampling_scheduler(cfg: LDMConfig) -> diffusers.SchedulerMixin:
    """The registered diffusers scheduler `cfg.scheduler`, configured from the training schedule, timesteps set."""
    cls = SCHEDULERS.get(cfg.scheduler, "ldm.scheduler")
    scheduler = cls.from_config(noise_scheduler(cfg).config)
    scheduler.set_timesteps(cfg.num_inference_steps)
    return scheduler


def guided_prediction(model: Denoiser, x: Tensor, t: Tensor, labels: Tensor, cfg_scale: float) -> Tensor:
    """Classifier-free guidance: uncond + s (cond - uncond); s = 1 runs the conditional prediction only."""
    if cfg_scale == 1.0:
        return model(x, t, labels)  # (B, C, h, w)
    null = torch.full_like(labels, model.num_classes)  # (B,)
    both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null]))  # (2B, C, h, w)
    cond, uncond = both.chunk(2)  # (B, C, h, w) each
    return uncond + cfg_scale * (cond - uncond)


@torch.no_grad()
def sample_ldm(model: Denoiser, vae: AutoencoderKL, scaling_factor: float, labels: np.ndarray, seeds: np.ndarray,
               cfg: LDMConfig, batch_size: int) -> np.ndarray:
    """Generate one image per (label, seed): uint8 (N, H, W, 3). Label `model.num_classes` = unconditional.

    Each sample owns a CPU `torch.Generator` seeded with its seed; it draws the initial latents and any noise the
    scheduler adds later (diffusers' per-sample generator lists), so the output does not depend on batch_size.
    """
    model.eval()
    vae.eval()
    device = next(model.parameters()).device
    net_config = model.net.config
    shape = (net_config.in_channels, net_config.sample_size, net_config.sample_size)
    images = []
    for start in tqdm(range(0, len(labels), batch_size), desc="ldm sample", unit="batch"):
        y = torch.as_tensor(labels[start:start + batch_size], dtype=torch.long, device=device)  # (b,)
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds[start:start + batch_size]]
        scheduler = sampling_scheduler(cfg)  # fresh per batch: multistep schedulers keep state
        # As diffusers pipelines' prepare_extra_step_kwargs: pass the generators only where step() takes them.
        takes_generator = "generator" in inspect.signature(scheduler.step).parameters
        step_kwargs = {"generator": generators} if takes_generator else {}
        x = randn_tensor((len(y), *shape), generator=generators, device=device)  # (b, C, h, w)
        x = x * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            inp = scheduler.scale_model_input(x, t)  # (b, C, h, w)
            pred = guided_prediction(model, inp, t.to(device).expand(len(y)), y, cfg.cfg_scale)
            x = scheduler.step(pred, t, x, **step_kwargs).prev_sample  # (b, C, h, w)
        images.append(decode_latents(vae, x, scaling_factor))
    return torch.cat(images).numpy()
