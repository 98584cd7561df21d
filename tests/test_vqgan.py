"""VQGAN tokenizer: shapes, taming/MAGE checkpoint layout, dead-code restarts, GAN loss, training and resume."""

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from digit_bench.config import TrainConfig, VQGANConfig
from digit_bench.data import to_rgb_size
from digit_bench.errors import UserError
from digit_bench.models import vqgan as vqgan_module
from digit_bench.models.gan_loss import AutoencoderGANLoss
from digit_bench.models.vqgan import VQGAN, load_taming_checkpoint, reconstruction_metrics, train_vqgan

TINY = VQGANConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=32, embed_dim=16, n_embed=64)
FASHION_TEST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")


def taming_layout(cfg: VQGANConfig, maskgit: bool) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a VQGAN state dict as taming-transformers' VQModel (or MAGE's MaskGIT port) saves it.

    Written from the upstream modules (taming/modules/diffusionmodules/model.py of each repo), independently of
    digit_bench's code; attention sits at the lowest resolution (attn_resolutions = [resolution / f]).
    """
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name, cin, cout, k, bias=True):
        shapes[f"{name}.weight"] = (cout, cin, k, k)
        if bias:
            shapes[f"{name}.bias"] = (cout,)

    def norm(name, c):
        shapes[f"{name}.weight"] = shapes[f"{name}.bias"] = (c,)

    def resnet(name, cin, cout):
        norm(f"{name}.norm1", cin)
        conv(f"{name}.conv1", cin, cout, 3, bias=not maskgit)
        norm(f"{name}.norm2", cout)
        conv(f"{name}.conv2", cout, cout, 3, bias=not maskgit)
        if cin != cout:  # MAGE's shortcut maps the branch output (cout -> cout), taming's the input (cin -> cout)
            conv(f"{name}.nin_shortcut", cout if maskgit else cin, cout, 1, bias=not maskgit)

    def attn(name, c):
        norm(f"{name}.norm", c)
        for proj in ("q", "k", "v", "proj_out"):
            conv(f"{name}.{proj}", c, c, 1)

    def mid(prefix, c):
        resnet(f"{prefix}.mid.block_1", c, c)
        if not maskgit:
            attn(f"{prefix}.mid.attn_1", c)
        resnet(f"{prefix}.mid.block_2", c, c)

    ch, mults, last = cfg.ch, cfg.ch_mult, len(cfg.ch_mult) - 1
    conv("encoder.conv_in", 3, ch, 3, bias=not maskgit)
    c = ch
    for i, m in enumerate(mults):
        for j in range(cfg.num_res_blocks):
            resnet(f"encoder.down.{i}.block.{j}", c, ch * m)
            c = ch * m
            if i == last and not maskgit:
                attn(f"encoder.down.{i}.attn.{j}", c)
        if i < last and not maskgit:  # MAGE downsamples by average pooling: no weights
            conv(f"encoder.down.{i}.downsample.conv", c, c, 3)
    mid("encoder", c)
    norm("encoder.norm_out", c)
    conv("encoder.conv_out", c, cfg.z_channels, 1 if maskgit else 3)
    conv("decoder.conv_in", cfg.z_channels, c, 3)
    mid("decoder", c)
    for i in reversed(range(len(mults))):
        for j in range(cfg.num_res_blocks + (0 if maskgit else 1)):
            resnet(f"decoder.up.{i}.block.{j}", c, ch * mults[i])
            c = ch * mults[i]
            if i == last and not maskgit:
                attn(f"decoder.up.{i}.attn.{j}", c)
        if i > 0:
            conv(f"decoder.up.{i}.upsample.conv", c, c, 3)
    norm("decoder.norm_out", c)
    conv("decoder.conv_out", c, 3, 3)
    shapes["quantize.embedding.weight"] = (cfg.n_embed, cfg.embed_dim)
    if not maskgit:
        conv("quant_conv", cfg.z_channels, cfg.embed_dim, 1)
        conv("post_quant_conv", cfg.embed_dim, cfg.z_channels, 1)
    return shapes


def random_state(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(s, generator=g) * 0.05 for k, s in shapes.items()}
    state["loss.discriminator.main.0.weight"] = torch.zeros(64, 3, 4, 4)  # training-only keys are dropped
    return state


def fashion_images(n: int) -> np.ndarray:
    if not FASHION_TEST.is_file():
        pytest.skip(f"needs the Fashion-MNIST test images at {FASHION_TEST} (apt-get install dataset-fashion-mnist)")
    with gzip.open(FASHION_TEST) as f:
        raw = f.read(16 + n * 28 * 28)
    return to_rgb_size(np.frombuffer(raw, np.uint8, offset=16).reshape(n, 28, 28), 32)  # (n, 32, 32, 3)


@pytest.mark.parametrize("arch", ["taming", "maskgit"])
def test_encode_decode_shapes_and_index_range(arch):
    cfg = TINY if arch == "taming" else VQGANConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=16,
                                                     embed_dim=16, n_embed=64)
    model = VQGAN(cfg, 32, arch=arch).eval()
    x = torch.rand(2, 3, 32, 32)
    z_q, indices, vq_loss = model.encode(x)
    assert model.grid(32) == 8
    assert z_q.shape == (2, 16, 8, 8) and indices.shape == (2, 8, 8) and vq_loss.ndim == 0
    assert indices.dtype == torch.long and 0 <= indices.min() and indices.max() < 64
    assert model.encode_features(x).shape == (2, 16, 8, 8)
    images = model.decode_indices(indices)
    assert images.shape == (2, 3, 32, 32) and images.min() >= 0 and images.max() <= 1
    recon, loss, idx = model(x)
    assert recon.shape == x.shape and torch.equal(idx, indices)
    assert torch.allclose(model.decode(z_q).clamp(0, 1), images, atol=1e-5)  # straight-through z_q = the codes


def test_paper_profile_gives_a_16x16_grid():
    cfg = VQGANConfig(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, z_channels=256, n_embed=1024, embed_dim=256)
    model = VQGAN(cfg, 256, arch="maskgit")
    assert model.grid(256) == 16
    assert model.quantize.embedding.weight.shape == (1024, 256)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == taming_layout(cfg, maskgit=True)


def test_bad_sizes_are_user_errors():
    with pytest.raises(UserError, match="GroupNorm"):
        VQGAN(VQGANConfig(ch=48), 32)
    with pytest.raises(UserError, match="not divisible"):
        VQGAN(TINY, 30)
    with pytest.raises(UserError, match="z_channels"):
        VQGAN(TINY, 32, arch="maskgit")


@pytest.mark.parametrize("arch", ["taming", "maskgit"])
def test_upstream_layout_loads_strictly(tmp_path, arch):
    cfg = TINY if arch == "taming" else VQGANConfig(ch=32, ch_mult=(1, 2), num_res_blocks=2, z_channels=16,
                                                     embed_dim=16, n_embed=32)
    state = random_state(taming_layout(cfg, maskgit=arch == "maskgit"))
    torch.save({"state_dict": state}, tmp_path / "vq.ckpt")
    model = VQGAN(cfg, 32, arch=arch)
    load_taming_checkpoint(model, tmp_path / "vq.ckpt")
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items() if not k.startswith("loss."))
    codes = torch.randint(0, cfg.n_embed, (1, 16 // len(cfg.ch_mult) * 2, 16 // len(cfg.ch_mult) * 2))
    assert torch.isfinite(model.decode_indices(codes)).all()


def test_mismatched_checkpoint_names_keys_and_config(tmp_path):
    wrong = VQGANConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=32, embed_dim=16, n_embed=64)
    torch.save(random_state(taming_layout(wrong, maskgit=False)), tmp_path / "wrong.ckpt")
    with pytest.raises(UserError, match=r"decoder\.up\.2.*ch_mult.*must match"):
        load_taming_checkpoint(VQGAN(TINY, 32), tmp_path / "wrong.ckpt")
    no_quant_conv = {k: v for k, v in random_state(taming_layout(TINY, maskgit=False)).items() if "quant_conv" not in k}
    torch.save(no_quant_conv, tmp_path / "mage_like.ckpt")
    with pytest.raises(UserError, match="maskgit"):
        load_taming_checkpoint(VQGAN(TINY, 32), tmp_path / "mage_like.ckpt")
    with pytest.raises(UserError, match="not found"):
        load_taming_checkpoint(VQGAN(TINY, 32), tmp_path / "missing.ckpt")


def test_restart_dead_codes_moves_only_unused_codes():
    model = VQGAN(TINY, 32)
    before = model.quantize.embedding.weight.detach().clone()
    usage = torch.ones(64, dtype=torch.long)
    usage[[3, 7]] = 0
    z_flat = torch.randn(100, 16)
    moved = model.quantize.restart_dead_codes(z_flat, usage, torch.Generator().manual_seed(0))
    after = model.quantize.embedding.weight.detach()
    assert moved == 2
    assert torch.equal(after[usage > 0], before[usage > 0])
    for code in (3, 7):
        assert (after[code] == z_flat).all(1).any()  # now equal to one of the batch encodings


def test_gan_loss_after_disc_start_trains_each_side_only():
    torch.manual_seed(0)
    model, gan = VQGAN(TINY, 32), AutoencoderGANLoss(disc_start=5, disc_weight=0.1, perceptual_weight=1.0)
    x = torch.rand(4, 3, 32, 32)
    recon, _, _ = model(x)
    gen, d_loss, logs = gan(recon, x, model.last_layer, step=4)
    assert d_loss.item() == 0 and "g_loss" not in logs  # off before disc_start
    gen, d_loss, logs = gan(recon, x, model.last_layer, step=5)
    assert d_loss.item() > 0 and logs["d_weight"] > 0 and torch.isfinite(gen)
    d_loss.backward(inputs=list(model.parameters()) + list(gan.parameters()), retain_graph=True)
    assert all(p.grad is None or (p.grad == 0).all() for p in model.parameters())  # d loss sees detached recon
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in gan.parameters())
    status = gan.perceptual_status
    assert status == "lpips-vgg" or status.startswith("unavailable: ")


def test_vqgan_overfits_eight_fashion_images(tmp_path):
    images = fashion_images(8)
    cfg = VQGANConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=32, embed_dim=32, n_embed=64,
                      disc_start=10**9,
                      train=TrainConfig(steps=100, batch_size=8, lr=5e-4, schedule="constant", warmup_steps=10,
                                        betas=(0.5, 0.9), weight_decay=0.0, label_smoothing=0.0,
                                        checkpoint_every=1000))
    untrained = reconstruction_metrics(VQGAN(cfg, 32), images)["psnr"]
    stats = train_vqgan(images, cfg, tmp_path, seed=0)
    assert untrained < 15
    assert stats["psnr"] > 20, stats
    assert stats["psnr_images"] == "train" and stats["perceptual"]
    model = VQGAN(cfg, 32)
    load_taming_checkpoint(model, stats["weights"])  # the written weights are the trained ones, taming layout
    assert reconstruction_metrics(model, images)["psnr"] == pytest.approx(stats["psnr"], abs=1e-4)


def test_train_vqgan_resume_is_exact(tmp_path, monkeypatch):
    monkeypatch.setattr(vqgan_module, "RESTART_EVERY", 3)  # a restart that needs the usage counts saved at step 2
    restart = vqgan_module._restart_dead_codes
    images = fashion_images(8)[:, ::2, ::2]  # (8, 16, 16, 3)
    cfg = VQGANConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=32, embed_dim=16, n_embed=64,
                      disc_start=2,
                      train=TrainConfig(steps=4, batch_size=4, lr=1e-3, schedule="constant", warmup_steps=1,
                                        betas=(0.5, 0.9), weight_decay=0.0, label_smoothing=0.0,
                                        checkpoint_every=2))
    full = train_vqgan(images, cfg, tmp_path / "full", seed=3)

    def crash_at_step_3(model, step, *args):
        if step == 3:
            raise KeyboardInterrupt  # killed after the step-2 checkpoint
        restart(model, step, *args)

    monkeypatch.setattr(vqgan_module, "_restart_dead_codes", crash_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        train_vqgan(images, cfg, tmp_path / "resumed", seed=3)
    monkeypatch.setattr(vqgan_module, "_restart_dead_codes", restart)
    resumed = train_vqgan(images, cfg, tmp_path / "resumed", seed=3)
    assert resumed["start_step"] == 2 and full["dead_codes_restarted"] > 0
    a, b = torch.load(full["weights"], weights_only=True), torch.load(resumed["weights"], weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
