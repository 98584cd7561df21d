"""`digit-bench score`: a sweep row's images scored from outside give the row's numbers; ADM-style npz references."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from digit_bench.artifacts import Store
from digit_bench.cli import main
from digit_bench.config import load_sweep
from digit_bench.engine.dag import compute, run_dag

MICRO = Path(__file__).resolve().parent / "data" / "micro.yaml"
SETS = ["eval.local_train.steps=5", "data.num_test=60", "eval.num_reference=60"]  # the cheapest real protocol


@pytest.fixture(scope="module")
def row(tmp_path_factory):
    """The micro sweep's real-data row (the evaluate stage on real val images): its metrics and images file."""
    root = tmp_path_factory.mktemp("runs")
    cfg = load_sweep(MICRO, "smoke", SETS).runs[0].cfg
    dag = run_dag(cfg)
    store = Store(root)
    metrics = compute(store, dag["real_metrics"], log=lambda _: None)
    images = store.lookup(dag["real_metrics"].parents["images"].stage, dag["real_metrics"].parents["images"].id)
    return root, json.loads((metrics / "metrics.json").read_text()), images / "images.npz"


def score(root, tmp_path, *args) -> tuple[int, dict]:
    out = tmp_path / "row.csv"
    rc = main(["score", *args, "--config", str(MICRO), "--profile", "smoke", "--root", str(root), "--out", str(out),
               *[a for kv in SETS for a in ("--set", kv)]])
    return rc, (pd.read_csv(out).iloc[0].to_dict() if rc == 0 else {})


@pytest.mark.slow  # the `row` fixture computes the micro sweep's real-data row (~30 s)
def test_score_reproduces_a_sweep_row_exactly(row, tmp_path):
    root, metrics, images = row
    rc, ext = score(root, tmp_path, str(images), "--seed", "0", "--label", "real_again")
    assert rc == 0
    for col in ("fd_local", "is_local", "fd_local_ci_low", "fd_local_ci_high", "kid_local", "precision_local"):
        assert ext[col] == pytest.approx(metrics[col], rel=1e-12, abs=0), col
    assert ext["protocol_local"] == metrics["protocol_local"]
    assert ext["row_kind"] == "external" and not ext["protocol_differs"]
    assert json.loads(ext["provenance"])["input"] == str(images)


@pytest.mark.slow  # the `row` fixture computes the micro sweep's real-data row (~30 s)
def test_a_png_folder_scores_like_its_npz(row, tmp_path):
    from PIL import Image

    root, metrics, images = row
    folder = tmp_path / "pngs"
    folder.mkdir()
    with np.load(images) as npz:
        for i, img in enumerate(npz["images"]):
            Image.fromarray(img).save(folder / f"{i:05d}.png")
    rc, ext = score(root, tmp_path, str(folder), "--seed", "0")
    assert rc == 0 and ext["fd_local"] == pytest.approx(metrics["fd_local"], rel=1e-12)


@pytest.mark.slow  # the `row` fixture computes the micro sweep's real-data row (~30 s)
def test_an_adm_style_npz_reference_gives_fd_and_is_and_says_the_protocol_differs(row, tmp_path):
    root, metrics, images = row
    stats = tmp_path / "ref_stats.npz"
    rc, _ = score(root, tmp_path, str(images), "--seed", "0", "--export-reference", str(stats))
    assert rc == 0 and {"mu", "sigma", "extractor", "protocol"} <= set(np.load(stats).files)
    rc, ext = score(root, tmp_path, str(images), "--seed", "0", "--reference", str(stats))
    assert rc == 0
    assert ext["fd_local"] == pytest.approx(metrics["fd_local"], rel=1e-6, abs=1e-9)
    assert ext["is_local"] == pytest.approx(metrics["is_local"], rel=1e-12)
    assert "kid_local" not in ext and "precision_local" not in ext  # mu/sigma only: no KID, no PRC
    assert ext["protocol_differs"] and "ADM-style" in ext["protocol_note"]
    assert "mu/sigma only" in ext["protocol_local"] and f"npz:{stats.resolve()}" in ext["protocol_local"]


@pytest.mark.slow  # the `row` fixture computes the micro sweep's real-data row (~30 s)
def test_a_bare_adm_npz_is_read_as_inception_statistics(row, tmp_path, capsys):
    root, _, images = row
    adm = tmp_path / "VIRTUAL_imagenet256_labeled.npz"
    np.savez(adm, mu=np.zeros(2048), sigma=np.eye(2048))  # the keys of ADM's reference batches
    rc, _ = score(root, tmp_path, str(images), "--reference", str(adm), "--extractor", "local")
    assert rc == 2
    assert "reference was made with inception" in capsys.readouterr().err


def test_unreadable_inputs_are_one_line_errors(tmp_path, capsys):
    np.savez(tmp_path / "x.npz", samples=np.zeros((2, 8, 8, 3), np.uint8))
    assert main(["score", str(tmp_path / "x.npz"), "--profile", "smoke", "--root", str(tmp_path)]) == 2
    assert "no 'images' or 'arr_0'" in capsys.readouterr().err
    assert main(["score", str(tmp_path / "none"), "--profile", "smoke", "--root", str(tmp_path)]) == 2
    assert "no images" in capsys.readouterr().err

