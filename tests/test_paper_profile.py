"""The `paper` profile is the paper's experiment, value by value.

PAPER is the one table of every setting the paper and its released code fix (DiGIT, NeurIPS 2024, §10 "released
defaults for a DiGIT-base reproduction"; sources: the released configs config/stage1/dino_base.yaml,
config/stage2/dino_base.yaml, config/stage2/vq_base.yaml, scripts/*.sh and the paper's Tables 2-4). The resolved
paper profile must equal it field by field; a change to either is a deliberate change to the reproduction.
"""

import dataclasses
from pathlib import Path

import pytest
import torch

from digit_bench.config import flatten, load_sweep, to_dict

EPOCH = 1_281_167  # ImageNet-1k train images

PAPER = {
    # data and evaluation protocol (§7): ImageNet 256, FID/IS with torch-fidelity's Inception against ImageNet val
    "data.name": "imagenet",
    "data.image_size": 256,
    "eval.extractor": "inception",
    "eval.reference": "dataset:imagenet:test",  # our `test` part of imagenet = the official val folder
    "eval.num_reference": 50_000,
    "eval.reference_resize": "bilinear",  # prepare_imgnet_val.py: Resize(256) default bilinear + CenterCrop(256)
    "eval.ceiling_split": "test",  # "validation data" rows (VQ only, DiGIT + VQ) on ImageNet val
    "sample.num_samples": 50_000,
    # tokenizer (§1): DINOv2 ViT-B/14-reg4, third-from-last block + final norm, 224 px, faiss K-Means
    "backbone.name": "dinov2_vitb14_reg4",
    "backbone.layer": -3,
    "backbone.img_size": 224,
    "backbone.weights": "dinov2_vitb14_reg4_pretrain.pth",  # Meta's release file (README), from the `weights:` map
    "weights": [["dinov2_vitb14_reg4", "dinov2_vitb14_reg4_pretrain.pth"], ["dinov2_vitl14_reg4", "dinov2_vitl14_reg4_pretrain.pth"],
                ["ibot_vitb16", "checkpoint_teacher.pth"], ["mocov3_vitb16", "vit-b-300ep.pth.tar"]],
    "features.split": "train",
    "features.fraction": 0.1,
    "tokenizer.kind": "kmeans",
    "tokenizer.k": 8192,
    "tokenizer.niter": 20,
    "tokenizer.backend": "faiss",
    "tokenizer.spherical": False,
    "tokenizer.seed": 1234,
    "tokenizer.max_points_per_centroid": 256,
    "tokenizer.init": "random",
    # stages 1-2 augmentation (Resize 256 + RandomCrop 256 + flip, online in the release): pre-tokenized views,
    # the centre crop, its mirror and 8 seeded random crops + flips per image
    "tokenizer.views": ["identity", "hflip"] + [f"crop{i}" for i in range(8)],
    # stage 1 (§2): 16L/1024 post-LN GPT, dropout 0.1, unconditional, AdamW (0.9, 0.98) wd 0.01, lr 3e-4,
    # inverse_sqrt with 6,250 warmup, clip 1.0, label smoothing 0.1, global batch 1024, 200 epochs (Tables 3-4)
    "gpt.size": "digit-b",
    "gpt.post_ln": True,
    "gpt.dropout": 0.1,
    "gpt.class_conditional": False,
    "gpt.label_dropout": 0.0,
    "train.batch_size": 1024,
    "train.steps": 250_000,
    "train.lr": 3e-4,
    "train.schedule": "inverse_sqrt",
    "train.warmup_steps": 6250,
    "train.betas": [0.9, 0.98],
    "train.weight_decay": 0.01,
    "train.grad_clip": 1.0,
    "train.label_smoothing": 0.1,
    "train.ema": 0.0,
    # sampling (§2.5): top-k 200 (base), T 1.0, no top-p, no CFG
    "sample.top_k": 200,
    "sample.top_p": 1.0,
    "sample.temperature": 1.0,
    "sample.cfg_scale": 1.0,
    # VQGAN (§3.1): MAGE vqgan_jax_strongaug, 1024 x 256-d codes, f16
    "vqgan.weights": "vqgan_jax_strongaug.ckpt",  # file names: paths resolve in $DIGIT_BENCH_WEIGHTS or beside the YAML
    "vqgan.arch": "maskgit",
    "vqgan.ch": 128,
    "vqgan.ch_mult": [1, 1, 2, 2, 4],
    "vqgan.num_res_blocks": 2,
    "vqgan.z_channels": 256,
    "vqgan.n_embed": 1024,
    "vqgan.embed_dim": 256,
    # stage 2 AR (§3.2): pre-LN 16L/1024, lr 5e-4, 250k updates at 4 GPUs x 128, top-p 0.8, T 1.0
    "stage2.kind": "ar",
    "stage2.size": "digit-b",
    "stage2.top_p": 0.8,
    "stage2.temperature": 1.0,
    "stage2.maskgit_steps": 8,
    "stage2.choice_temperature": 4.5,
    "stage2.train.steps": 250_000,
    "stage2.train.batch_size": 512,
    "stage2.train.lr": 5e-4,
    "stage2.train.schedule": "inverse_sqrt",
    "stage2.train.warmup_steps": 6250,
    "stage2.train.betas": [0.9, 0.98],
    "stage2.train.weight_decay": 0.01,
    "stage2.train.grad_clip": 1.0,
    "stage2.train.label_smoothing": 0.1,
    # linear probe (§4, sgd_hydra + dino_base_linearprobe_sgd.yaml): SGD lr 0.4, momentum 0.9, no weight decay,
    # cosine to 0 over 100k updates at 4 x 256 = 1024 (~80 epochs), RandomResizedCrop(256) (scale 0.08-1) + flip,
    # test Resize 256 + CenterCrop 224, all of train
    "probe.protocol": "paper",
    "probe.lr": 0.4,
    "probe.momentum": 0.9,
    "probe.weight_decay": 0.0,
    "probe.steps": 100_000,
    "probe.batch_size": 1024,
    "probe.crop_scale": [0.08, 1.0],
    "probe.eval_crop": 224 / 256,
    "probe.num_train": None,
}
# the stage-1 length of the tables (200 epochs) and of the 9.13 / 73.85 headline (400 epochs)
PAPER_LONG = {**PAPER, "train.steps": 500_000}
# DiGIT-large (Table 2: 732M, 1536 features; README: ViT-L/14 reg4 layer 3 tokens, km_16k, top-k 400)
DIGIT_L = {**PAPER, "gpt.size": "digit-l", "backbone.name": "dinov2_vitl14_reg4", "tokenizer.k": 16384,
           "sample.top_k": 400, "backbone.weights": "dinov2_vitl14_reg4_pretrain.pth"}
