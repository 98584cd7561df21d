"""Tiny ViT backbones pretrained here, four ways: DINO and MoCo v3 (discriminative SSL), MAE (reconstructive SSL),
supervised.

No pretrained weights can be downloaded offline, so to test DiGIT's claim that discriminative SSL features make
better tokens than reconstructive ones we train small timm ViTs on the dataset itself (32x32 RGB, patch 4, 8x8
tokens). All four objectives share one architecture (`build_vit`) and one data path; only the loss differs. With
`crop_size` below the image side, DINO and the supervised model train on smaller crops (fewer tokens per step) and
are read at the full side, as FixRes trains low and tests high:

- `DINO`: self-distillation with no labels (Caron et al. 2021, facebookresearch/dino): a student matches an EMA
  teacher's centred, sharpened softmax over `out_dim` prototypes across multi-crop views (2 global crops of side
  `crop_size`, `local_crops` crops of half that side; the teacher sees the globals only).
- `MoCo`: MoCo v3 (Chen, Xie & He 2021, facebookresearch/moco-v3), contrastive: a query ViT + projector + predictor
  picks the key of its own image, from a momentum ViT + projector, among the keys of the batch (InfoNCE at
  temperature `moco_temp`), on DINO's views (local crops, when set, are extra queries).
- `MAE`: masked autoencoder (He et al. 2022, facebookresearch/mae): the encoder sees 25% of the patches, a light
  decoder (2 blocks, 128 wide) reconstructs the per-patch normalised pixels of the masked ones.
- `Supervised`: the same ViT plus a linear head on the CLS token, cross-entropy: discriminative but with labels.

Every random choice (batch indices, crops, flips, jitter, MAE masks) is drawn in `batch_fn` from
`np.random.default_rng([seed, step])`, so a step's batch is a pure function of (seed, step) and `training.fit`
resumes bit-exactly. `pretrain` writes `backbone.pt` = {"arch": VisionTransformer kwargs, "model": state dict}
(the teacher's for DINO, the query encoder for MoCo v3 as its release does), which
`digit_bench.backbones:pretrained_tiny` loads, and reports kNN (`knn_accuracy`) and linear-probe accuracy of the
backbone's mean-pooled patch features on held-out images, and the kNN of every block as the tokenizer reads it.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import faiss
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block, VisionTransformer

from digit_bench.config import SSLConfig
from digit_bench.errors import UserError
from digit_bench.training import fit, save_checkpoint, seeded_init, shard

METHODS = ("dino", "moco", "mae", "sup")
MEAN, STD = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD  # what timm's resolve_data_config gives a bare ViT
DINO_HEAD_HIDDEN, DINO_HEAD_BOTTLENECK = 512, 128  # DINO: 2048, 256 (scaled down with the 192-wide ViT)
DINO_GLOBAL_SCALE, DINO_LOCAL_SCALE = (0.4, 1.0), (0.1, 0.4)  # RandomResizedCrop area fractions (DINO defaults)
MAE_DECODER_WIDTH, MAE_DECODER_DEPTH, MAE_DECODER_HEADS = 128, 2, 4  # MAE: 512, 8, 16
KNN_TEMPERATURE = 0.07  # DINO's weighted kNN vote


def vit_arch(cfg: SSLConfig) -> dict:
    """The timm VisionTransformer kwargs saved as backbone.pt["arch"]."""
    return dict(img_size=cfg.image_size, patch_size=cfg.patch_size, embed_dim=cfg.embed_dim, depth=cfg.depth,
                num_heads=cfg.num_heads, num_classes=0)


def build_vit(cfg: SSLConfig) -> VisionTransformer:
    """The one backbone of all three methods; dynamic_img_size lets it take crops smaller than image_size (the
    position table is resampled), and its state dict is identical to that of the plain `vit_arch(cfg)` model.
    Its output (what the DINO and supervised heads read) is the CLS token, or with `head_input: patch_mean` the mean
    of the final-norm patch tokens (timm's "avg" pool without fc_norm)."""
    pool = "token" if cfg.head_input == "cls" else "avg"
    return VisionTransformer(**vit_arch(cfg), global_pool=pool, fc_norm=False, dynamic_img_size=True)


# ------------------------------------------------------------------------------------------------ augmentation
def to_float(images: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [0, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255  # (B, 3, H, W)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] images -> the backbone's input scale (timm ImageNet mean/std)."""
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def random_resized_crop(x: torch.Tensor, size: int, scale: tuple[float, float],
                        rng: np.random.Generator) -> torch.Tensor:
    """torchvision's RandomResizedCrop (aspect 3/4..4/3) + horizontal flip, per image, as one batched grid_sample.

    x: (B, 3, H, W) in [0, 1]. Each crop covers an area fraction in `scale`; returns (B, 3, size, size).
    """
    B = x.shape[0]
    area = rng.uniform(*scale, B)
    ratio = np.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3), B))
    w, h = np.minimum(np.sqrt(area * ratio), 1), np.minimum(np.sqrt(area / ratio), 1)  # fractions of the side
    cx, cy = rng.uniform(-1, 1, B) * (1 - w), rng.uniform(-1, 1, B) * (1 - h)  # centres in [-1, 1] coordinates
    flip = np.where(rng.random(B) < 0.5, -1.0, 1.0)
    theta = np.zeros((B, 2, 3))  # output [-1, 1] grid -> input coordinates
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w * flip, cx, h, cy
    grid = F.affine_grid(torch.from_numpy(theta).float(), [B, 3, size, size], align_corners=False)  # (B, s, s, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)  # (B, 3, s, s)


