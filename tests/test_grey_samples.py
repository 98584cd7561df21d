"""Generated images of a grey data set are grey: every image stage of a Fashion-MNIST run returns R=G=B."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from digit_bench.config import VQGANConfig, load_sweep
from digit_bench.data import to_grey
from digit_bench.models.vqgan import VQGAN
from digit_bench.stages.render import tokens_to_images
from digit_bench.engine.dag import make_plan

ABL = Path(__file__).resolve().parents[1] / "ablations"


def _chroma(images: np.ndarray) -> np.ndarray:
    """Per-pixel max - min over the three channels of uint8 (N, H, W, 3) images."""
    x = images.astype(np.int16)
    return x.max(axis=-1) - x.min(axis=-1)  # (N, H, W)


def test_a_vqgan_decode_is_coloured_until_made_grey():
    torch.manual_seed(0)
    vqgan = VQGAN(VQGANConfig(ch=32, ch_mult=[1, 1, 2], num_res_blocks=1, z_channels=32, n_embed=64, embed_dim=16),
                  resolution=32).eval()
    tokens = np.random.default_rng(0).integers(0, 64, size=(4, 64))  # (N, 8x8 VQ tokens)
    raw = tokens_to_images(tokens, vqgan, batch_size=4)  # (4, 32, 32, 3)
    assert (_chroma(raw) > 0).mean() > 0.5  # three independent output channels: the colour defect's source
    grey = to_grey(raw)  # (4, 32, 32, 3)
    assert grey.shape == raw.shape and grey.dtype == np.uint8
    assert (_chroma(grey) == 0).all()
    assert np.abs(grey[..., 0].astype(int) - raw.astype(np.float32).mean(-1)).max() <= 0.5


def test_every_image_stage_of_a_fashion_mnist_sweep_makes_grey_images():
    plan = make_plan(load_sweep(ABL / "backbones.yaml", "smoke"))
    image_nodes = [n for dag in plan.dags.values() for n in dag.values() if n.stage in ("render", "ldm_sample")]
    assert {n.stage for n in image_nodes} == {"render", "ldm_sample"}
    assert all(n.cfg["grey"] is True for n in image_nodes)


def test_a_colour_data_set_keeps_its_colours():
    plan = make_plan(load_sweep(ABL / "backbones.yaml", "smoke", ["data.name=synthetic"]))
    image_nodes = [n for dag in plan.dags.values() for n in dag.values() if n.stage in ("render", "ldm_sample")]
    assert image_nodes and not any(n.cfg["grey"] for n in image_nodes)
