"""Stage: linear probe of the frozen stage-1 GPT (the paper's "understanding" score, Table 2 / Fig. 3b).

Each layer's hidden states (embedding output included) are mean-pooled over all T + 1 input positions, [BOS | class]
and every one of the T tokens (the last one read at an extra position, models/gpt.py `hidden_states`), as the paper
pools its 257 positions ([eos] + 256 tokens). Two protocols (`probe.protocol`):
- `converged` (tiny/smoke default): the identity view of train and test images, one logistic regression per layer
  solved to convergence on train (eval/linear_probe.py), its L2 strength and the reported layer chosen on a held-out
  part of train; test is only scored.
- `paper` (the paper profile, §4 of the released code): the embedding output and blocks 1..L-1, one linear head per
  layer trained jointly by SGD (lr 0.4, momentum 0.9, no weight decay, cosine to 0) on online RandomResizedCrop +
  flip views of train images tokenized on the fly (backbone + centroids); test images are the 224/256 centre crop.
  The reported layer is chosen on a held-out part of train (centre crop), never on test.
Output: `metrics.json` with probe_top1, probe_top5, probe_layer, probe_protocol and the per-layer curve.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from digit_bench.artifacts import Artifact
from digit_bench.loaders import device, device_info, load_backbone, load_gpt, load_vqgan, save_json

VERSION = 3
KIND = "infer"  # one task
RESUMABLE = False


@dataclass(frozen=True)
class Cfg:
    """Parents: gpt, tokens; under the paper protocol also the tokenizer (centroids [+ ssl], or vqgan)."""

    probe: dict  # config.ProbeConfig fields (the paper protocol's only when it is chosen: config.probe_hashed);
    # under the paper protocol also "data" and "backbone" (config dicts): it tokenizes augmented views on the fly
    seed: int


@torch.no_grad()
def pooled_hidden_states(model, tokens: np.ndarray, rows: np.ndarray | None = None, batch_size: int = 256,
                         out: Path | None = None, name: str = "") -> list[torch.Tensor]:
    """Per layer, hidden states (N, D) float32 of token sequences tokens[rows] (N, T), mean-pooled over all T + 1
    positions (the last token included).

    With `out`, each layer's features are a memory-mapped `out/<name>_L<l>.npy` written batch by batch and returned
    as tensors over those maps: memory does not grow with N, the probe heads read their batches from disk.
    """
    rows = np.arange(len(tokens)) if rows is None else rows
    per_layer: list[np.ndarray] = []
    for start in tqdm(range(0, len(rows), batch_size), desc="probe features", unit="batch"):
        x = torch.from_numpy(np.asarray(tokens[rows[start:start + batch_size]]).astype(np.int64)).to(device())  # (B, T)
        # a class-conditional GPT gets the null class: the true label would hand the probe its answer
        null = (torch.full((len(x),), model.cfg.num_classes, device=x.device) if model.cfg.num_classes else None)  # (B,)
        states = model.hidden_states(x, null, last_token=True)  # L+1 x (B, T + 1, D)
        if not per_layer:
            shape = [(len(rows), h.shape[-1]) for h in states]
            per_layer = [np.empty(sh, np.float32) if out is None else
                         np.lib.format.open_memmap(out / f"{name}_L{i}.npy", "w+", np.float32, sh) for i, sh in enumerate(shape)]
        for i, h in enumerate(states):
            per_layer[i][start:start + len(x)] = h.float().mean(1).cpu().numpy()  # (B, D)
    for f in per_layer:
        if out is not None:
            f.flush()
    return [torch.from_numpy(f) for f in per_layer]  # L+1 x (N, D)


# ------------------------------------------------------------------------------------------------ paper protocol
def random_resized_crop(im, size: int, rng: np.random.Generator, scale: tuple[float, float],
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> np.ndarray:
    """torchvision's RandomResizedCrop(size, scale, ratio) (bilinear) of a PIL image, then a horizontal flip with
    probability 1/2, every draw from `rng`; uint8 (size, size, 3)."""
    from PIL import Image

    W, H = im.size
    area, log_ratio = W * H, (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):  # torchvision's rejection sampling of (area, aspect ratio)
        target, aspect = area * rng.uniform(*scale), math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= W and 0 < h <= H:
            top, left = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
            break
    else:  # torchvision's fallback: the centre crop at the nearest allowed aspect ratio
        w, h = (W, round(W / ratio[0])) if W / H < ratio[0] else (round(H * ratio[1]), H) if W / H > ratio[1] else (W, H)
        top, left = (H - h) // 2, (W - w) // 2
    out = np.array(im.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h)), dtype=np.uint8)
    return np.ascontiguousarray(out[:, ::-1]) if rng.random() < 0.5 else out  # (size, size, 3)


class AugmentedViews:
    """Map-style dataset of (image index, draw) -> a seeded RandomResizedCrop + flip view of that image at the data
    resolution: of the original file for folder datasets (as the paper crops the undecoded image), of the stored
    image otherwise. DataLoader workers decode."""

    def __init__(self, images, size: int, scale: tuple[float, float], seed: int):
        self.images, self.size, self.scale, self.seed = images, size, tuple(scale), seed

    def __getitem__(self, item: tuple[int, int]) -> tuple[np.ndarray, int]:
        from PIL import Image

        i, draw = item
        rng = np.random.default_rng([self.seed, draw])
        if self.images.array is not None:
            return random_resized_crop(Image.fromarray(self.images.array[i]), self.size, rng, self.scale), i
        with Image.open(self.images.files[i]) as im:
            return random_resized_crop(im.convert("RGB"), self.size, rng, self.scale), i


def _collate(items: list[tuple[np.ndarray, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 views (B, S, S, 3) and their image indices (B,), as tensors (shared memory between processes)."""
    return torch.from_numpy(np.stack([v for v, _ in items])), torch.tensor([i for _, i in items])