def color_jitter(x: torch.Tensor, rng: np.random.Generator, strength: float = 0.2) -> torch.Tensor:
    """Light brightness then contrast jitter, factors uniform in 1 +- strength, per image; x (B, 3, H, W) in [0, 1]."""
    B = x.shape[0]
    brightness = torch.from_numpy(rng.uniform(1 - strength, 1 + strength, B)).float().view(B, 1, 1, 1)
    contrast = torch.from_numpy(rng.uniform(1 - strength, 1 + strength, B)).float().view(B, 1, 1, 1)
    x = x * brightness
    mean = x.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    return ((x - mean) * contrast + mean).clamp(0, 1)


# ------------------------------------------------------------------------------------------------ DINO
class DINOHead(nn.Module):
    """MLP -> l2-normalised bottleneck -> weight-normalised prototypes (norm fixed to 1), as in DINO.

    The MLP has BatchNorm (DINO's `use_bn_in_head` option): at init a ViT's CLS vectors differ little between
    images, and without it the teacher's centred output sat near uniform for hundreds of steps in tiny runs.
    """

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        hidden = DINO_HEAD_HIDDEN
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.GELU(),
                                 nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.GELU(),
                                 nn.Linear(hidden, DINO_HEAD_BOTTLENECK))
        self.prototypes = nn.utils.parametrizations.weight_norm(nn.Linear(DINO_HEAD_BOTTLENECK, out_dim, bias=False))
        self.prototypes.parametrizations.weight.original0.data.fill_(1)
        self.prototypes.parametrizations.weight.original0.requires_grad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1)  # (B, bottleneck)
        return self.prototypes(x)  # (B, out_dim)


