"""digit_bench.ssl: the four pretraining objectives, backbone.pt, exact resume, kNN."""

import dataclasses

import numpy as np
import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from digit_bench import ssl
from digit_bench.config import SSLConfig
from digit_bench.errors import UserError
from digit_bench.training import load_checkpoint

TINY = SSLConfig(embed_dim=32, depth=2, num_heads=2, out_dim=64, local_crops=2,
                 train=dataclasses.replace(SSLConfig().train, steps=4, batch_size=8, lr=1e-3, warmup_steps=1,
                                           checkpoint_every=2))


def random_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n)


@pytest.mark.parametrize("method", ssl.METHODS)
def test_objective_lowers_its_loss_on_a_fixed_batch(method):
    images, labels = random_images(16)
    torch.manual_seed(0)
    model = ssl.build_objective(method, TINY, num_classes=10)
    batch = ssl.split_batch(ssl.make_batch(method, images, labels, TINY, seed=0, step=0), [slice(None)])[0]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for step in range(8):
        loss = model(**batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if hasattr(model, "update_teacher"):  # DINO's teacher, MoCo's momentum encoder
            model.update_teacher(0.9)
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


def test_batches_are_a_pure_function_of_seed_and_step():
    images, labels = random_images(20)
    a, b = (ssl.make_batch("dino", images, labels, TINY, seed=3, step=7) for _ in range(2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = ssl.make_batch("dino", images, labels, TINY, seed=3, step=8)
    assert not torch.equal(a["global_views"], c["global_views"])
    assert a["global_views"].shape == (8, 2, 3, 32, 32) and a["local_views"].shape == (8, 2, 3, 16, 16)
    # every image once per epoch (20 images, batches of 8 run across the epoch boundary)
    seen = np.concatenate([ssl.batch_indices(20, 8, seed=3, step=s) for s in range(5)])
    assert sorted(seen[:20]) == list(range(20)) and sorted(seen[20:40]) == list(range(20))


def test_mae_encodes_only_the_visible_quarter_and_scores_the_masked_patches():
    torch.manual_seed(0)
    mae = ssl.build_objective("mae", TINY, num_classes=10).eval()
    encoded = []
    mae.vit.norm.register_forward_hook(lambda module, args, out: encoded.append(out))
    images, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 64)
    masked = noise.argsort(dim=1)[:, 16:]  # (2, 48): all but the 16 lowest-noise patches are hidden
    patches = mae.patchify(images)  # (2, 64, 48)
    patches[torch.arange(2)[:, None], masked] = torch.randn(2, 48, 48)  # new pixels in the hidden patches only
    p = TINY.patch_size
    changed = patches.view(2, 8, 8, p, p, 3).permute(0, 5, 1, 3, 2, 4).reshape(2, 3, 32, 32)  # unpatchify
    assert torch.equal(mae.patchify(changed), patches)
    with torch.no_grad():
        loss, loss_changed = mae(images, noise), mae(changed, noise)
    assert encoded[0].shape == (2, 1 + 16, TINY.embed_dim)  # CLS + the visible 25%
    assert torch.equal(encoded[0], encoded[1])  # hidden pixels never reach the encoder ...
    assert not torch.isclose(loss, loss_changed)  # ... but they are the reconstruction target


def test_backbone_file_loads_strictly_into_timm_and_gives_the_same_features(tmp_path):
    images, labels = random_images(24)
    stats = ssl.pretrain("dino", images, labels, TINY, tmp_path, seed=0, eval_images=images[:8],
                         eval_labels=labels[:8], num_reference=16)
    assert stats["steps"] == 4 and 0 <= stats["knn_top1"] <= 1 and 0 <= stats["probe_top1"] <= 1
    saved = load_checkpoint(tmp_path / "backbone.pt")
    vit = VisionTransformer(**saved["arch"])
    vit.load_state_dict(saved["model"], strict=True)
    objective = ssl.build_objective("dino", TINY, num_classes=10)
    objective.load_state_dict(load_checkpoint(tmp_path / "ckpt.pt")["model"])
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(vit.eval().forward_features(x), objective.teacher.vit.eval().forward_features(x))
        assert not torch.equal(vit.forward_features(x), objective.student.vit.eval().forward_features(x))

    # the stages build it by name through the registry, like any timm backbone: the same FeatureBackbone interface,
    # and the features of the layer convention (block `layer`, final norm, CLS dropped) of that timm model
    from digit_bench.artifacts import Artifact
    from digit_bench.loaders import load_backbone

    backbone = load_backbone({"name": "dino_tiny", "layer": -2, "patch_size": 4}, {"ssl": Artifact(tmp_path)})  # TINY: 2 blocks
    assert (backbone.name, backbone.input_size, backbone.num_tokens, backbone.embed_dim) == ("dino_tiny", 32, 64, 32)
    pixels = torch.from_numpy(images[:3])  # (3, 32, 32, 3) uint8
    with torch.no_grad():
        want = vit.forward_intermediates(backbone.transform(pixels), indices=[-2], norm=True, output_fmt="NLC",
                                         intermediates_only=True)[0]  # (3, 64, 32)
        torch.testing.assert_close(backbone(pixels), want, rtol=0, atol=0)


def test_pretrain_resumes_bit_exactly_after_an_interruption(tmp_path, monkeypatch):
    method = "dino"  # the most state: student, EMA teacher, centre, BatchNorm statistics
    images, labels = random_images(24)
    run = dict(cfg=TINY, seed=1, eval_images=images[:8], eval_labels=labels[:8], num_reference=16)
    ssl.pretrain(method, images, labels, work_dir=tmp_path / "straight", **run)

    make_batch = ssl.make_batch

    def dies_at_step_3(method, images, labels, cfg, seed, step):
        if step == 3:
            raise KeyboardInterrupt
        return make_batch(method, images, labels, cfg, seed, step)

    monkeypatch.setattr(ssl, "make_batch", dies_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        ssl.pretrain(method, images, labels, work_dir=tmp_path / "resumed", **run)
    assert load_checkpoint(tmp_path / "resumed" / "ckpt.pt")["step"] == 2
    monkeypatch.setattr(ssl, "make_batch", make_batch)
    stats = ssl.pretrain(method, images, labels, work_dir=tmp_path / "resumed", **run)
    assert stats["start_step"] == 2
    straight = load_checkpoint(tmp_path / "straight" / "ckpt.pt")["model"]
    resumed = load_checkpoint(tmp_path / "resumed" / "ckpt.pt")["model"]
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_knn_accuracy_votes_by_cosine_neighbours():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16))
    y_train, y_test = np.repeat(np.arange(3), 30), np.repeat(np.arange(3), 10)
    train = centres[y_train] * rng.uniform(0.5, 5, (90, 1)) + 0.05 * rng.normal(size=(90, 16))  # scale is ignored
    test = centres[y_test] + 0.05 * rng.normal(size=(30, 16))
    assert ssl.knn_accuracy(train, y_train, test, y_test, k=20) == 1.0
    assert ssl.knn_accuracy(train, y_train, test, (y_test + 1) % 3, k=20) == 0.0
    before = train.copy()
    assert ssl.knn_accuracy(train[:5], y_train[:5], test[:10], y_test[:10], k=20) == 1.0  # k > 5 points: all vote
    assert np.array_equal(train, before)  # inputs are not normalised in place


def test_pretrain_rejects_images_of_the_wrong_size(tmp_path):
    images = np.zeros((4, 28, 28, 3), dtype=np.uint8)
    with pytest.raises(UserError, match="image_size"):
        ssl.pretrain("mae", images, np.zeros(4), TINY, tmp_path, seed=0, eval_images=images, eval_labels=np.zeros(4))
    with pytest.raises(UserError, match="dino, moco, mae, sup"):
        ssl.build_objective("simclr", TINY, num_classes=10)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_tiny_profile_dino_beats_the_untrained_random_vit_on_knn(tmp_path):
    """dino_tiny with the default sweep's recipe (ablations/_base.yaml tiny), cut from 9,600 to 600 steps (~2 min of
    CPU), beats the `random_vit` control of the same shape on kNN top-1, both scored by ssl.evaluate_backbone on the
    same images."""
    from pathlib import Path

    from digit_bench.artifacts import Store
    from digit_bench.backbones import build_backbone
    from digit_bench.config import load_sweep
    from digit_bench.data import load_split
    from digit_bench.engine.dag import compute
    from digit_bench.generators.digit import backbone_parents

    runs = load_sweep(Path(__file__).resolve().parents[1] / "ablations/backbones.yaml", profile="tiny",
                      sets=["ssl.train.steps=600", "ssl.train.checkpoint_every=200"]).runs
    dino = next(r.cfg for r in runs if r.cfg.backbone.name == "dino_tiny")
    control = next(r.cfg for r in runs if r.cfg.backbone.name == "random_vit")
    trained = compute(Store(tmp_path), backbone_parents(dino)["ssl"]).manifest

    train, val = load_split(dino.data, "train"), load_split(dino.data, "val")
    reference = np.random.default_rng(dino.backbone.init_seed).permutation(len(train.labels))[:5000]
    untrained = ssl.evaluate_backbone(build_backbone(control.backbone).model,
                                      train.images[reference], np.asarray(train.labels)[reference],
                                      val.images[:], np.asarray(val.labels))
    print(f"kNN top-1: dino_tiny {trained['knn_top1']:.3f}, random_vit {untrained['knn_top1']:.3f}; "
          f"linear: {trained['probe_top1']:.3f} vs {untrained['probe_top1']:.3f}")
    assert trained["knn_top1"] > untrained["knn_top1"]


@pytest.mark.parametrize("head_input", ["cls", "patch_mean"])
def test_head_input_picks_the_cls_token_or_the_patch_mean_with_one_state_dict(head_input):
    cfg = dataclasses.replace(TINY, head_input=head_input)
    torch.manual_seed(0)
    vit = ssl.build_vit(cfg).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        tokens = vit.forward_features(x)  # (3, 1+64, D), final norm applied
        expected = tokens[:, 0] if head_input == "cls" else tokens[:, 1:].mean(dim=1)
        assert torch.allclose(vit(x), expected, atol=1e-6)
    plain = VisionTransformer(**ssl.vit_arch(cfg))
    assert plain.load_state_dict(vit.state_dict(), strict=True)  # backbone.pt loads either way


def test_crop_size_shrinks_dino_and_supervised_crops_but_not_mae_and_the_backbone_reads_full_images():
    images, labels = random_images(8)
    low = dataclasses.replace(TINY, crop_size=16)
    dino = ssl.make_batch("dino", images, labels, low, seed=0, step=0)
    assert dino["global_views"].shape == (8, 2, 3, 16, 16) and dino["local_views"].shape == (8, 2, 3, 8, 8)
    assert ssl.make_batch("sup", images, labels, low, seed=0, step=0)["images"].shape == (8, 3, 16, 16)
    assert ssl.make_batch("mae", images, labels, low, seed=0, step=0)["images"].shape == (8, 3, 32, 32)
    torch.manual_seed(0)
    model = ssl.build_objective("dino", low, num_classes=10)
    batch = ssl.split_batch(dino, [slice(None)])[0]
    model(**batch).backward()  # a training step runs on 4x4 (global) and 2x2 (local) token grids
    assert model.student.vit.pos_embed.grad.abs().sum() > 0  # the 8x8 position table learns through resampling
    feats = ssl.block_features(model.backbone, images)[-1]  # read at the full 32 px
    assert feats.shape == (8, low.embed_dim) and np.isfinite(feats).all()


def test_moco_picks_its_own_images_key_among_the_batch_and_trains_the_query_encoder_only():
    images, labels = random_images(8)
    torch.manual_seed(0)
    moco = ssl.build_objective("moco", TINY, num_classes=10)
    q, k = torch.randn(6, 16), torch.randn(6, 16)
    own = moco.contrastive(k * 3, k)  # every query points at its own key
    assert own < moco.contrastive(k.roll(1, dims=0) * 3, k)  # ... and at its neighbour's: a worse InfoNCE
    assert torch.isclose(moco.contrastive(q, k), torch.nn.functional.cross_entropy(
        torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(k, dim=1).T / TINY.moco_temp,
        torch.arange(6)) * 2 * TINY.moco_temp)
    batch = ssl.split_batch(ssl.make_batch("moco", images, labels, TINY, seed=0, step=0), [slice(None)])[0]
    moco(**batch).backward()
    assert all(p.grad is None for p in moco.momentum.parameters())  # keys carry no gradient
    assert moco.backbone is moco.base.vit and moco.backbone.patch_embed.proj.weight.grad.abs().sum() > 0
    before = [p.clone() for p in moco.momentum.parameters()]
    with torch.no_grad():
        for p in moco.base.parameters():
            p.add_(1.0)
    moco.update_teacher(0.75)  # keys <- 0.75 keys + 0.25 query
    for b, pm, pb in zip(before, moco.momentum.parameters(), moco.base.parameters()):
        torch.testing.assert_close(pm, 0.75 * b + 0.25 * pb)


def test_block_features_are_what_the_tokenizer_reads_at_each_block_mean_pooled(tmp_path):
    images, labels = random_images(24)
    ssl.pretrain("moco", images, labels, TINY, tmp_path, seed=0, eval_images=images[:8], eval_labels=labels[:8],
                 num_reference=16)
    from digit_bench.artifacts import Artifact
    from digit_bench.loaders import load_backbone

    stats = ssl.evaluate_backbone(load_checkpoint_vit(tmp_path), images[:16], labels[:16], images[16:], labels[16:])
    assert len(stats["knn_top1_by_block"]) == TINY.depth and stats["knn_top1_by_block"][-1] == stats["knn_top1"]
    vit = load_checkpoint_vit(tmp_path)
    feats = ssl.block_features(vit, images[:5])
    with torch.no_grad():
        final = vit.eval().forward_features(ssl.normalize(ssl.to_float(images[:5])))[:, 1:].mean(dim=1)  # (5, D)
    np.testing.assert_allclose(feats[-1], final.numpy(), rtol=1e-5, atol=1e-5)
    for layer in range(-TINY.depth, 0):  # the tokenizer's FeatureBackbone at backbone.layer, mean over its tokens
        backbone = load_backbone({"name": "moco_tiny", "layer": layer, "patch_size": 4}, {"ssl": Artifact(tmp_path)})
        with torch.no_grad():
            tokens = backbone(torch.from_numpy(images[:5]))  # (5, 64, D)
        np.testing.assert_allclose(feats[layer], tokens.mean(dim=1).numpy(), rtol=1e-5, atol=1e-5)


def load_checkpoint_vit(folder) -> VisionTransformer:
    saved = load_checkpoint(folder / "backbone.pt")
    vit = VisionTransformer(**saved["arch"])
    vit.load_state_dict(saved["model"], strict=True)
    return vit
