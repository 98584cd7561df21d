"""Released DiGIT artefacts: a fairseq stage-1 checkpoint loads into our GPT with the same logits as fairseq's
forward pass (written out below), and imported centroids drive the pipeline."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from digit_bench.artifacts import Store
from digit_bench.cli import main
from digit_bench.errors import UserError
from digit_bench.released import gpt_from_fairseq, import_gpt, load_fairseq, read_centroids, sinusoidal_positions

ABL = Path(__file__).resolve().parents[1] / "ablations"
NSPECIAL, EOS = 5, 2  # <s> <pad> </s> <unk> <n>, as the release's Dictionary(extra_special_symbols=["<n>"])


def fairseq_state(K=16, d=32, n_layer=2, ffn=64, classes=0, max_positions=64, learned=True, pre_ln=False, seed=0):
    """A random state dict with the key names and shapes of the release's `stlm` model (fairseq TransformerDecoder)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g) * 0.2  # noqa: E731
    n_dict = K + NSPECIAL
    s = {"decoder.version": torch.tensor([3.0]), "centroids": r(24, K), "centroid_norm": r(1, K),
         "decoder.embed_tokens.weight": r(n_dict + classes, d), "decoder.output_projection.weight": r(n_dict, d)}
    if learned:
        s["decoder.embed_positions.weight"] = r(max_positions + 2, d)
    if pre_ln:
        s["decoder.layer_norm.weight"], s["decoder.layer_norm.bias"] = 1 + r(d), r(d)
    for i in range(n_layer):
        p = f"decoder.layers.{i}."
        for x in "qkv":
            s[f"{p}self_attn.{x}_proj.weight"], s[f"{p}self_attn.{x}_proj.bias"] = r(d, d), r(d)
        s[f"{p}self_attn.out_proj.weight"], s[f"{p}self_attn.out_proj.bias"] = r(d, d), r(d)
        for ln in ("self_attn_layer_norm", "final_layer_norm"):
            s[f"{p}{ln}.weight"], s[f"{p}{ln}.bias"] = 1 + r(d), r(d)
        s[f"{p}fc1.weight"], s[f"{p}fc1.bias"] = r(ffn, d), r(ffn)
        s[f"{p}fc2.weight"], s[f"{p}fc2.bias"] = r(d, ffn), r(d)
    return s


def fairseq_forward(s: dict, src: torch.Tensor, n_head: int) -> torch.Tensor:
    """fairseq TransformerDecoder (no encoder attention, eval mode): dictionary ids (B, L) -> (B, L, len(dict))."""
    emb = s["decoder.embed_tokens.weight"]
    B, L = src.shape
    d = emb.shape[1]
    hd = d // n_head
    pos_table = s.get("decoder.embed_positions.weight")
    if pos_table is None:
        pos_table = sinusoidal_positions(L + 2, d)
    x = math.sqrt(d) * emb[src] + pos_table[torch.arange(L) + 2]  # (B, L, d): positions from padding_idx + 1
    pre_ln = "decoder.layer_norm.weight" in s
    n_layer = len({k.split(".")[2] for k in s if k.startswith("decoder.layers.")})
    mask = torch.full((L, L), float("-inf")).triu(1)  # (L, L) future mask

    def ln(h, name):
        return F.layer_norm(h, (d,), s[f"{name}.weight"], s[f"{name}.bias"], eps=1e-5)

    for i in range(n_layer):
        p = f"decoder.layers.{i}."
        h = ln(x, p + "self_attn_layer_norm") if pre_ln else x
        q, k, v = (F.linear(h, s[f"{p}self_attn.{n}_proj.weight"], s[f"{p}self_attn.{n}_proj.bias"]) for n in "qkv")
        q = q * hd ** -0.5
        q, k, v = (t.view(B, L, n_head, hd).transpose(1, 2) for t in (q, k, v))  # (B, H, L, hd)
        att = torch.softmax(q @ k.transpose(-1, -2) + mask, dim=-1) @ v  # (B, H, L, hd)
        att = F.linear(att.transpose(1, 2).reshape(B, L, d), s[f"{p}self_attn.out_proj.weight"],
                       s[f"{p}self_attn.out_proj.bias"])
        x = x + att
        x = x if pre_ln else ln(x, p + "self_attn_layer_norm")
        h = ln(x, p + "final_layer_norm") if pre_ln else x
        h = F.gelu(F.linear(h, s[f"{p}fc1.weight"], s[f"{p}fc1.bias"]))  # (B, L, ffn)
        h = F.linear(h, s[f"{p}fc2.weight"], s[f"{p}fc2.bias"])  # (B, L, d)
        x = x + h
        x = x if pre_ln else ln(x, p + "final_layer_norm")
    if pre_ln:
        x = ln(x, "decoder.layer_norm")
    return F.linear(x, s["decoder.output_projection.weight"])  # (B, L, len(dict))


