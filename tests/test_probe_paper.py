"""The paper's probe protocol (`probe.protocol: paper`): SGD heads on the embedding output and blocks 1..L-1, trained
on seeded RandomResizedCrop + flip views tokenized online, scored at the centre crop; the layer is chosen on held-out
train. Here on the synthetic dataset with the raw-pixel backbone and an untrained GPT (its embedding layer is a bag of
tokens, which carries the class)."""

from __future__ import annotations

import dataclasses
import os
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from digit_bench.config import BackboneConfig, ProbeConfig, to_dict
from digit_bench.data import synthetic
from digit_bench.stages.probe import epoch_draws, random_resized_crop, sgd_probe

REPO = Path(__file__).resolve().parents[1]
SIZE, K = 16, 11
PC = {**to_dict(ProbeConfig()), "protocol": "paper", "lr": 0.4, "steps": 60, "batch_size": 32, "num_train": None}


def setup():
    from digit_bench.backbones import build_backbone
    from digit_bench.models.gpt import GPT, gpt_config
    from digit_bench.stages.tokenizer_metrics import kmeans_encoder

    raw = synthetic(None, SIZE, n_train=300, n_test=120)
    backbone = build_backbone(dataclasses.replace(BackboneConfig(), name="pixels", patch_size=4, img_size=SIZE))
    # codebook: the patch of a flat image of each class colour, and of the background's mean grey
    colours = [[c * 25 % 256, (255 - c * 20) % 256, 128] for c in range(10)] + [[20, 20, 20]]
    flat = np.broadcast_to(np.array(colours, np.uint8)[:, None, None], (len(colours), SIZE, SIZE, 3))  # (11, S, S, 3)
    with torch.no_grad():
        centroids = backbone(torch.from_numpy(np.ascontiguousarray(flat)))[:, 0].numpy()  # (11, D)
    torch.manual_seed(0)
    model = GPT(gpt_config("gpt-nano", vocab_size=K, seq_len=backbone.num_tokens)).eval()
    return model, kmeans_encoder(backbone, centroids, "torch", False), raw


def test_paper_probe_learns_chooses_on_held_out_train_and_is_deterministic():
    model, encode, raw = setup()
    out = sgd_probe(model, encode, raw.train, raw.test, SIZE, PC, seed=0)
    assert out["probe_protocol"] == "paper"
    assert len(out["probe_curve"]) == model.cfg.n_layer  # embedding output + blocks 1..L-1, not the last block
    assert out["probe_top1"] > 40.0  # 10 classes: chance is 10
    assert out["probe_top5"] >= out["probe_top1"]
    assert out == sgd_probe(model, encode, raw.train, raw.test, SIZE, PC, seed=0)
    shuffled = dataclasses.replace(raw.test, labels=np.random.default_rng(1).permutation(raw.test.labels))
    other = sgd_probe(model, encode, raw.train, shuffled, SIZE, PC, seed=0)
    assert other["probe_layer"] == out["probe_layer"]  # the test labels never choose
    assert other["probe_layer_holdout_top1"] == out["probe_layer_holdout_top1"]


def test_random_resized_crop_is_seeded_and_keeps_torchvisions_area_and_ratio():
    """Crops keep the image's content at the crop's place (a coordinate image), cover 8-100% of the area at aspect
    3/4..4/3, flip half the time, and repeat for the same seed."""
    yy, xx = np.mgrid[0:120, 0:200]
    im = Image.fromarray(np.stack([xx % 256, yy, np.zeros_like(xx)], -1).astype(np.uint8))  # R = x, G = y
    flips, areas = 0, []
    for s in range(200):
        a = random_resized_crop(im, 32, np.random.default_rng([7, s]), (0.08, 1.0))
        assert a.shape == (32, 32, 3) and a.dtype == np.uint8
        np.testing.assert_array_equal(a, random_resized_crop(im, 32, np.random.default_rng([7, s]), (0.08, 1.0)))
        x = a[16, :, 0].astype(int)
        flips += x[0] > x[-1]
        w, h = abs(x[-1] - x[0]) + 1, abs(int(a[-1, 16, 1]) - int(a[0, 16, 1])) + 1
        areas.append(w * h / (200 * 120))
    assert 70 < flips < 130
    assert min(areas) > 0.05 and max(areas) <= 1.0 and np.median(areas) > 0.3


def test_epoch_draws_visit_every_row_once_per_epoch():
    rows = np.array([3, 5, 9, 11])
    draws = list(epoch_draws(rows, steps=5, batch_size=2, seed=0))  # 10 draws = 2.5 epochs
    assert [d for _, d in draws] == list(range(10))
    assert sorted(i for i, _ in draws[:4]) == [3, 5, 9, 11] and sorted(i for i, _ in draws[4:8]) == [3, 5, 9, 11]
    assert draws == list(epoch_draws(rows, steps=5, batch_size=2, seed=0))


@pytest.mark.slow
def test_paper_protocol_runs_as_a_stage(tmp_path):
    """The probe stage of a micro run with `probe.protocol=paper`: its tokenizer comes in as parents, the row records
    the protocol, the curve has the paper's layers (DataLoader workers decode the views)."""
    sets = ["generator=digit", "backbone.name=random_vit", "data.num_train=200", "data.num_val=40", "train.steps=6",
            "probe.protocol=paper", "probe.steps=6", "probe.batch_size=16", "probe.num_train=100"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1",
           "DIGIT_BENCH_DATA_WORKERS": "1"}
    proc = subprocess.run([sys.executable, "-m", "digit_bench", "run", "probe", "tests/data/micro.yaml", "--profile",
                           "smoke", "--root", str(tmp_path), *[a for s in sets for a in ("--set", s)]],
                          cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (metrics,) = tmp_path.glob("probe/*/metrics.json")
    row = json.loads(metrics.read_text())
    assert row["probe_protocol"] == "paper" and len(row["probe_curve"]) == 2  # gpt-nano: embedding + block 1
    manifest = json.loads((metrics.parent / "manifest.json").read_text())
    assert {"centroids", "gpt", "tokens"} <= set(manifest["parents"])