class DINO(nn.Module):
    """Student ViT + head trained to match an EMA teacher across multi-crop views; `backbone` is the teacher ViT."""

    def __init__(self, cfg: SSLConfig):
        super().__init__()
        self.cfg = cfg
        self.student = nn.ModuleDict(dict(vit=build_vit(cfg), head=DINOHead(cfg.embed_dim, cfg.out_dim)))
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)
        self.register_buffer("center", torch.zeros(1, cfg.out_dim))

    @property
    def backbone(self) -> VisionTransformer:
        return self.teacher.vit

    def forward(self, global_views: torch.Tensor, local_views: torch.Tensor) -> torch.Tensor:
        """global_views: (2B, 3, C, C) view-major; local_views: (LB, 3, C/2, C/2), L >= 0 (C = crop_size).
        Returns the mean cross-entropy over (teacher global view, other student view) pairs."""
        B = global_views.shape[0] // 2
        student = self.student
        s = student.head(student.vit(global_views))  # (2B, out)
        if len(local_views):
            s = torch.cat([s, student.head(student.vit(local_views))])  # ((2+L)B, out)
        s = (s / self.cfg.student_temp).split(B)  # 2+L views of (B, out)
        with torch.no_grad():
            t_raw = self.teacher.head(self.teacher.vit(global_views))  # (2B, out)
            t = F.softmax((t_raw - self.center) / self.cfg.teacher_temp, dim=-1).split(B)  # 2 views of (B, out)
            m = self.cfg.center_momentum
            self.center.mul_(m).add_(t_raw.mean(dim=0, keepdim=True), alpha=1 - m)
        losses = [torch.sum(-tq * F.log_softmax(sv, dim=-1), dim=-1).mean()
                  for iq, tq in enumerate(t) for v, sv in enumerate(s) if v != iq]
        return torch.stack(losses).mean()

    def update_teacher(self, momentum: float) -> None:
        ema_update(self.teacher, self.student, momentum)


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * source, parameter by parameter (DINO's teacher, MoCo's keys)."""
    for pt, ps in zip(target.parameters(), source.parameters()):
        pt.mul_(momentum).add_(ps.detach(), alpha=1 - momentum)


def teacher_momentum(cfg: SSLConfig, step: int) -> float:
    """DINO's (and MoCo v3's) cosine schedule from cfg.teacher_momentum at step 0 to 1 at the last step."""
    return 1 - (1 - cfg.teacher_momentum) * (1 + math.cos(math.pi * step / cfg.train.steps)) / 2


# ------------------------------------------------------------------------------------------------ MoCo v3
def moco_mlp(in_dim: int, out_dim: int, layers: int) -> nn.Sequential:
    """MoCo v3's projector (3 layers) / predictor (2): Linear -> BN -> ReLU, the last Linear -> BN without affine."""
    dims = [in_dim] + [DINO_HEAD_HIDDEN] * (layers - 1) + [out_dim]
    mods: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == layers - 1
        mods += [nn.Linear(a, b, bias=False), nn.BatchNorm1d(b, affine=not last)] + ([] if last else [nn.ReLU()])
    return nn.Sequential(*mods)


