"""Reconstruction + patch-GAN losses for image autoencoders (the VQGAN here, the LDM's VAE later).

The recipe is taming-transformers' `VQLPIPSWithDiscriminator` (Esser et al. 2021), written model-agnostically:
every function takes the reconstruction, the target and, where needed, the decoder's last weight tensor.

- reconstruction: L1 + L2 on pixels in [0, 1];
- perceptual: LPIPS-VGG, used only when the `lpips` package and torchvision's VGG16 weights are on this machine.
  Nothing is downloaded; when they are missing the loss is left out and the reason is recorded, never faked;
- adversarial: a pix2pix `NLayerDiscriminator` (patch-GAN) with the hinge loss, switched on after `disc_start`
  updates, its generator term scaled by the adaptive weight ||grad rec|| / ||grad gan|| at the decoder's last
  layer (taming's `calculate_adaptive_weight`).

Modified from: https://github.com/CompVis/taming-transformers (taming/modules/losses/vqperceptual.py,
taming/modules/discriminator/model.py), MIT license.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

# torchvision's ImageNet VGG16 file, the backbone LPIPS-VGG is built on.
VGG16_FILE = "vgg16-397923af.pth"


class NLayerDiscriminator(nn.Module):
    """pix2pix patch-GAN: strided 4x4 convs, one logit per overlapping patch.

    Args:
        in_channels: image channels.
        ndf: channels of the first layer, doubled per layer up to 8x.
        n_layers: strided layers (3 = 70x70 receptive field on 256 px).
    """

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1  # the last hidden layer keeps the resolution
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        for m in self.modules():  # DCGAN init, as taming's weights_init
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.main(x)  # (B, 1, h', w') patch logits


def reconstruction_loss(recon: Tensor, target: Tensor) -> Tensor:
    """L1 + L2 pixel loss, each a mean over all elements."""
    return (recon - target).abs().mean() + (recon - target).pow(2).mean()


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Hinge loss of the discriminator: push real logits above +1 and fake ones below -1."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adaptive_weight(rec_loss: Tensor, g_loss: Tensor, last_layer: Tensor, disc_weight: float) -> Tensor:
    """disc_weight * ||d rec / d W|| / ||d gan / d W|| at the decoder's last weight W, clamped to [0, 1e4]."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = rec_grad.norm() / (g_grad.norm() + 1e-4)
    return torch.clamp(weight, 0.0, 1e4).detach() * disc_weight


def load_lpips() -> tuple[nn.Module | None, str]:
    """LPIPS-VGG from files already on this machine, or (None, "unavailable: <why>"). Never downloads."""
    if importlib.util.find_spec("lpips") is None:
        return None, "unavailable: the lpips package is not installed (pip install lpips)"
    vgg = Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE
    if not vgg.is_file():
        return None, f"unavailable: torchvision VGG16 weights not found at {vgg}"
    import lpips

    # NOTE: lpips ships its linear heads inside the package and torchvision finds VGG16 in the hub cache above,
    # so this builds offline.
    net = lpips.LPIPS(net="vgg", verbose=False).eval().requires_grad_(False)
    return net, "lpips-vgg"


class AutoencoderGANLoss(nn.Module):
    """Generator and discriminator losses of one autoencoder update, taming-style.

    Holds the discriminator (its parameters are the "disc" optimizer group). LPIPS, when available, is kept out
    of the module tree so that its frozen weights never enter checkpoints.

    Args:
        disc_start: updates before the GAN terms switch on.
        disc_weight: scale of the adaptive generator weight.
        perceptual_weight: weight of LPIPS when available.
        disc_layers: strided discriminator layers (taming: 3); images need a side of at least 3 * 2^disc_layers.
        in_channels: image channels.
    """

    def __init__(self, disc_start: int, disc_weight: float, perceptual_weight: float, disc_layers: int = 3,
                 in_channels: int = 3):
        super().__init__()
        self.disc_start = disc_start
        self.disc_weight = disc_weight
        self.perceptual_weight = perceptual_weight
        self.discriminator = NLayerDiscriminator(in_channels, n_layers=disc_layers)
        off = (None, "off: perceptual_weight 0")
        lpips_net, self.perceptual_status = load_lpips() if perceptual_weight > 0 else off
        self._lpips = (lpips_net,)  # a tuple hides it from state_dict() and parameters()

    def forward(self, recon: Tensor, target: Tensor, last_layer: Tensor, step: int
                ) -> tuple[Tensor, Tensor, dict[str, float]]:
        """Losses for images in [0, 1].

        Args:
            recon: decoder output (B, C, H, W), not clamped.
            target: the input images (B, C, H, W).
            last_layer: the decoder's last weight tensor (for the adaptive weight).
            step: the current update, compared with disc_start.

        Returns:
            (generator loss without any quantizer/KL term, discriminator loss, floats to log).
        """
        rec = reconstruction_loss(recon, target)
        lpips_net = self._lpips[0]
        if lpips_net is not None:
            lpips_net.to(recon.device)
            rec = rec + self.perceptual_weight * lpips_net(recon * 2 - 1, target * 2 - 1).mean()  # lpips wants [-1, 1]
        stats = {"rec_loss": rec.item()}
        if step < self.disc_start:  # GAN off: no discriminator passes, and a zero loss that reaches no weight
            return rec, rec.new_zeros((), requires_grad=True), stats
        g_loss = -self.discriminator(recon * 2 - 1).mean()
        weight = adaptive_weight(rec, g_loss, last_layer, self.disc_weight)
        # The discriminator sees detached reconstructions: its loss must not reach the autoencoder.
        logits_real = self.discriminator(target.detach() * 2 - 1)
        logits_fake = self.discriminator(recon.detach() * 2 - 1)
        d_loss = hinge_d_loss(logits_real, logits_fake)
        stats.update(g_loss=g_loss.item(), d_weight=weight.item(), d_loss=d_loss.item(),
                     logits_real=logits_real.mean().item(), logits_fake=logits_fake.mean().item())
        return rec + weight * g_loss, d_loss, stats
