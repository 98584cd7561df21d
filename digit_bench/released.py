"""Readers for the artefacts released with DiGIT (github.com/DAMO-NLP-SG/DiGIT, weights on the HF hub), and
`import`, which registers such a file as a content-addressed artifact the pipeline can run from.

Centroids: `km_8k.npy`, float (K, D), written by the release's K-Means script (faiss, L2). The stage-1 fairseq
checkpoint also holds them, transposed, as the frozen parameter `centroids` (D, K).

The stage-1 GPT is fairseq's `TransformerDecoder` (no encoder attention) inside the `stlm` language model. What a
reader has to know about its state dict (`ckpt["model"]`):

    decoder.embed_tokens.weight          (len(dict) [+ 1000 classes], d)  rows: the dictionary, then class tokens
    decoder.embed_positions.weight       (max_positions + pad + 1, d)      learned; absent for sinusoidal positions
    decoder.layers.{i}.self_attn.{q,k,v,out}_proj.{weight,bias}
    decoder.layers.{i}.self_attn_layer_norm.{weight,bias}                  LN after the attention residual (post-LN)
    decoder.layers.{i}.fc1 / fc2.{weight,bias}                             GELU MLP
    decoder.layers.{i}.final_layer_norm.{weight,bias}                      LN after the MLP residual (post-LN)
    decoder.layer_norm.{weight,bias}                                       only when decoder_normalize_before (pre-LN)
    decoder.output_projection.weight     (len(dict), d)                    untied, no bias
    centroids (D, K), centroid_norm (1, K), pretrained_encoder.*           frozen tokenizer parts (not the GPT)

The dictionary is fairseq's `Dictionary(extra_special_symbols=["<n>"])` with the K cluster ids added in order:
`<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3, `<n>`=4, cluster k = k + 5, so len(dict) = K + 5. A sequence is
`[</s>, t1 .. t256]` (the class token `len(dict) + c` replaces `</s>` when class-conditional). Positions are
fairseq's: counted from pad + 1 = 2, so input position i reads row i + 2 of the position table. Embeddings are
scaled by sqrt(d). Our GPT (models/gpt.py) has exactly this computation with its own row order:

    ours tok_emb [0, V)         <- embed_tokens[5 : 5 + V]                      cluster ids
    ours tok_emb V (BOS)        <- embed_tokens[2]                              </s>, the start of every sequence
    ours tok_emb V+1 .. V+C     <- embed_tokens[V + 5 : V + 5 + C]              class tokens
    ours tok_emb V+C+1 (null)   <- zeros                                        the release has no null class (no CFG)
    ours pos_emb [0, T)         <- embed_positions[2 : 2 + T]
    ours head                   <- output_projection[5 : 5 + V]                 sampling masks the specials anyway
    ours qkv                    <- cat(q_proj, k_proj, v_proj)                  fairseq scales q by hd^-0.5, as SDPA
"""

from __future__ import annotations

import argparse
import hashlib
import math
import re
from pathlib import Path

import numpy as np
import torch

from digit_bench.artifacts import Artifact, Store, artifact_id
from digit_bench.errors import UserError
from digit_bench.weights import load_weights

NSPECIAL = 5  # <s>, <pad>, </s>, <unk>, <n>
PAD, EOS = 1, 2
KINDS = ("centroids", "gpt", "images")
_LAYER = re.compile(r"decoder\.layers\.(\d+)\.")


def file_digest(path: Path) -> str:
    """Full sha256 hex digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def _existing(path: str | Path, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"{what} file {path} does not exist; fix the path")
    return path


# ------------------------------------------------------------------------------------------------ fairseq files
def load_fairseq(path: str | Path, trust_pickle: bool = False) -> tuple[dict, dict]:
    """(state dict, model config) of a fairseq checkpoint file.

    Real fairseq checkpoints pickle their config (omegaconf / argparse objects), which `weights_only=True` refuses;
    `trust_pickle` loads them with full unpickling (run arbitrary code from the file: only for files you trust).
    """
    path = _existing(path, "fairseq checkpoint")
    if trust_pickle:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    else:  # the one tensors-only loader; older fairseq's argparse Namespace of settings is allowed as plain data
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = load_weights(path, "fairseq checkpoint", pickled="if you trust the file (e.g. the official DiGIT "
                                "release), pass --trust-pickle")
    if "model" not in ckpt:
        raise UserError(f"{path} is not a fairseq checkpoint (no 'model' entry; keys: {', '.join(map(str, ckpt))})")
    cfg = ckpt.get("cfg") or {}
    model_cfg = cfg.get("model") if isinstance(cfg, dict) else getattr(cfg, "model", None)
    if model_cfg is None and ckpt.get("args") is not None:  # older fairseq: an argparse Namespace
        model_cfg = vars(ckpt["args"])
    return ckpt["model"], dict(model_cfg or {})


def read_centroids(path: str | Path, trust_pickle: bool = False) -> np.ndarray:
    """float32 (K, D) centroids from `km_*.npy` (K, D), or from a stage-1 fairseq checkpoint's `centroids` (D, K)."""
    path = _existing(path, "centroids")
    if path.suffix == ".npy":
        c = np.load(path)
    else:
        state, _ = load_fairseq(path, trust_pickle)
        if "centroids" not in state:
            raise UserError(f"{path} has no 'centroids' tensor; pass the km_*.npy file or a stage-1 checkpoint")
        c = state["centroids"].float().numpy().T  # (K, D)
    if c.ndim != 2 or not np.issubdtype(c.dtype, np.floating):
        raise UserError(f"centroids in {path} are {c.dtype} {c.shape}; expected a float (K, D) array")
    if len(c) > 65535:
        raise UserError(f"{path} has {len(c)} centroids; token files are uint16, at most 65535")
    return np.ascontiguousarray(c, dtype=np.float32)


