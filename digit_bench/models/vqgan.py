"""VQGAN: the reconstructive image tokenizer of the baselines and the pixel decoder of DiGIT's stage 2.

A conv encoder maps an image to a (z, h, w) grid, a `VectorQuantizer` snaps every cell to its nearest code, and a
conv decoder renders the codes back to pixels (Esser et al. 2021, "Taming Transformers"). Two layouts (`arch`):

- "taming": taming-transformers' `Encoder`/`Decoder`/`VQModel` (ResnetBlocks, attention at the lowest
  resolution, strided-conv downsampling, 1x1 `quant_conv`/`post_quant_conv`); the network sees pixels in [-1, 1].
- "maskgit": MAGE's PyTorch port of the MaskGIT JAX VQGAN, i.e. the paper's `vqgan_jax_strongaug.ckpt` (paper
  §3.1: ch 128, ch_mult 1,1,2,2,4, 2 blocks, 1024 x 256 codes). No attention, bias-free residual convs,
  average-pool downsampling, a 1x1 encoder output and no quant convs; the network sees pixels in [0, 1].

Either way the public API takes and returns images in [0, 1]. Module names equal taming's and MAGE's, so their
state dicts load 1:1 (`load_taming_checkpoint`). `train_vqgan` trains one here with `training.fit`, the
reconstruction + patch-GAN losses of `gan_loss.py`, and dead-code restarts from batch encodings.

Modified from: https://github.com/CompVis/taming-transformers (taming/modules/diffusionmodules/model.py,
taming/modules/vqvae/quantize.py), MIT license, and https://github.com/LTH14/mage (taming/), MIT license.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from digit_bench.config import VQGANConfig
from digit_bench.errors import UserError
from digit_bench.models.gan_loss import AutoencoderGANLoss
from digit_bench.training import fit, save_checkpoint, seeded_init, shard, step_rng, step_seed
from digit_bench.weights import load_weights

ARCHS = ("taming", "maskgit")


def Normalize(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """GroupNorm -> swish -> conv, twice, plus a shortcut (1x1 conv when the width changes)."""

    def __init__(self, in_channels: int, out_channels: int, maskgit: bool):
        super().__init__()
        self.maskgit = maskgit
        bias = not maskgit  # the JAX MaskGIT convs have no bias
        self.norm1 = Normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias)
        self.norm2 = Normalize(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=bias)
        self.nin_shortcut = None
        if in_channels != out_channels:
            # NOTE: MAGE's port projects the residual branch's output h (out -> out), taming projects x (in -> out).
            self.nin_shortcut = nn.Conv2d(out_channels if maskgit else in_channels, out_channels, 1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(h if self.maskgit else x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the h*w cells, with 1x1-conv projections (taming's AttnBlock)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = Normalize(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        h = self.norm(x)
        q, k, v = (proj(h).flatten(2).transpose(1, 2) for proj in (self.q, self.k, self.v))  # 3 x (B, HW, C)
        h = F.scaled_dot_product_attention(q, k, v)  # (B, HW, C)
        h = h.transpose(1, 2).reshape(B, C, H, W)  # (B, C, H, W)
        return x + self.proj_out(h)


class Downsample(nn.Module):
    """Halve the resolution: strided 3x3 conv (taming) or 2x2 average pooling (maskgit)."""

    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0) if with_conv else None

    def forward(self, x: Tensor) -> Tensor:
        if self.conv is None:
            return F.avg_pool2d(x, 2)  # (B, C, H/2, W/2)
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # taming pads right/bottom only: (B, C, H/2, W/2)


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # (B, C, 2H, 2W)


def _level(blocks: list[nn.Module], attn: list[nn.Module]) -> nn.Module:
    """One resolution level with taming's attribute names: .block, .attn (and later .downsample/.upsample)."""
    level = nn.Module()
    level.block = nn.ModuleList(blocks)
    level.attn = nn.ModuleList(attn)
    return level