def epoch_draws(rows: np.ndarray, steps: int, batch_size: int, seed: int):
    """(image index, draw number) for steps x batch_size draws: a seeded permutation of `rows` per epoch."""
    draw = 0
    for epoch in range(-(-steps * batch_size // len(rows))):
        for i in rows[np.random.default_rng([seed, epoch]).permutation(len(rows))]:
            if draw == steps * batch_size:
                return
            yield int(i), draw
            draw += 1


def online_encoder(pc: dict, parents: dict[str, Artifact]):
    """encode(uint8 images (B, H, W, 3)) -> (features, token ids (B, T)) with the run's own tokenizer: the VQGAN
    parent, or the backbone of `pc["backbone"]` with the centroids parent (its backend and metric from its manifest)."""
    from digit_bench.tokenizers.encoders import kmeans_encoder, vqgan_encoder

    if "vqgan" in parents:
        encode_vq, size = vqgan_encoder(load_vqgan(parents["vqgan"])), parents["tokens"].manifest["image_size"]

        def encode(images: torch.Tensor):  # the VQGAN's grid is fixed by its input size: a crop is resized back
            x = images.permute(0, 3, 1, 2).float() / 255  # (B, 3, c, c)
            if x.shape[-1] != size:
                x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)  # (B, 3, S, S)
            return encode_vq(x)

        return encode
    km = parents["centroids"].manifest
    centroids = np.load(parents["centroids"] / "centroids.npy")  # (K, D)
    return kmeans_encoder(load_backbone(pc["backbone"], parents), centroids, km["backend"], km["spherical"])


@torch.no_grad()
def pooled_states(model, encode, images: np.ndarray, layers: int) -> list[torch.Tensor]:
    """Per layer 0..layers-1, hidden states of uint8 images (B, H, W, 3), tokenized online, pooled over all T + 1
    positions: layers x (B, D)."""
    dev = device()
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
        ids = encode(torch.from_numpy(images))[1].to(dev)  # (B, T)
        null = torch.full((len(ids),), model.cfg.num_classes, device=dev) if model.cfg.num_classes else None  # (B,)
        return [h.float().mean(1) for h in model.hidden_states(ids, null, last_token=True)[:layers]]  # layers x (B, D)


def paper_probe(model, cfg: Cfg, parents: dict[str, Artifact]) -> dict:
    """The released probe protocol (paper §4) on the run's data (`cfg.probe["data"]`) and tokenizer."""
    from digit_bench.config import DataConfig, build
    from digit_bench.data import load_split

    data = build(DataConfig, cfg.probe["data"])
    return sgd_probe(model, online_encoder(cfg.probe, parents), load_split(data, "train"), load_split(data, "test"),
                     data.image_size, cfg.probe, cfg.seed)


def sgd_probe(model, encode, train, test, image_size: int, pc: dict, seed: int) -> dict:
    """SGD heads on online-tokenized augmented views of `train` (ImageSets), streamed: views decoded by DataLoader
    workers and tokenized per batch, held-out train and test images scored batch by batch at the centre crop;
    memory does not grow with the dataset. The reported layer is the best on the held-out part of train."""
    from torch.utils.data import DataLoader

    from digit_bench.data import data_workers, iter_batches
    from digit_bench.eval.linear_probe import SGDProbes

    layers = model.cfg.n_layer  # the embedding output and blocks 1..L-1 (fairseq inner_states[0..15] of 16 blocks)
    rows = np.arange(len(train))
    if pc["num_train"] is not None and pc["num_train"] < len(rows):
        rows = np.sort(np.random.default_rng(seed).choice(len(rows), pc["num_train"], replace=False))
    perm = np.random.default_rng([seed, 1]).permutation(rows)
    n_hold = min(len(rows) - 1, max(1, round(pc["holdout_fraction"] * len(rows))))
    hold, fit = np.sort(perm[:n_hold]), np.sort(perm[n_hold:])
    torch.manual_seed(seed)
    probes = SGDProbes([model.cfg.n_embd] * layers, train.num_classes, lr=pc["lr"], momentum=pc["momentum"],
                       weight_decay=pc["weight_decay"], steps=pc["steps"]).to(device())
    workers = data_workers()
    loader = DataLoader(AugmentedViews(train.images, image_size, pc["crop_scale"], seed),
                        sampler=epoch_draws(fit, pc["steps"], pc["batch_size"], seed), batch_size=pc["batch_size"],
                        num_workers=workers, collate_fn=_collate, prefetch_factor=2 if workers else None)
    y_all = torch.from_numpy(train.labels)
    loss = float("nan")
    for views, rows_b in tqdm(loader, desc="probe (sgd)", unit="step", total=pc["steps"]):
        loss = probes.step(pooled_states(model, encode, views.numpy(), layers), y_all[rows_b].to(device()))  # y (B,)
    crop = max(1, round(pc["eval_crop"] * image_size))

    def score(images, labels: np.ndarray, index: np.ndarray) -> tuple[list[float], list[float]]:
        """Per layer, top-1 and top-5 (%) of images[index] at the centre crop."""
        hits = np.zeros((2, layers))
        off = (image_size - crop) // 2
        for start, batch in zip(range(0, len(index), pc["batch_size"]), iter_batches(images, pc["batch_size"], index)):
            y = torch.from_numpy(labels[index[start:start + len(batch)]]).to(device())  # (B,)
            view = np.ascontiguousarray(batch[:, off:off + crop, off:off + crop])  # (B, c, c, 3) centre crop
            feats = pooled_states(model, encode, view, layers)
            hits += [probes.correct(feats, y, 1), probes.correct(feats, y, 5)]
        return (100.0 * hits[0] / len(index)).tolist(), (100.0 * hits[1] / len(index)).tolist()

    holdout = score(train.images, train.labels, hold)[0]
    layer = int(np.argmax(holdout))
    top1, top5 = score(test.images, test.labels, np.arange(len(test)))
    return {"probe_top1": top1[layer], "probe_top5": top5[layer], "probe_layer": layer, "probe_curve": top1,
            "probe_layer_holdout_top1": holdout, "probe_protocol": "paper", "final_loss": loss}


def compute(cfg: Cfg, parents: dict[str, Artifact], out: Path) -> dict:
    from digit_bench.eval.linear_probe import train_linear_probes

    pc, tok = cfg.probe, parents["tokens"]
    model = load_gpt(parents["gpt"])
    if pc.get("protocol", "converged") == "paper":
        result = paper_probe(model, cfg, parents)
        final_loss = result.pop("final_loss")  # summed over the layers' heads, last update
        save_json(out / "metrics.json", result)
        return {"probe_top1": result["probe_top1"], "probe_layer": result["probe_layer"], "final_loss": final_loss,
                **device_info()}
    train_tokens = np.load(tok / "tokens_train.npy", mmap_mode="r")[0]  # (N, T) identity view, on disk
    train_labels = np.load(tok / "labels_train.npy")
    keep = np.arange(len(train_labels))
    if pc["num_train"] is not None and pc["num_train"] < len(keep):
        keep = np.sort(np.random.default_rng(cfg.seed).choice(len(keep), pc["num_train"], replace=False))
    test_tokens = np.load(tok / "tokens_test.npy", mmap_mode="r")[0]
    test_labels = np.load(tok / "labels_test.npy")
    work = out / "features"  # pooled features of every layer: memory maps, deleted once the heads are trained
    work.mkdir()
    result = train_linear_probes(pooled_hidden_states(model, train_tokens, keep, out=work, name="train"),
                                 torch.from_numpy(train_labels[keep]),
                                 pooled_hidden_states(model, test_tokens, out=work, name="test"), torch.from_numpy(test_labels),
                                 l2s=pc["l2s"], max_iter=pc["max_iter"], holdout_fraction=pc["holdout_fraction"],
                                 seed=cfg.seed, num_classes=tok.manifest["num_classes"])
    shutil.rmtree(work)
    result["probe_curve"] = result.pop("probe_layer_top1")  # test top-1 per layer, embedding output first
    result["probe_protocol"] = "converged"
    save_json(out / "metrics.json", result)
    return {"probe_top1": result["probe_top1"], "probe_layer": result["probe_layer"], **device_info()}