@pytest.mark.parametrize("variant", [dict(), dict(classes=1000), dict(learned=False), dict(pre_ln=True)],
                         ids=["release", "classcond", "sinusoidal", "pre_ln"])
def test_fairseq_checkpoint_gives_the_logits_of_their_forward_pass(tmp_path, variant):
    K, T, heads = 16, 12, 4
    state = fairseq_state(K=K, **variant)
    path = tmp_path / "checkpoint_last.pt"
    torch.save({"model": state, "cfg": {"model": {"decoder_attention_heads": heads, "_name": "stlm",
                                                  "decoder_normalize_before": variant.get("pre_ln", False)}},
                "args": None}, path)
    model = gpt_from_fairseq(*load_fairseq(path), seq_len=T).eval()
    assert model.cfg.post_ln != variant.get("pre_ln", False) and model.cfg.vocab_size == K
    idx = torch.randint(0, K, (3, T), generator=torch.Generator().manual_seed(1))  # (B, T) cluster ids
    labels = torch.tensor([0, 7, 999]) if variant.get("classes") else None
    start = labels + K + NSPECIAL if labels is not None else torch.full((3,), EOS)  # their class / </s> token
    src = torch.cat([start[:, None], idx[:, :-1] + NSPECIAL], dim=1)  # (B, T): [</s> | class, t1 .. t_{T-1}]
    theirs = fairseq_forward(state, src, heads)[:, :, NSPECIAL:NSPECIAL + K]  # (B, T, K)
    with torch.no_grad():
        ours = model(idx, labels)  # (B, T, K)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_missing_heads_and_pickled_configs_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="decoder_attention_heads"):
        gpt_from_fairseq(fairseq_state())
    path = tmp_path / "ckpt.pt"
    torch.save({"model": fairseq_state(), "args": object.__new__(json.JSONDecoder)}, path)  # a pickled object
    with pytest.raises(UserError, match="--trust-pickle"):
        load_fairseq(path)


def test_an_older_fairseq_checkpoint_with_an_argparse_namespace_loads_without_trusting_pickle(tmp_path):
    import argparse

    path = tmp_path / "ckpt.pt"
    torch.save({"model": fairseq_state(), "cfg": None,
                "args": argparse.Namespace(decoder_attention_heads=4, decoder_normalize_before=False)}, path)
    state, model_cfg = load_fairseq(path)
    assert model_cfg["decoder_attention_heads"] == 4 and set(state) == set(fairseq_state())