# the paper's VQ-token GPT (§3.4, config/stage2/vq_base.yaml): pre-LN, lr 5e-4, untruncated sampling, 200 epochs
VQ_GPT = {**PAPER, "generator": "vqgan_ar", "gpt.post_ln": False, "train.lr": 5e-4, "sample.top_k": 0}
FILE_KEYS = {"vqgan.weights", "backbone.weights"}


def resolved(path: str, profile: str = "paper", **point) -> dict:
    runs = [r for r in load_sweep(path, profile).runs if all(r.point.get(k) == v for k, v in point.items())]
    assert len(runs) == 1, [r.point for r in runs]
    return flatten(to_dict(runs[0].cfg))


def assert_matches(got: dict, table: dict) -> None:
    wrong = {k: (got[k], v) for k, v in table.items() if (Path(got[k]).name if k in FILE_KEYS else got[k]) != v}
    assert not wrong, f"paper profile != paper table (got, want): {wrong}"


def test_the_paper_profile_is_the_paper_table():
    assert_matches(resolved("ablations/_base.yaml"), PAPER)
    assert_matches(resolved("ablations/backbones.yaml", generator="digit", **{"backbone.name": "dinov2_vitb14_reg4"}), PAPER)


def test_paper_long_trains_stage_one_400_epochs():
    got = resolved("ablations/_base.yaml", "paper_long")
    assert_matches(got, PAPER_LONG)
    assert got["train.steps"] * got["train.batch_size"] / EPOCH == pytest.approx(400, rel=0.002)
    assert resolved("ablations/_base.yaml")["train.steps"] * 1024 / EPOCH == pytest.approx(200, rel=0.002)


def test_model_scales_large_is_digit_large():
    assert_matches(resolved("ablations/model_scales.yaml", **{"gpt.size": "digit-l"}), DIGIT_L)
    assert_matches(resolved("ablations/model_scales.yaml", **{"gpt.size": "digit-b"}), PAPER)


def test_digit_large_counts_732m_at_k16384():
    from digit_bench.models.gpt import GPT, gpt_config

    for size, vocab, paper in (("digit-l", 16384, 732e6), ("digit-b", 8192, 219e6)):
        with torch.device("meta"):  # shapes only: the count without allocating 3 GB
            n = GPT(gpt_config(size, vocab_size=vocab, seq_len=256)).num_params()
        assert n == pytest.approx(paper, rel=0.02), (size, n)


def test_vq_baseline_is_the_papers_and_the_control_is_digits():
    assert_matches(resolved("baselines/vqgan_ar.yaml"), VQ_GPT)
    assert_matches(resolved("ablations/backbones.yaml", generator="vqgan_ar"), VQ_GPT)
    control = resolved("baselines/vqgan_ar_digit_settings.yaml")
    assert_matches(control, {**PAPER, "generator": "vqgan_ar"})


def test_paper_batches_fit_the_launcher():
    """Global batches stay the paper's; the 4-GPU launcher splits them into micro-batches and accumulation."""
    from digit_bench.config import training_world

    cfg = load_sweep("ablations/_base.yaml", "paper").runs[0].cfg
    world = training_world(cfg.launcher)
    assert world == 4
    assert cfg.train.accumulation(world) == (128, 2)
    assert cfg.stage2.train.accumulation(world) == (64, 2)
    assert dataclasses.replace(cfg.train, micro_batch_size=None).accumulation(16) == (64, 1)


def test_paper_probe_trains_about_80_epochs():
    got = resolved("ablations/_base.yaml")
    assert got["probe.steps"] * got["probe.batch_size"] / EPOCH == pytest.approx(80, rel=0.002)  # "lr4e-1_80epoch"
    assert resolved("ablations/_base.yaml", "smoke")["probe.protocol"] == "converged"
    assert resolved("ablations/_base.yaml", "tiny")["probe.protocol"] == "converged"