class Encoder(nn.Module):
    """Image (B, 3, H, W) -> z (B, z_channels, H/f, W/f), f = 2^(len(ch_mult)-1)."""

    def __init__(self, ch: int, ch_mult: tuple[int, ...], num_res_blocks: int, z_channels: int, maskgit: bool):
        super().__init__()
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1, bias=not maskgit)
        in_ch_mult = (1,) + tuple(ch_mult)
        self.down = nn.ModuleList()
        for i, mult in enumerate(ch_mult):
            block_in, block_out = ch * in_ch_mult[i], ch * mult
            blocks = [ResnetBlock(block_in if j == 0 else block_out, block_out, maskgit) for j in range(num_res_blocks)]
            lowest = i == len(ch_mult) - 1
            attn = [AttnBlock(block_out) for _ in range(num_res_blocks)] if lowest and not maskgit else []
            level = _level(blocks, attn)
            if not lowest:
                level.downsample = Downsample(block_out, with_conv=not maskgit)
            self.down.append(level)
        block_in = ch * ch_mult[-1]
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, maskgit)
        self.mid.attn_1 = None if maskgit else AttnBlock(block_in)
        self.mid.block_2 = ResnetBlock(block_in, block_in, maskgit)
        self.norm_out = Normalize(block_in)
        kernel = 1 if maskgit else 3
        self.conv_out = nn.Conv2d(block_in, z_channels, kernel, padding=kernel // 2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)  # (B, ch, H, W)
        for i, level in enumerate(self.down):
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn) > 0:
                    h = level.attn[j](h)
            if i < len(self.down) - 1:
                h = level.downsample(h)  # (B, C, H/2^(i+1), W/2^(i+1))
        h = self.mid.block_1(h)
        if self.mid.attn_1 is not None:
            h = self.mid.attn_1(h)
        h = self.mid.block_2(h)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, z, h, w)


class Decoder(nn.Module):
    """z (B, z_channels, h, w) -> image (B, 3, h*f, w*f); `up[i]` mirrors `down[i]` of the encoder."""

    def __init__(self, ch: int, ch_mult: tuple[int, ...], num_res_blocks: int, z_channels: int, maskgit: bool):
        super().__init__()
        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, maskgit)
        self.mid.attn_1 = None if maskgit else AttnBlock(block_in)
        self.mid.block_2 = ResnetBlock(block_in, block_in, maskgit)
        n_blocks = num_res_blocks if maskgit else num_res_blocks + 1  # taming's decoder has one extra per level
        self.up = nn.ModuleList()
        for i in reversed(range(len(ch_mult))):
            block_out = ch * ch_mult[i]
            blocks = [ResnetBlock(block_in if j == 0 else block_out, block_out, maskgit) for j in range(n_blocks)]
            lowest = i == len(ch_mult) - 1
            level = _level(blocks, [AttnBlock(block_out) for _ in range(n_blocks)] if lowest and not maskgit else [])
            if i != 0:
                level.upsample = Upsample(block_out)
            self.up.insert(0, level)  # up[0] is the full-resolution level, as in taming
            block_in = block_out
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, 3, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.conv_in(z)  # (B, C, h, w)
        h = self.mid.block_1(h)
        if self.mid.attn_1 is not None:
            h = self.mid.attn_1(h)
        h = self.mid.block_2(h)
        for i in reversed(range(len(self.up))):
            level = self.up[i]
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn) > 0:
                    h = level.attn[j](h)
            if i != 0:
                h = level.upsample(h)  # (B, C, 2h, 2w)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, 3, H, W)


class VectorQuantizer(nn.Module):
    """Nearest-code quantizer with a straight-through gradient (taming's VectorQuantizer2, legacy=False).

    Args:
        n_embed: codebook size K.
        embed_dim: code dimension D.
        beta: commitment weight: loss = ||sg[z] - e||^2 + beta * ||z - sg[e]||^2.
        l2_codes: l2-normalise encodings and codes before the lookup (ViT-VQGAN's cosine codebook).
    """

    def __init__(self, n_embed: int, embed_dim: int, beta: float, l2_codes: bool):
        super().__init__()
        self.n_embed, self.embed_dim, self.beta, self.l2_codes = n_embed, embed_dim, beta, l2_codes
        self.embedding = nn.Embedding(n_embed, embed_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_embed, 1.0 / n_embed)

    def codebook(self) -> Tensor:
        w = self.embedding.weight  # (K, D)
        return F.normalize(w, dim=1) if self.l2_codes else w

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """z (B, D, h, w) -> (z_q (B, D, h, w) straight-through, loss, indices (B, h, w) int64)."""
        B, D, H, W = z.shape
        # NOTE: distances in fp32 even under bf16 autocast, or near-ties pick the wrong code.
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = z.float().permute(0, 2, 3, 1).reshape(-1, D)  # (BHW, D)
            if self.l2_codes:
                z = F.normalize(z, dim=1)
            codes = self.codebook().float()  # (K, D)
            dist = z.pow(2).sum(1, keepdim=True) - 2 * z @ codes.t() + codes.pow(2).sum(1)  # (BHW, K)
            idx = dist.argmin(1)  # (BHW,)
            z_q = codes[idx]  # (BHW, D)
            loss = F.mse_loss(z_q, z.detach()) + self.beta * F.mse_loss(z, z_q.detach())
            z_q = z + (z_q - z).detach()  # straight-through: the decoder's gradient reaches the encoder
        z_q = z_q.view(B, H, W, D).permute(0, 3, 1, 2).contiguous()  # (B, D, h, w)
        return z_q, loss, idx.view(B, H, W)

    def lookup(self, idx: Tensor) -> Tensor:
        """indices (B, h, w) -> code vectors (B, D, h, w)."""
        return self.codebook()[idx].permute(0, 3, 1, 2).contiguous()  # (B, D, h, w)

    @torch.no_grad()
    def restart_dead_codes(self, z_flat: Tensor, usage: Tensor, generator: torch.Generator) -> int:
        """Move every code with zero `usage` onto a random encoding of `z_flat` (N, D); return how many moved."""
        dead = (usage == 0).nonzero().squeeze(1)  # (n_dead,)
        if len(dead) == 0:
            return 0
        pick = torch.randint(0, len(z_flat), (len(dead),), generator=generator).to(z_flat.device)  # (n_dead,)
        self.embedding.weight[dead] = z_flat[pick].to(self.embedding.weight.dtype)
        return len(dead)