class MoCo(nn.Module):
    """MoCo v3: query ViT + projector + predictor against a momentum ViT + projector; `backbone` is the query ViT.

    The negatives of a query are the other keys of its micro-batch (MoCo v3 gathers them across GPUs; the CPU
    profiles train in one process, where the micro-batch is the batch).
    """

    def __init__(self, cfg: SSLConfig):
        super().__init__()
        self.cfg = cfg
        self.base = nn.ModuleDict(dict(vit=build_vit(cfg), projector=moco_mlp(cfg.embed_dim, cfg.out_dim, 3)))
        self.predictor = moco_mlp(cfg.out_dim, cfg.out_dim, 2)
        self.momentum = copy.deepcopy(self.base).requires_grad_(False)

    @property
    def backbone(self) -> VisionTransformer:
        return self.base.vit

    def contrastive(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """InfoNCE of queries q (B, out) against keys k (B, out), image i's key the positive of query i, x 2T."""
        logits = F.normalize(q, dim=1) @ F.normalize(k, dim=1).T / self.cfg.moco_temp  # (B, B)
        return F.cross_entropy(logits, torch.arange(len(q), device=q.device)) * 2 * self.cfg.moco_temp

    def forward(self, global_views: torch.Tensor, local_views: torch.Tensor) -> torch.Tensor:
        """Views as DINO.forward; the mean InfoNCE over (key of a global view, query of another view) pairs."""
        B = global_views.shape[0] // 2
        q = self.predictor(self.base.projector(self.base.vit(global_views)))  # (2B, out)
        if len(local_views):
            q = torch.cat([q, self.predictor(self.base.projector(self.base.vit(local_views)))])  # ((2+L)B, out)
        with torch.no_grad():
            k = self.momentum.projector(self.momentum.vit(global_views)).split(B)  # 2 views of (B, out)
        losses = [self.contrastive(qv, kv) for ik, kv in enumerate(k) for v, qv in enumerate(q.split(B)) if v != ik]
        return torch.stack(losses).mean()

    def update_teacher(self, momentum: float) -> None:
        ema_update(self.momentum, self.base, momentum)


# ------------------------------------------------------------------------------------------------ MAE
class MAE(nn.Module):
    """Masked autoencoder: the ViT encodes the visible patches only, a light decoder fills in mask tokens."""

    def __init__(self, cfg: SSLConfig):
        super().__init__()
        self.cfg = cfg
        self.vit = build_vit(cfg)
        num_patches = (cfg.image_size // cfg.patch_size) ** 2
        self.decoder_embed = nn.Linear(cfg.embed_dim, MAE_DECODER_WIDTH)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, MAE_DECODER_WIDTH))
        self.decoder_pos = nn.Parameter(torch.zeros(1, 1 + num_patches, MAE_DECODER_WIDTH))
        self.decoder_blocks = nn.Sequential(*[Block(MAE_DECODER_WIDTH, MAE_DECODER_HEADS)
                                              for _ in range(MAE_DECODER_DEPTH)])
        self.decoder_norm = nn.LayerNorm(MAE_DECODER_WIDTH)
        self.decoder_pred = nn.Linear(MAE_DECODER_WIDTH, cfg.patch_size ** 2 * 3)
        trunc_normal_(self.mask_token, std=0.02)
        trunc_normal_(self.decoder_pos, std=0.02)

    @property
    def backbone(self) -> VisionTransformer:
        return self.vit

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, T, p*p*3), patches in the row-major order of timm's patch_embed."""
        B, C, H, W = x.shape
        p = self.cfg.patch_size
        x = x.reshape(B, C, H // p, p, W // p, p)  # (B, 3, h, p, w, p)
        return x.permute(0, 2, 4, 3, 5, 1).reshape(B, (H // p) * (W // p), p * p * C)  # (B, T, p*p*3)

    def forward(self, images: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """images: (B, 3, S, S); noise: (B, T) uniform, the lowest (1 - mask_ratio) T patches stay visible.
        Returns the MSE on per-patch normalised pixels over the masked patches."""
        vit = self.vit
        B, T = noise.shape
        keep = int(round(T * (1 - self.cfg.mask_ratio)))
        shuffle = noise.argsort(dim=1)  # (B, T): visible patches first
        restore = shuffle.argsort(dim=1)  # (B, T): inverse permutation

        x = vit.patch_embed(images).flatten(1, 2) + vit.pos_embed[:, vit.num_prefix_tokens:]  # (B, T, D)
        x = x.gather(1, shuffle[:, :keep, None].expand(-1, -1, x.shape[-1]))  # (B, K, D) visible only
        cls = (vit.cls_token + vit.pos_embed[:, :1]).expand(B, -1, -1)  # (B, 1, D)
        x = vit.norm(vit.blocks(vit.norm_pre(torch.cat([cls, x], dim=1))))  # (B, 1+K, D)

        x = self.decoder_embed(x)  # (B, 1+K, Dd)
        masked = self.mask_token.expand(B, T - keep, -1)  # (B, T-K, Dd)
        patches = torch.cat([x[:, 1:], masked], dim=1)  # (B, T, Dd) in shuffled order
        patches = patches.gather(1, restore[..., None].expand(-1, -1, patches.shape[-1]))  # (B, T, Dd) image order
        x = torch.cat([x[:, :1], patches], dim=1) + self.decoder_pos  # (B, 1+T, Dd)
        pred = self.decoder_pred(self.decoder_norm(self.decoder_blocks(x)))[:, 1:]  # (B, T, p*p*3)

        target = self.patchify(images)  # (B, T, p*p*3)
        target = (target - target.mean(dim=-1, keepdim=True)) / (target.var(dim=-1, keepdim=True) + 1e-6).sqrt()
        is_masked = (restore >= keep).float()  # (B, T): 1 where the patch was hidden
        per_patch = (pred - target).pow(2).mean(dim=-1)  # (B, T)
        return (per_patch * is_masked).sum() / is_masked.sum()


# ------------------------------------------------------------------------------------------------ supervised
class Supervised(nn.Module):
    """The same ViT + a linear classifier on its CLS token: the discriminative-with-labels control."""

    def __init__(self, cfg: SSLConfig, num_classes: int):
        super().__init__()
        self.cfg = cfg
        self.vit = build_vit(cfg)
        self.head = nn.Linear(cfg.embed_dim, num_classes)

    @property
    def backbone(self) -> VisionTransformer:
        return self.vit

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.head(self.vit(images)), labels, label_smoothing=self.cfg.train.label_smoothing)


# ------------------------------------------------------------------------------------------------ batches
def batch_indices(n: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Images of global batch `step`: consecutive slices of one seeded permutation of range(n) per epoch."""
    positions = np.arange(step * batch_size, (step + 1) * batch_size)
    epochs = positions // n
    out = np.empty(batch_size, dtype=np.int64)
    for epoch in np.unique(epochs):
        perm = np.random.default_rng([seed, int(epoch)]).permutation(n)
        out[epochs == epoch] = perm[positions[epochs == epoch] % n]
    return out


def make_batch(method: str, images: np.ndarray, labels: np.ndarray, cfg: SSLConfig, seed: int, step: int) -> dict:
    """The whole global batch of `step` for `method`, all randomness from default_rng([seed, step])."""
    idx = batch_indices(len(images), cfg.train.batch_size, seed, step)
    rng = np.random.default_rng([seed, step, 1])
    x = to_float(images[idx])  # (B, 3, S, S)
    S = cfg.image_size
    C = cfg.crop_size or S  # DINO's global / the supervised crop side
    if method in ("dino", "moco"):
        views = [color_jitter(random_resized_crop(x, C, DINO_GLOBAL_SCALE, rng), rng) for _ in range(2)]
        small = [color_jitter(random_resized_crop(x, C // 2, DINO_LOCAL_SCALE, rng), rng)
                 for _ in range(cfg.local_crops)]
        empty = torch.zeros(len(idx), 0, 3, C // 2, C // 2)
        return dict(global_views=normalize(torch.stack(views, 1)),  # (B, 2, 3, C, C)
                    local_views=normalize(torch.stack(small, 1)) if small else empty)  # (B, L, 3, C/2, C/2)
    if method == "mae":  # MAE's encoder sees a quarter of the patches already: it keeps the full side S
        crops = normalize(random_resized_crop(x, S, DINO_GLOBAL_SCALE, rng))  # (B, 3, S, S)
        noise = torch.from_numpy(rng.random((len(idx), (S // cfg.patch_size) ** 2))).float()  # (B, T)
        return dict(images=crops, noise=noise)
    crops = normalize(random_resized_crop(x, C, DINO_GLOBAL_SCALE, rng))  # (B, 3, C, C)
    return dict(images=crops, labels=torch.from_numpy(labels[idx]).long())


def split_batch(batch: dict, slices: list[slice]) -> list[dict]:
    """A global batch (per-image leading dim) -> the micro-batches at `slices` (`training.shard`), DINO views
    flattened view-major."""
    micro = [{k: v[s] for k, v in batch.items()} for s in slices]
    for m in micro:
        for key in ("global_views", "local_views"):
            if key in m:
                m[key] = m[key].transpose(0, 1).flatten(0, 1)  # (B, V, 3, s, s) -> (V*B, 3, s, s)
    return micro


# ------------------------------------------------------------------------------------------------ evaluation
@torch.no_grad()
def block_features(vit: VisionTransformer, images: np.ndarray, batch_size: int = 256) -> list[np.ndarray]:
    """Mean over patch tokens of every block's output with the final norm applied, as the tokenizer reads a block
    (`FeatureBackbone.features`); the last entry is the final-norm output. float32 (N, D) per block; images uint8
    (N, S, S, 3)."""
    vit.eval()
    device = next(vit.parameters()).device
    blocks: list[list[torch.Tensor]] = [[] for _ in vit.blocks]
    for start in range(0, len(images), batch_size):
        x = normalize(to_float(images[start:start + batch_size])).to(device)  # (b, 3, S, S)
        taken = vit.forward_intermediates(x, norm=True, output_fmt="NLC", intermediates_only=True)  # depth x (b, T, D)
        for feats, tokens in zip(blocks, taken):
            feats.append(tokens.mean(dim=1).cpu())  # (b, D)
    return [torch.cat(feats).numpy() for feats in blocks]


def knn_accuracy(feats_train: np.ndarray, y_train: np.ndarray, feats_test: np.ndarray, y_test: np.ndarray,
                 k: int = 20) -> float:
    """Top-1 of DINO's weighted kNN: cosine neighbours (faiss inner product), votes weighted exp(sim / 0.07)."""
    train, test = np.array(feats_train, dtype=np.float32), np.array(feats_test, dtype=np.float32)  # copies
    faiss.normalize_L2(train)  # in place
    faiss.normalize_L2(test)
    index = faiss.IndexFlatIP(train.shape[1])
    index.add(train)
    sims, nn_idx = index.search(test, min(k, len(train)))  # (Q, k) each
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    votes = np.zeros((len(test), num_classes))
    np.add.at(votes, (np.arange(len(test))[:, None], y_train[nn_idx]), np.exp(sims / KNN_TEMPERATURE))
    return float((votes.argmax(1) == y_test).mean())


def evaluate_backbone(vit: VisionTransformer, images: np.ndarray, labels: np.ndarray,
                      eval_images: np.ndarray, eval_labels: np.ndarray) -> dict:
    """kNN (k=20) and linear-probe (sklearn logistic regression) top-1 of frozen mean-pooled final-norm features,
    and the kNN of every block read as the tokenizer reads it (`knn_top1_by_block`, block 0 first; the tokenizer's
    `backbone.layer` -3 is entry -3): fitted on (images, labels), scored on (eval_images, eval_labels)."""
    train, test = block_features(vit, images), block_features(vit, eval_images)
    with threadpool_limits(limits=1, user_api="blas"):  # multi-threaded BLAS crawls on a shared 2-core CPU
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(train[-1], labels)
    by_block = [knn_accuracy(a, labels, b, eval_labels, k=20) for a, b in zip(train, test)]
    return dict(knn_top1=by_block[-1], probe_top1=float(probe.score(test[-1], eval_labels)), knn_top1_by_block=by_block)


# ------------------------------------------------------------------------------------------------ pretraining
def build_objective(method: str, cfg: SSLConfig, num_classes: int) -> nn.Module:
    """DINO | MoCo | MAE | Supervised for `method` in METHODS."""
    if method == "dino":
        return DINO(cfg)
    if method == "moco":
        return MoCo(cfg)
    if method == "mae":
        return MAE(cfg)
    if method == "sup":
        return Supervised(cfg, num_classes)
    raise UserError(f"unknown pretraining method {method!r}; choose one of {', '.join(METHODS)}")


def pretrain(method: str, images: np.ndarray, labels: np.ndarray, cfg: SSLConfig, work_dir: Path, seed: int,
             eval_images: np.ndarray, eval_labels: np.ndarray, num_reference: int = 5000) -> dict:
    """Train `method`'s objective on uint8 (N, S, S, 3) images with `cfg.train`, resuming from work_dir/ckpt.pt.

    Writes work_dir/backbone.pt = {"arch": vit_arch(cfg), "model": ViT state dict (DINO: the teacher)} and returns
    fit's stats plus kNN/probe top-1 on (eval_images, eval_labels), fitted on `num_reference` seeded train images.
    """
    S = cfg.image_size
    if images.ndim != 4 or images.shape[1:] != (S, S, 3) or images.dtype != np.uint8:
        raise UserError(f"pretraining images are {images.dtype} {images.shape}, expected uint8 (N, {S}, {S}, 3); "
                        f"set data.image_size to ssl.image_size={S}")
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    labels = np.asarray(labels, dtype=np.int64)
    with seeded_init(seed):
        model = build_objective(method, cfg, num_classes=int(labels.max()) + 1)

    def batch_fn(step: int, rank: int, world_size: int) -> list[dict]:
        accum = cfg.train.accumulation(world_size)[1]
        return split_batch(make_batch(method, images, labels, cfg, seed, step),
                           shard(cfg.train.batch_size, accum, rank, world_size))

    def loss_fn(model: nn.Module, batch: dict) -> tuple[dict, dict]:
        return {"main": model(**batch)}, {}

    def after_step(model: nn.Module, step: int) -> None:
        model.update_teacher(teacher_momentum(cfg, step))

    trainable = [p for p in model.parameters() if p.requires_grad]
    stats = fit(model, loss_fn, batch_fn, cfg.train, work_dir, seed=seed, param_groups={"main": trainable},
                after_step=after_step if hasattr(model, "update_teacher") else None, desc=f"pretrain {method}")
    vit = model.backbone
    save_checkpoint(work_dir / "backbone.pt", {"arch": vit_arch(cfg), "model": vit.state_dict()})
    reference = np.random.default_rng(seed).permutation(len(images))[:num_reference]
    # a folder's images are decoded batch by batch as the features are taken, not all at once
    ref_images = images.subset(reference) if hasattr(images, "subset") else images[reference]
    return dict(stats, method=method, eval_features="mean-pooled patch tokens, final norm",
                **evaluate_backbone(vit, ref_images, labels[reference], eval_images, eval_labels))