def sinusoidal_positions(num: int, dim: int, padding_idx: int = PAD) -> torch.Tensor:
    """fairseq's SinusoidalPositionalEmbedding table (num, dim): [sin | cos] halves, the padding row zero."""
    half = dim // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float) * -(math.log(10000) / (half - 1)))  # (half,)
    angles = torch.arange(num, dtype=torch.float)[:, None] * freq[None]  # (num, half)
    table = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)  # (num, 2 half)
    if dim % 2:
        table = torch.cat([table, torch.zeros(num, 1)], dim=1)  # (num, dim)
    table[padding_idx] = 0
    return table


def gpt_from_fairseq(state: dict, model_cfg: dict | None = None, *, n_head: int | None = None, seq_len: int = 256,
                     dropout: float = 0.1):
    """Our GPT (models/gpt.py) with the weights of a fairseq stage-1 decoder state dict (see the module docstring).

    Args:
        model_cfg: the checkpoint's model config; gives the head count (`decoder_attention_heads`), which the
            weights do not determine, and cross-checks the LN placement and embedding scale.
        n_head: head count when the config does not give it (the release: 16).
        seq_len: data tokens per sequence (the release: 256 = 16x16).
    """
    from digit_bench.models.gpt import GPT, GPTConfig

    model_cfg = model_cfg or {}
    missing = [k for k in ("decoder.embed_tokens.weight", "decoder.output_projection.weight") if k not in state]
    if missing:
        raise UserError(f"not a fairseq decoder state dict: missing {', '.join(missing)}")
    emb, out = state["decoder.embed_tokens.weight"], state["decoder.output_projection.weight"]  # (R, d), (len(dict), d)
    n_layer = 1 + max((int(m.group(1)) for k in state if (m := _LAYER.match(k))), default=-1)
    n_embd, V = emb.shape[1], out.shape[0] - NSPECIAL
    num_classes = emb.shape[0] - out.shape[0]  # class-conditional: 1000 extra rows
    heads = model_cfg.get("decoder_attention_heads") or n_head
    if heads is None:
        raise UserError("the checkpoint's config does not give decoder_attention_heads; pass the head count (--heads)")
    if model_cfg.get("no_scale_embedding"):
        raise UserError("this checkpoint was trained with no_scale_embedding; our GPT scales embeddings by sqrt(d)")
    pre_ln = "decoder.layer_norm.weight" in state
    if "decoder_normalize_before" in model_cfg and bool(model_cfg["decoder_normalize_before"]) != pre_ln:
        raise UserError("checkpoint config and weights disagree on decoder_normalize_before; the file is inconsistent")
    cfg = GPTConfig(vocab_size=V, seq_len=seq_len, n_layer=n_layer, n_head=int(heads), n_embd=n_embd,
                    n_ffn=state["decoder.layers.0.fc1.weight"].shape[0], dropout=dropout, post_ln=not pre_ln,
                    num_classes=num_classes)
    if "decoder.embed_positions.weight" in state:  # learned
        positions = state["decoder.embed_positions.weight"]  # (max_positions + 2, d)
        if len(positions) < seq_len + PAD + 1:
            raise UserError(f"position table has {len(positions)} rows, fewer than seq_len {seq_len} + 2; "
                            "lower --seq-len")
    else:  # sinusoidal: fairseq computes the table, the state dict holds none
        positions = sinusoidal_positions(seq_len + PAD + 1, n_embd)
    ours: dict[str, torch.Tensor] = {}
    C = num_classes
    null = [torch.zeros(1, n_embd)] if C else []
    ours["tok_emb.weight"] = torch.cat([emb[NSPECIAL:NSPECIAL + V], emb[EOS:EOS + 1], emb[V + NSPECIAL:], *null])
    ours["pos_emb.weight"] = positions[PAD + 1:PAD + 1 + seq_len]  # (T, d)
    ours["head.weight"] = out[NSPECIAL:NSPECIAL + V]  # (V, d)
    if pre_ln:
        ours["ln_f.weight"], ours["ln_f.bias"] = state["decoder.layer_norm.weight"], state["decoder.layer_norm.bias"]
    for i in range(n_layer):
        p = f"decoder.layers.{i}."
        for part in ("weight", "bias"):
            ours[f"blocks.{i}.attn.qkv.{part}"] = torch.cat([state[f"{p}self_attn.{x}_proj.{part}"] for x in "qkv"])
            ours[f"blocks.{i}.attn.proj.{part}"] = state[f"{p}self_attn.out_proj.{part}"]
            ours[f"blocks.{i}.ln1.{part}"] = state[f"{p}self_attn_layer_norm.{part}"]
            ours[f"blocks.{i}.ln2.{part}"] = state[f"{p}final_layer_norm.{part}"]
            ours[f"blocks.{i}.mlp.0.{part}"] = state[f"{p}fc1.{part}"]
            ours[f"blocks.{i}.mlp.2.{part}"] = state[f"{p}fc2.{part}"]
    model = GPT(cfg)
    model.load_state_dict({k: v.float() for k, v in ours.items()})
    return model