class VQGAN(nn.Module):
    """Encoder + quantizer + decoder; images in [0, 1] in and out.

    Args:
        cfg: sizes (ch, ch_mult, num_res_blocks, z_channels, n_embed, embed_dim, beta, l2_codes).
        resolution: image side in pixels; must divide by f = 2^(len(ch_mult)-1).
        arch: "taming" (trained here, CompVis checkpoints) or "maskgit" (MAGE's vqgan_jax_strongaug.ckpt).
    """

    def __init__(self, cfg: VQGANConfig, resolution: int, arch: str = "taming"):
        super().__init__()
        if arch not in ARCHS:
            raise UserError(f"unknown VQGAN arch {arch!r}; choose one of: {', '.join(ARCHS)}")
        bad = [ch for ch in [cfg.ch] + [cfg.ch * m for m in cfg.ch_mult] if ch % 32]
        if bad:
            raise UserError(f"vqgan.ch * ch_mult gives widths {bad} that GroupNorm(32) cannot split; "
                            f"use a multiple of 32 for vqgan.ch")
        self.arch, self.maskgit = arch, arch == "maskgit"
        self.factor = 2 ** (len(cfg.ch_mult) - 1)
        self.resolution = resolution
        self.grid(resolution)
        if self.maskgit and cfg.z_channels != cfg.embed_dim:
            raise UserError(f"the maskgit VQGAN has no quant_conv, so vqgan.z_channels ({cfg.z_channels}) must equal "
                            f"vqgan.embed_dim ({cfg.embed_dim})")
        args = (cfg.ch, tuple(cfg.ch_mult), cfg.num_res_blocks, cfg.z_channels, self.maskgit)
        self.encoder = Encoder(*args)
        self.decoder = Decoder(*args)
        self.quantize = VectorQuantizer(cfg.n_embed, cfg.embed_dim, cfg.beta, cfg.l2_codes)
        # nn.Identity has no parameters, so the maskgit state dict has no quant_conv keys, as MAGE's.
        self.quant_conv = nn.Identity() if self.maskgit else nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.post_quant_conv = nn.Identity() if self.maskgit else nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    def grid(self, resolution: int) -> int:
        """Side of the token grid for square images of `resolution` pixels."""
        if resolution % self.factor:
            raise UserError(f"image size {resolution} is not divisible by the VQGAN's downsampling factor "
                            f"{self.factor} (2^(len(vqgan.ch_mult)-1)); change data.image_size or vqgan.ch_mult")
        return resolution // self.factor

    @property
    def last_layer(self) -> Tensor:
        """The decoder's last weight, where the adaptive GAN weight is measured."""
        return self.decoder.conv_out.weight

    def encode_features(self, x: Tensor) -> Tensor:
        """Pre-quantisation encodings (B, D, h, w) of images x (B, 3, H, W) in [0, 1]."""
        # taming networks were trained on [-1, 1] pixels, MAGE's on [0, 1] (paper §3.1).
        return self.quant_conv(self.encoder(x if self.maskgit else x * 2 - 1))  # (B, D, h, w)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Images (B, 3, H, W) in [0, 1] -> (z_q (B, D, h, w), indices (B, h, w), vq loss)."""
        z_q, vq_loss, indices = self.quantize(self.encode_features(x))
        return z_q, indices, vq_loss

    def decode(self, z_q: Tensor) -> Tensor:
        """Codes (B, D, h, w) -> images (B, 3, H, W) on the [0, 1] scale, not clamped (for losses)."""
        y = self.decoder(self.post_quant_conv(z_q))  # (B, 3, H, W)
        return y if self.maskgit else (y + 1) / 2

    def decode_indices(self, indices: Tensor) -> Tensor:
        """Token grid (B, h, w) -> images (B, 3, H, W) clamped to [0, 1]."""
        return self.decode(self.quantize.lookup(indices)).clamp(0, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Images in [0, 1] -> (reconstruction (not clamped), vq loss, indices (B, h, w))."""
        z_q, indices, vq_loss = self.encode(x)
        return self.decode(z_q), vq_loss, indices


def load_taming_checkpoint(model: VQGAN, path: str | Path) -> None:
    """Load a taming/MAGE-format VQGAN state dict into `model`, strictly.

    Accepts a bare state dict or {"state_dict": ...}; keys under `loss.` (discriminator, LPIPS) are dropped.
    Any missing, unexpected or mis-shaped key is a UserError naming the first few and the config to match.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"VQGAN weights {path} not found; set vqgan.weights to a taming/MAGE-format checkpoint")
    state = load_weights(path, "vqgan.weights")
    state = state.get("state_dict", state)
    state = {k: v for k, v in state.items() if not k.startswith("loss.")}
    own = model.state_dict()
    missing = sorted(own.keys() - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    shapes = [f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}"
              for k in sorted(own.keys() & state.keys()) if state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        hint = ""
        if "quant_conv.weight" in missing:
            hint = "; it has no quant_conv, so it looks like a MAGE/MaskGIT checkpoint: use arch 'maskgit'"
        elif "quant_conv.weight" in unexpected:
            hint = "; it has a quant_conv, so it looks like a taming checkpoint: use arch 'taming'"
        raise UserError(
            f"{path} does not fit this VQGAN (arch {model.arch!r}): missing {missing[:4]} ({len(missing)}), "
            f"unexpected {unexpected[:4]} ({len(unexpected)}), shape mismatches {shapes[:4]} ({len(shapes)}); "
            f"vqgan.ch, ch_mult, num_res_blocks, z_channels, n_embed and embed_dim must match the checkpoint{hint}")
    model.load_state_dict(state, strict=True)


# ------------------------------------------------------------------------------------------------------ training
RESTART_EVERY = 100  # updates between dead-code restarts (codes unused over that window move onto encodings)


class _VQGANTraining(nn.Module):
    """What `fit` trains: the VQGAN ("gen" group), the GAN loss's discriminator ("disc" group) and the code
    usage since the last restart (a buffer, so that it is checkpointed and a resumed run restarts the same codes)."""

    def __init__(self, vqgan: VQGAN, gan: AutoencoderGANLoss):
        super().__init__()
        self.vqgan, self.gan = vqgan, gan
        self.register_buffer("usage", torch.zeros(vqgan.quantize.n_embed, dtype=torch.long))
        self.register_buffer("restarted", torch.zeros((), dtype=torch.long))  # codes restarted so far
        self.last_z: Tensor | None = None  # (N, D) encodings of the last micro-batch


def _vqgan_loss(model: _VQGANTraining, batch: tuple[Tensor, int]) -> tuple[dict[str, Tensor], dict[str, float]]:
    images, step = batch
    x = images.permute(0, 3, 1, 2).float() / 255  # (B, 3, H, W) in [0, 1]
    z = model.vqgan.encode_features(x)  # (B, D, h, w)
    z_q, vq_loss, indices = model.vqgan.quantize(z)
    recon = model.vqgan.decode(z_q)  # (B, 3, H, W)
    gen_loss, d_loss, logs = model.gan(recon, x, model.vqgan.last_layer, step)
    with torch.no_grad():
        model.usage += torch.bincount(indices.flatten(), minlength=len(model.usage))
        model.last_z = z.detach().float().permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # (B*h*w, D)
    return {"gen": gen_loss + vq_loss, "disc": d_loss}, {**logs, "vq_loss": vq_loss.item()}


def _restart_dead_codes(model: _VQGANTraining, step: int, seed: int, last_step: int) -> None:
    """Every RESTART_EVERY updates but the last, move codes unused since the last restart onto batch encodings."""
    if step % RESTART_EVERY or step == last_step or model.last_z is None:
        return
    z = model.last_z
    if dist.is_available() and dist.is_initialized():  # every rank must move the same codes to the same places
        dist.all_reduce(model.usage)
        dist.broadcast(z, src=0)
    generator = torch.Generator().manual_seed(step_seed(seed, step))
    model.restarted += model.vqgan.quantize.restart_dead_codes(z, model.usage, generator)
    model.usage.zero_()


@torch.no_grad()
def reconstruction_metrics(model: VQGAN, images: np.ndarray, batch_size: int = 64) -> dict[str, float]:
    """PSNR (dB, mean over images, reconstructions clamped to [0, 1]) and codebook statistics of uint8 (N, H, W, 3).

    codebook_usage = fraction of codes used at least once; codebook_perplexity = exp(entropy of code frequencies).
    """
    device = next(model.parameters()).device
    counts = torch.zeros(model.quantize.n_embed, dtype=torch.float64)
    psnrs = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(images[start:start + batch_size]).to(device)  # (B, H, W, 3) uint8
        x = x.permute(0, 3, 1, 2).float() / 255  # (B, 3, H, W)
        z_q, indices, _ = model.encode(x)
        recon = model.decode(z_q).clamp(0, 1)  # (B, 3, H, W)
        mse = (recon - x).pow(2).flatten(1).mean(1)  # (B,)
        psnrs.append(10 * torch.log10(1.0 / mse.clamp_min(1e-10)))
        counts += torch.bincount(indices.flatten().cpu(), minlength=len(counts)).double()
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return {"psnr": torch.cat(psnrs).mean().item(), "codebook_usage": (counts > 0).double().mean().item(),
            "codebook_perplexity": entropy.exp().item()}


def train_vqgan(images: np.ndarray, cfg: VQGANConfig, work_dir: Path, seed: int, *,
                held_images: np.ndarray | None = None, arch: str = "taming") -> dict:
    """Train a VQGAN on uint8 images (N, H, W, 3) with `training.fit`; resumes from work_dir/ckpt.pt.

    Two optimizer groups: "gen" (encoder, quantizer, decoder: L1 + L2 [+ LPIPS] + adaptive hinge-GAN + VQ loss)
    and "disc" (patch-GAN discriminator, from cfg.disc_start). The trained VQGAN's state dict, in taming layout,
    is written to work_dir/vqgan.pt (load it with `load_taming_checkpoint`).

    Args:
        held_images: images for the PSNR/codebook statistics (e.g. the val split); None = the first 64 train images.

    Returns:
        fit's stats plus psnr, psnr_images ("held" | "train"), codebook_usage, codebook_perplexity,
        dead_codes_restarted, perceptual (LPIPS status), params, weights (path of vqgan.pt).
    """
    if images.ndim != 4 or images.shape[3] != 3 or images.shape[1] != images.shape[2] or images.dtype != np.uint8:
        raise UserError(f"train_vqgan needs square uint8 RGB images (N, H, H, 3), got {images.dtype} {images.shape}")
    tcfg, resolution = cfg.train, images.shape[1]
    disc_layers = min(3, int(math.log2(resolution / 3)))  # taming's 3 where the patch logits still fit (>= 24 px)
    with seeded_init(seed):
        vqgan = VQGAN(cfg, resolution, arch=arch)
        gan = AutoencoderGANLoss(cfg.disc_start, cfg.disc_weight, cfg.perceptual_weight, disc_layers=disc_layers)
        model = _VQGANTraining(vqgan, gan)

    def batch_fn(step: int, rank: int, world: int) -> list[tuple[Tensor, int]]:
        rng = step_rng(seed, step)
        idx = rng.choice(len(images), size=tcfg.batch_size, replace=tcfg.batch_size > len(images))  # (B,)
        return [(torch.from_numpy(images[idx[m]]), step) for m in shard(tcfg.batch_size, tcfg.accumulation(world)[1], rank, world)]  # (b, H, W, 3)

    stats = fit(model, _vqgan_loss, batch_fn, tcfg, work_dir, seed=seed,
                param_groups={"gen": list(vqgan.parameters()), "disc": list(gan.parameters())},
                after_step=lambda m, step: _restart_dead_codes(m, step, seed, tcfg.steps), desc="vqgan")
    weights = Path(work_dir) / "vqgan.pt"
    save_checkpoint(weights, vqgan.state_dict())
    vqgan.eval()
    metrics = reconstruction_metrics(vqgan, images[:64] if held_images is None else held_images)
    return {**stats, **metrics, "psnr_images": "train" if held_images is None else "held",
            "dead_codes_restarted": int(model.restarted), "perceptual": gan.perceptual_status,
            "params": sum(p.numel() for p in vqgan.parameters()), "weights": str(weights)}