def test_a_payload_in_a_fairseq_checkpoint_never_runs_without_trust_pickle(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "ckpt.pt"
    torch.save({"model": fairseq_state(), "args": Payload()}, path)
    with pytest.raises(UserError, match="--trust-pickle"):
        load_fairseq(path)
    assert not marker.exists()


def test_import_gpt_writes_an_artifact_the_sample_stage_reads(tmp_path):
    from digit_bench.loaders import load_gpt
    from digit_bench.stages.sample import checkpoint_to_samples

    path = tmp_path / "stage1.pt"
    torch.save({"model": fairseq_state(K=16), "cfg": {"model": {"decoder_attention_heads": 4}}}, path)
    art = import_gpt(Store(tmp_path / "runs"), path, seq_len=16)
    assert art.manifest["vocab_size"] == 16 and art.manifest["grid"] == [4, 4]
    tokens, _ = checkpoint_to_samples(load_gpt(art), 4, {"batch_size": 4, "seed": 0, "top_k": 5, "top_p": 1.0,
                                                        "temperature": 1.0, "cfg_scale": 1.0}, 0)
    assert tokens.shape == (4, 16) and tokens.max() < 16
    assert import_gpt(Store(tmp_path / "runs"), path, seq_len=16).id == art.id  # content-addressed: same file, same id


def test_centroids_read_from_npy_and_from_the_stage1_checkpoint(tmp_path):
    state = fairseq_state(K=16)
    torch.save({"model": state}, tmp_path / "stage1.pt")
    np.save(tmp_path / "km.npy", state["centroids"].numpy().T)
    np.testing.assert_array_equal(read_centroids(tmp_path / "km.npy"), read_centroids(tmp_path / "stage1.pt"))


def imported_run(tmp_path, dim: int, stage: str) -> tuple[int, dict]:
    """`import centroids` of a (64, dim) file, then `run <stage>` of the micro sweep's DiGIT run from it."""
    root = tmp_path / "runs"
    np.save(tmp_path / "km_test.npy", np.random.default_rng(0).normal(size=(64, dim)).astype(np.float32))
    assert main(["import", "centroids", str(tmp_path / "km_test.npy"), "--root", str(root)]) == 0
    aid = Store(root).root.joinpath("imported").glob("km_test-*")
    aid = next(p.name for p in aid if p.is_dir())
    sweep = tmp_path / "from_release.yaml"
    micro = (Path(__file__).parent / "data" / "micro.yaml").read_text()
    sweep.write_text(micro.replace("include: ../../ablations/_base.yaml", f"include: {ABL / '_base.yaml'}")
                     .replace("  - generator: [vqgan_ar, ldm]\n", "").replace("name: micro", "name: from_release"))
    rc = main(["run", stage, str(sweep), "--profile", "smoke", "--root", str(root),
               "--set", f"tokenizer.centroids={aid}", "--set", "tokenizer.k=64", "--set", "backbone.name=random_vit"])
    return rc, {"id": aid, "root": root}


def test_a_run_tokenizes_with_imported_centroids(tmp_path, capsys):
    rc, info = imported_run(tmp_path, 96, "tokens")  # the smoke random_vit is 96 wide
    assert rc == 0
    tokens = next((info["root"] / "tokenize").glob("*/manifest.json"))
    manifest = json.loads(tokens.read_text())
    assert manifest["parents"]["centroids"] == info["id"] and manifest["vocab_size"] == 64


def test_centroids_of_another_width_are_a_user_error(tmp_path, capsys):
    rc, _ = imported_run(tmp_path, 50, "tokens")
    assert rc == 2 and "50-d but backbone random_vit gives 96-d" in capsys.readouterr().err


@pytest.mark.slow  # the whole micro DiGIT pipeline (~1 min)
def test_the_pipeline_runs_to_metrics_from_imported_centroids(tmp_path):
    rc, info = imported_run(tmp_path, 96, "metrics")
    assert rc == 0
    metrics = next((info["root"] / "evaluate").glob("digit-*/metrics.json"))
    assert np.isfinite(json.loads(metrics.read_text())["fd_local"])


def test_runs_name_imported_artifacts_by_id_and_train_nothing_in_their_place(tmp_path):
    from digit_bench.config import Override, apply_overrides, load_sweep
    from digit_bench.engine.dag import ancestors, compute, run_dag

    cfg = load_sweep(ABL / "backbones.yaml", "smoke", ["backbone.name=random_vit"]).runs[0].cfg
    cfg = apply_overrides(cfg, [Override("gpt.checkpoint", "stage1-0123456789", "test"),
                                Override("tokenizer.centroids", "km_8k-abcdef0123", "test")])
    dag = run_dag(cfg)
    assert dag["gpt"].id == "stage1-0123456789" and dag["centroids"].id == "km_8k-abcdef0123"
    stages = {n.stage for n in ancestors([dag["metrics"]])}
    assert "train" not in stages and "cluster" not in stages
    with pytest.raises(UserError, match="digit-bench import centroids"):  # not imported under this root
        compute(Store(tmp_path), dag["centroids"], log=lambda _: None)