# ------------------------------------------------------------------------------------------------ import
def _register(store: Store, kind: str, name: str, digest: str, write, extras: dict) -> Artifact:
    cfg = {"kind": kind, "sha256": digest}
    from digit_bench.stages import imported

    aid = artifact_id("imported", name, cfg, [], imported.VERSION)
    manifest_cfg = {**cfg, "id": aid}
    return store.lookup_or_compute("imported", aid, manifest_cfg, {}, lambda out: {**write(out), **extras},
                                   log=lambda _: None)


def import_centroids(store: Store, path: str | Path, trust_pickle: bool = False) -> Artifact:
    """Register released centroids as `centroids.npy` float32 (K, D), the layout of our `cluster` stage."""
    path = Path(path).expanduser()
    centroids = read_centroids(path, trust_pickle)

    def write(out: Path) -> dict:
        np.save(out / "centroids.npy", centroids)
        return {}

    # backend/spherical: how tokens are assigned to them (the release: L2 nearest centroid, as faiss), published as
    # outputs like the cluster stage's
    return _register(store, "centroids", f"{path.stem}", file_digest(path), write,
                     {"backend": "faiss", "spherical": False, "source": str(path),
                      "shape": list(centroids.shape), "k": len(centroids)})


def import_gpt(store: Store, path: str | Path, *, trust_pickle: bool = False, n_head: int | None = None,
               seq_len: int = 256, image_size: int = 256) -> Artifact:
    """Register a fairseq stage-1 checkpoint as our `train` artifact layout (ckpt.pt + model.json), which the sample
    stage reads; the manifest carries the vocabulary, grid and class count the downstream stages need."""
    from digit_bench.loaders import save_json

    path = Path(path).expanduser()
    state, model_cfg = load_fairseq(path, trust_pickle)
    model = gpt_from_fairseq(state, model_cfg, n_head=n_head, seq_len=seq_len)
    grid = math.isqrt(seq_len)
    meta = {"vocab_size": model.cfg.vocab_size, "seq_len": seq_len, "grid": [grid, grid], "tokenizer": "kmeans",
            "num_classes": model.cfg.num_classes, "image_size": image_size}

    def write(out: Path) -> dict:
        torch.save({"model": model.state_dict(), "step": None}, out / "ckpt.pt")
        save_json(out / "model.json", {"gpt": model.cfg.__dict__, **meta})
        return {}

    return _register(store, "gpt", path.stem, file_digest(path), write,
                     {"source": str(path), "params": model.num_params(), **meta})


def import_images(store: Store, images: np.ndarray, name: str, provenance: dict) -> Artifact:
    """Register generated uint8 images (N, H, W, 3) as an image artifact (`images.npz`), as the render stage writes."""
    digest = hashlib.sha256(f"{images.dtype}{images.shape}".encode())
    digest.update(np.ascontiguousarray(images).data)

    def write(out: Path) -> dict:
        np.savez(out / "images.npz", images=images, labels=np.zeros(len(images), np.int64))
        return {}

    return _register(store, "images", name, digest.hexdigest(), write,
                     {"source": f"external:{provenance.get('input', name)}", "conditional": False,
                      "num_images": len(images), "provenance": provenance})


def cmd_import(args) -> dict:
    """`digit-bench import <centroids|gpt> <file>`: register a released artefact; prints its id and how to use it."""
    from digit_bench.artifacts import default_root

    store = Store(args.root or default_root())
    if args.kind == "centroids":
        art = import_centroids(store, args.file, args.trust_pickle)
        use = f"--set tokenizer.centroids={art.id}"
    elif args.kind == "gpt":
        art = import_gpt(store, args.file, trust_pickle=args.trust_pickle, n_head=args.heads, seq_len=args.seq_len)
        use = f"--set gpt.checkpoint={art.id}"
    else:
        raise UserError(f"unknown import kind {args.kind!r}; choose centroids or gpt (images: use `digit-bench score`)")
    return {"kind": args.kind, "id": art.id, "path": str(art.path), "use": use}

