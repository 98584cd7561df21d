"""digit_bench.report on synthetic rows: 2 backbones × 2 codebook sizes × 2 seeds, a real-data ceiling, a failure."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from digit_bench import report
from digit_bench.errors import UserError

PUBLISHED = Path(__file__).resolve().parents[1] / "baselines" / "published.csv"
CHROMIUM = Path("/usr/bin/chromium")
SWEPT = ["backbone.name", "tokenizer.k", "seed"]
SNRS = (30, 20, 10)
EXPECTED_FIGURES = {
    "fig_fd_local_vs_tokenizer.k.png", "fig_fd_local_vs_params.png", "fig_probe_top1_vs_layer.png",
    "fig_token_change_vs_snr.png", "fig_fd_local_vs_token_change_snr20.png", "fig_fd_local_vs_cost.total.wall_s.png",
}


def _run_row(backbone: str, k: int, seed: int, rng: np.random.Generator) -> dict:
    """One flat metrics.json of a finished run, with values that depend on the cell plus seed noise."""
    fd = {"dino_tiny": 40.0, "mae_tiny": 60.0}[backbone] - 5 * np.log2(k / 16) + rng.normal(0, 1)
    row = {
        "run_id": f"{backbone}-k{k}-s{seed}", "sweep": "kmeans_k", "profile": "tiny", "seed": seed,
        "generator": "digit", "row_kind": "run", "backbone.name": backbone, "tokenizer.k": k,
        "fd_local": fd, "fd_local_ci_low": fd - 2, "fd_local_ci_high": fd + 2, "is_local": 100 / fd,
        "precision_local": 0.5, "recall_local": 0.4, "probe_top1": 0.6 + rng.normal(0, 0.01), "probe_layer": 2,
        "probe_curve": [0.3, 0.5, 0.6 + rng.normal(0, 0.01)], "codebook_usage": 0.9, "codebook_perplexity": k * 0.8,
        "circular": backbone == "dino_tiny", "protocol": "fd_local: tiny classifier, 1000 samples",
        "cost.train.wall_s": 10.0 * k, "cost.total.wall_s": 12.0 * k + seed, "params": 1e5 + 64 * k, "flops": 1e9,
    }
    for snr in SNRS:
        row[f"token_change_snr{snr}"] = 0.1 + 0.01 * (30 - snr) + (0.1 if backbone == "mae_tiny" else 0)
        row[f"cos_sim_snr{snr}"] = 1 - row[f"token_change_snr{snr}"]
    return row


def _rows() -> list[dict]:
    rng = np.random.default_rng(0)
    rows = [_run_row(b, k, s, rng) for b in ("dino_tiny", "mae_tiny") for k in (16, 64) for s in (0, 1)]
    ceiling = {"run_id": "ceiling-val", "sweep": "kmeans_k", "profile": "tiny", "seed": 0, "generator": "digit",
               "row_kind": "ceiling", "fd_local": 1.5, "is_local": 90.0, "protocol": "fd_local: val vs test"}
    return rows + [ceiling]


FAILED = [{"run_id": "mae_tiny-k256-s0", "stage": "train_gpt",
           "error": "Traceback (most recent call last):\n  ...\nRuntimeError: CUDA out of memory | step 12"}]


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("report")
    return report.write_report(_rows(), out, sweep="kmeans_k", profile="tiny", swept_keys=SWEPT, failed=FAILED,
                               published_csv=PUBLISHED)


def _md_rows(text: str, section: str) -> list[dict]:
    """Parse the markdown table under `## section` into dicts keyed by header."""
    block = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in block.splitlines() if line.startswith("| ")]
    split = [[c.strip() for c in line.strip("| ").split(" | ")] for line in lines]
    return [dict(zip(split[0], cells)) for cells in split[2:]]


def test_every_file_exists(written):
    out = written["results_csv"].parent
    for name in ("results.csv", "results.parquet", "table.md", "table.tex", "comparison.md", "failed.md",
                 "index.html"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert {p.name for p in written["figures"]} == EXPECTED_FIGURES
    assert written["n_runs"] == 8 and written["n_failed"] == 1


def test_csv_is_tidy_with_expected_columns(written):
    df = pd.read_csv(written["results_csv"])
    assert len(df) == 9 and df["run_id"].is_unique
    assert list(df.columns[:8]) == ["run_id", "sweep", "profile", "row_kind", "generator", "seed", "backbone.name",
                                    "tokenizer.k"]
    for col in ("fd_local", "fd_local_ci_low", "probe_curve", "circular", "protocol", "cost.train.wall_s",
                "token_change_snr20", "cos_sim_snr10", "params", "flops"):
        assert col in df, col
    assert json.loads(df.loc[0, "probe_curve"])[:2] == [0.3, 0.5]
    parquet = pd.read_parquet(written["results_parquet"])
    pd.testing.assert_frame_equal(parquet[["run_id", "fd_local"]], df[["run_id", "fd_local"]])


def test_metric_columns_are_discovered_in_display_order():
    df = pd.DataFrame(_rows())
    metrics = report.metric_columns(df, ["backbone.name", "tokenizer.k"])
    assert metrics[:3] == ["fd_local", "is_local", "precision_local"]
    assert "seed" not in metrics and "circular" not in metrics and "fd_local_ci_low" not in metrics
    assert metrics.index("token_change_snr10") < metrics.index("token_change_snr20") < metrics.index("cos_sim_snr10")
    assert metrics[-2:] == ["cost.total.wall_s", "cost.train.wall_s"]


@pytest.mark.parametrize("name, expected", [("fid", False), ("fd_local", False), ("is_local", True),
                                            ("token_change_snr20", False), ("cos_sim_snr0.01", True),
                                            ("cost.total.wall_s", False), ("probe_top1", True),
                                            ("probe_layer", None), ("tokenizer.k", None), ("params", None)])
def test_higher_is_better(name, expected):
    assert report.higher_is_better(name) is expected


def test_mean_and_std_over_seeds(written):
    df = pd.read_csv(written["results_csv"])
    cell = df[(df["backbone.name"] == "mae_tiny") & (df["tokenizer.k"] == 64)]["fd_local"].to_numpy()
    mean, std = cell.mean(), cell.std(ddof=1)
    keys = ["backbone.name", "tokenizer.k"]
    agg = report.aggregate(df, keys, ["fd_local"]).set_index(keys)
    assert agg.loc[("mae_tiny", 64), "fd_local_mean"] == pytest.approx(mean)
    assert agg.loc[("mae_tiny", 64), "fd_local_std"] == pytest.approx(std)
    assert agg.loc[("mae_tiny", 64), "n"] == 2
    rows = _md_rows(written["table_md"].read_text(), "runs")
    md = next(r for r in rows if r["backbone.name"] == "mae_tiny" and r["tokenizer.k"] == "64")
    assert md["fd_local ↓"].strip("*") == f"{mean:.4g} ± {std:.2g}"
    assert md["n"] == "2" and md["circular"] == ""


def test_bold_marks_the_best_run_cell_only(written):
    table = written["table_md"].read_text()
    runs = _md_rows(table, "runs")
    bold_fd = [r for r in runs if r["fd_local ↓"].startswith("**")]
    assert [(r["backbone.name"], r["tokenizer.k"]) for r in bold_fd] == [("dino_tiny", "64")]  # lowest FD
    bold_is = [r for r in runs if r["is_local ↑"].startswith("**")]
    assert [(r["backbone.name"], r["tokenizer.k"]) for r in bold_is] == [("dino_tiny", "64")]  # highest IS
    assert not any(v.startswith("**") for r in runs for v in (r["n"], r["tokenizer.k"]))
    assert not any(r["precision_local ↑"].startswith("**") for r in runs)  # equal in every cell: no best
    ceiling = _md_rows(table, "real-data ceilings")
    assert len(ceiling) == 1 and ceiling[0]["fd_local ↓"] == "1.5"  # better than every run, yet not bold
    tex = written["table_tex"].read_text()
    assert r"fd\_local $\downarrow$" in tex and r"\bfseries" in tex and "dino\\_tiny" in tex


def test_comparison_separates_measured_and_published(written):
    text = written["comparison_md"].read_text()
    titles = re.findall(r"^## (.+)$", text, flags=re.M)
    assert titles == ["Measured here (kmeans_k/tiny): runs", "Measured here (kmeans_k/tiny): real-data ceilings",
                      "Published: LDM, VQGAN-AR and DiGIT (DiGIT paper Tables 2–4)",
                      "Published: token stability (DiGIT paper Table 1)"]
    measured = _md_rows(text, titles[0])
    assert "cost.total.wall_s ↓" in measured[0] and "codebook_usage ↑" not in measured[0]
    published = _md_rows(text, titles[2])
    methods = {r["method"] for r in published}
    assert {"LDM", "LDM-4", "VQGAN", "DiGIT (+VQGAN)", "DiGIT (+MaskGIT)", "VQ only"} <= methods
    assert not methods & {"BigGAN", "MAGE", "VAR", "iGPT-L"}
    assert all(r["published"] == "True" for r in published)
    assert {"39.1", "24.38", "4.59", "9.10"} & {r["fid ↓"] for r in published} == {"39.1", "24.38", "4.59"}
    assert len(_md_rows(text, titles[3])) == 16


def test_failed_runs_are_listed(written):
    rows = _md_rows(written["failed_md"].read_text(), "Failed runs")
    assert rows[0]["run_id"] == "mae_tiny-k256-s0" and rows[0]["stage"] == "train_gpt"
    assert rows[0]["error"].endswith(r"RuntimeError: CUDA out of memory \| step 12")


def test_figures_are_pngs_and_regenerate_from_the_csv_alone(written, tmp_path):
    for fig in written["figures"]:
        assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", fig
    csv = tmp_path / "committed" / "results.csv"
    csv.parent.mkdir()
    shutil.copy(written["results_csv"], csv)
    (tmp_path / "figs").mkdir()
    (tmp_path / "figs" / "fig_stale.png").write_bytes(b"old")
    regenerated = report.figures_from_csv(csv, tmp_path / "figs")
    assert [p.name for p in regenerated] == [p.name for p in written["figures"]]
    assert {p.name for p in (tmp_path / "figs").iterdir()} == EXPECTED_FIGURES


def test_figures_need_more_than_one_value(tmp_path):
    rows = [r for r in _rows() if r.get("tokenizer.k") in (None, 16)]
    for r in rows:
        r.pop("probe_curve", None)
    out = report.write_report(rows, tmp_path, sweep="s", profile="tiny", swept_keys=SWEPT, failed=[],
                              published_csv=PUBLISHED)
    names = {p.name for p in out["figures"]}
    assert "fig_fd_local_vs_tokenizer.k.png" not in names and "fig_probe_top1_vs_layer.png" not in names
    assert "fig_token_change_vs_snr.png" in names
    assert "No run failed." in out["failed_md"].read_text()


def test_report_from_dir_and_cli(tmp_path, capsys):
    rows_dir = tmp_path / "runs" / "runs_index" / "kmeans_k" / "tiny"
    rows_dir.mkdir(parents=True)
    for row in _rows() + FAILED:
        (rows_dir / f"{row['run_id']}.json").write_text(json.dumps(row))
    out = tmp_path / "results"
    assert report.main(["kmeans_k", "--root", str(tmp_path / "runs"), "--out", str(out),
                        "--published", str(PUBLISHED)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_runs"] == 8 and summary["n_failed"] == 1
    assert len(pd.read_csv(out / "results.csv")) == 9
    assert "mae_tiny-k256-s0" in (out / "failed.md").read_text()


def test_user_errors(tmp_path):
    with pytest.raises(UserError, match="no run rows"):
        report.report_from_dir(tmp_path, tmp_path / "out", "s", "tiny", PUBLISHED)
    with pytest.raises(UserError, match="tokenizer.layer"):
        report.write_report(_rows(), tmp_path, sweep="s", profile="tiny", swept_keys=["tokenizer.layer"], failed=[],
                            published_csv=PUBLISHED)
    with pytest.raises(UserError, match="no finished run"):
        report.write_report([], tmp_path, sweep="s", profile="tiny", swept_keys=SWEPT, failed=FAILED,
                            published_csv=PUBLISHED)
    assert "train_gpt" in (tmp_path / "failed.md").read_text()


def test_published_csv_holds_every_paper_row():
    df = pd.read_csv(PUBLISHED, dtype=str)
    assert list(df.columns) == ["source", "table", "task", "type", "method", "params_m", "epochs", "fid", "is",
                                "probe_top1", "acc_ol", "token_change", "cos_sim", "snr_db", "notes", "published"]
    assert df["table"].value_counts().to_dict() == {"Table 4": 22, "Table 1": 16, "Table 3": 12, "Table 2": 9,
                                                    "Fig. 3a": 4, "Fig. 4a": 4, "Fig. 4b": 2, "Fig. 6": 2}
    assert set(df["published"]) == {"True"}
    assert set(df["task"]) == {"uncond", "cond", "probe", "tokenizer_ablation", "stability", "prefix_length",
                               "sampling"}
    figures = df[df["table"].isin(["Fig. 4b", "Fig. 6"])]  # what the figures show; their values were not recovered
    assert figures[["fid", "is"]].isna().all().all() and figures["notes"].str.contains("not recovered").all()
    row = df[(df["table"] == "Table 1") & (df["method"] == "Disc Token") & (df["snr_db"] == "20")].iloc[0]
    assert (row["token_change"], row["cos_sim"]) == ("0.260", "0.940")
    assert df[(df["table"] == "Table 3") & (df["method"] == "MAGE")]["fid"].tolist() == ["11.1", "9.10"]


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} (headless Chromium) is not installed")
def test_index_html_renders_and_every_image_loads(written, tmp_path):
    index = written["index_html"]
    dom = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom", index.as_uri()],
        capture_output=True, text=True, timeout=120, check=True).stdout
    total = re.search(r'data-images-total="(\d+)"', dom)
    loaded = re.search(r'data-images-loaded="(\d+)"', dom)
    assert total and loaded, dom[:500]
    assert int(total.group(1)) == int(loaded.group(1)) == len(EXPECTED_FIGURES)
    assert dom.count("<table") == 7  # results: runs + ceilings; comparison: 2 measured + 2 published; failed
    assert "mae_tiny-k256-s0" in dom and "dino_tiny" in dom
