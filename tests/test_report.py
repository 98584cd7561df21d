"""digit_bench.report on synthetic rows (2 backbones × 2 codebook sizes × 3 seeds, a real-data ceiling, a failure),
on a small artifact store holding real sample grids, and on a committed sweep output (results/backbones/smoke)."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from digit_bench import report
from digit_bench.artifacts import Store
from digit_bench.cli import main as cli_main
from digit_bench.errors import UserError
from digit_bench.eval.grids import save_grid
from digit_bench.metric_registry import glossary_markdown

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "results" / "backbones" / "smoke"
CHROMIUM = Path("/usr/bin/chromium")
SWEPT = ["backbone.name", "tokenizer.k", "seed"]
SNRS = (30, 20, 10)
SEEDS = (0, 1, 2)
EXPECTED_FIGURES = {
    "fig_fd_local_vs_tokenizer.k.png", "fig_fd_local_vs_params.png", "fig_probe_top1_vs_layer.png",
    "fig_token_change_vs_snr.png", "fig_fd_local_vs_token_change_snr20.png", "fig_fd_local_vs_cost.total.wall_s.png",
}


def _run_row(backbone: str, k: int, seed: int, rng: np.random.Generator) -> dict:
    """One flat metrics.json of a finished run, with values that depend on the cell plus seed noise."""
    fd = {"dino_tiny": 40.0, "mae_tiny": 60.0}[backbone] - 5 * np.log2(k / 16) + rng.normal(0, 1)
    run_id = f"{backbone}-k{k}-s{seed}"
    row = {
        "run_id": run_id, "sweep": "kmeans_k", "profile": "tiny", "seed": seed,
        "generator": "digit", "row_kind": "run", "backbone.name": backbone, "tokenizer.k": k,
        "fd_local": fd, "fd_local_ci_low": fd - 2, "fd_local_ci_high": fd + 2, "is_local": 100 / fd,
        "precision_local": 0.5, "recall_local": 0.4, "probe_top1": 60 + rng.normal(0, 1), "probe_layer": seed % 2,
        "probe_curve": [30, 50, 60 + rng.normal(0, 1)], "codebook_usage": 0.9, "codebook_perplexity": k * 0.8,
        "circular": backbone == "dino_tiny", "num_samples": 1000,
        "protocol_local": "torch-fidelity 0.4.0 digit-bench-local[feat] sha256:abc | reference local-test (500 images) "
                          "| 1000 samples 32x32 | torch 2.4",
        "cost.train.wall_s": 10.0 * k, "cost.total.wall_s": 12.0 * k + seed, "params": 1e5 + 64 * k, "flops": 1e9,
        "artifacts.metrics": f"digit-{run_id}-local-0", "artifacts.tokenizer_metrics": f"{backbone}-k{k}",
        "config": json.dumps({"data": {"name": "fashion_mnist", "image_size": 32}, "eval": {"bootstrap": 20}}),
    }
    for snr in SNRS:
        row[f"token_change_snr{snr}"] = 0.1 + 0.01 * (30 - snr) + (0.1 if backbone == "mae_tiny" else 0)
        row[f"cos_sim_snr{snr}"] = 1 - row[f"token_change_snr{snr}"]
    return row


def _rows() -> list[dict]:
    rng = np.random.default_rng(0)
    rows = [_run_row(b, k, s, rng) for b in ("dino_tiny", "mae_tiny") for k in (16, 64) for s in SEEDS]
    ceiling = {"run_id": "real_val-local-0", "sweep": "kmeans_k", "profile": "tiny", "seed": 0,
               "generator": "fashion_mnist-val", "row_kind": "ceiling", "source": "real", "fd_local": 1.5,
               "fd_local_ci_low": 1.0, "fd_local_ci_high": 2.5, "is_local": 90.0}
    return rows + [ceiling]


FAILED = [{"run_id": "mae_tiny-k256-s0", "stage": "train_gpt",
           "error": "Traceback (most recent call last):\n  ...\nRuntimeError: CUDA out of memory | step 12"}]


def _store(root: Path, rows: list[dict]) -> Store:
    """A real artifact store holding, per row, an evaluate artifact whose `images` parent has a grid.png."""
    store = Store(root)
    rng = np.random.default_rng(1)
    for row in rows:
        eval_id = row.get("artifacts.metrics") or row["run_id"]
        image_id = f"img-{eval_id}"
        for stage, aid, manifest in (("evaluate", eval_id, {"parents": {"images": image_id}, "git_commit": "abc123",
                                                           "host": "node1", "created": "2026-01-01T10:00:00"}),
                                     ("render", image_id, {"parents": {}})):
            path = store.path(stage, aid)
            path.mkdir(parents=True)
            (path / "manifest.json").write_text(json.dumps({"stage": stage, "id": aid, **manifest}))
            (path / "DONE").write_text(aid)
        grey = rng.integers(0, 256, size=(64, 32, 32, 1), dtype=np.uint8)  # (64, H, W, 1)
        save_grid(np.repeat(grey, 3, axis=-1), store.path("render", image_id) / "grid.png")
    return store


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("report")
    rows = _rows()
    out = tmp / "results" / "kmeans_k" / "tiny"
    return report.write_report(rows, out, sweep="kmeans_k", profile="tiny", swept_keys=SWEPT, failed=FAILED,
                               store=_store(tmp / "runs", rows))


def _md_rows(text: str, section: str) -> list[dict]:
    """Parse the markdown table under `## section` into dicts keyed by header."""
    block = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in block.splitlines() if line.startswith("| ")]
    split = [[c.strip() for c in line.strip("| ").split(" | ")] for line in lines]
    return [dict(zip(split[0], cells)) for cells in split[2:]]


def test_every_file_exists(written):
    out = written["results_csv"].parent
    for name in ("results.csv", "results.parquet", "table.md", "table.tex", "comparison.md", "failed.md",
                 "failed.json", "index.html", "provenance.json", "report.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert {p.name for p in written["figures"]} == EXPECTED_FIGURES
    assert all(p.with_suffix(".pdf").read_bytes()[:4] == b"%PDF" for p in written["figures"])
    assert written["n_runs"] == 12 and written["n_failed"] == 1
    assert (out.parent.parent / "index.html").is_file()  # the landing page over every sweep/profile
    assert 'href="kmeans_k/tiny/index.html"' in (out.parent.parent / "index.html").read_text()


def test_samples_are_copied_and_runs_linked(written):
    out = written["results_csv"].parent
    assert {p.stem for p in (out / "samples").glob("*.png")} == {r["run_id"] for r in _rows()}
    page = written["index_html"].read_text()
    assert 'src="samples/real_val-local-0.png"' in page and 'src="samples/dino_tiny-k16-s0.png"' in page
    assert (out / "runs" / "dino_tiny-k16-s0" / "manifest.json").is_file()
    assert (out / "runs" / "dino_tiny-k16-s0" / "config.yaml").read_text().startswith("data:")
    assert 'href="runs/dino_tiny-k16-s0/config.yaml"' in page
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["runs_commits"] == ["abc123"] and prov["runs_hosts"] == ["node1"]


def test_csv_is_tidy_and_carries_the_protocol_card(written):
    df = pd.read_csv(written["results_csv"])
    assert len(df) == 13 and df["run_id"].is_unique
    assert list(df.columns[:8]) == ["run_id", "sweep", "profile", "row_kind", "generator", "seed", "backbone.name",
                                    "tokenizer.k"]
    assert df["protocol"].nunique() == 1
    card = df["protocol"].iloc[0]
    for part in ("extractor: torch-fidelity 0.4.0 digit-bench-local[feat] sha256:abc", "reference set: local-test",
                 "samples: 1000", "seeds: 0, 1, 2", "interval:", "percentile bootstrap of fd_local"):
        assert part in card, part
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


def test_main_table_shows_t_intervals_over_seeds_and_the_full_table_mean_and_std(written):
    df = pd.read_csv(written["results_csv"])
    cell = df[(df["backbone.name"] == "mae_tiny") & (df["tokenizer.k"] == 64)]["fd_local"].to_numpy()
    lo, hi = report.t_interval(cell)
    half = 4.302653 * cell.std(ddof=1) / np.sqrt(3)  # t(0.975, 2)
    assert (lo, hi) == pytest.approx((cell.mean() - half, cell.mean() + half))
    table = written["table_md"].read_text()
    main = next(r for r in _md_rows(table, "Main table") if r["label"] == "DiGIT · mae_tiny · K=64")
    assert main["fd_local ↓"].strip("*≈ ") == f"{cell.mean():.4g} [{lo:.3g}, {hi:.3g}]"
    assert main["n"] == "3" and main["circular"] == ""
    full = next(r for r in _md_rows(table, "Full table") if r["label"] == "DiGIT · mae_tiny · K=64")
    assert full["fd_local ↓"].strip("*≈ ") == f"{cell.mean():.4g} ± {cell.std(ddof=1):.2g}"
    assert full["probe_layer"] == "0, 1"  # a choice: its values, never averaged
    assert full["precision_local ↑"] == "0.5"  # the same in every seed: no "± 0"
    assert full["params"] == "104k"


def test_bold_only_when_the_best_is_separated_from_every_other_cell(written):
    runs = _md_rows(written["table_md"].read_text(), "Main table")
    by_label = {r["label"]: r for r in runs}
    assert by_label["DiGIT · dino_tiny · K=64"]["fd_local ↓"].startswith("**")  # 10 FD better, 3 seeds: separated
    assert sum(r["fd_local ↓"].startswith("**") for r in runs) == 1
    assert not any(r["precision_local ↑"].startswith("**") or "≈" in r["precision_local ↑"] for r in runs)
    assert not any("**" in r["params"] or "**" in r["cost.total.wall_s ↓"] for r in runs)  # sizes/costs unmarked
    ceilings = _md_rows(written["table_md"].read_text(), "Ceilings: real data and decoders")
    assert ceilings[0]["label"] == "real data (val)" and ceilings[0]["fd_local ↓"] == "1.5 [1, 2.5]"
    tex = written["table_tex"].read_text()
    assert r"fd\_local $\downarrow$" in tex and r"\textbf{" in tex and "dino\\_tiny" in tex


def _cell(values, low=None, high=None):
    return report.Cell(pd.Series(values, index=range(len(values)), dtype=float), low, high)


def test_significance_marks_ties_and_never_bolds_inside_the_noise():
    separated = [_cell([10.0, 10.5, 9.8]), _cell([20.0, 21.0, 19.5])]
    assert report.rank_marks(separated, higher=False)[0] == ["best", ""]
    noisy = [_cell([10.0, 14.0, 8.0]), _cell([11.0, 9.0, 13.5])]
    assert report.rank_marks(noisy, higher=False)[0] == ["tie", "tie"]
    single_overlap = [_cell([10.0], 8.0, 12.0), _cell([11.0], 9.0, 13.0), _cell([30.0], 28.0, 32.0)]
    marks, how = report.rank_marks(single_overlap, higher=False)
    assert marks == ["tie", "tie", ""] and how == "interval overlap"
    no_interval = [_cell([10.0]), _cell([11.0])]
    assert report.rank_marks(no_interval, higher=False)[0] == ["", ""]
    constant = [_cell([0.3, 0.3]), _cell([0.5, 0.5])]  # a seed-independent metric: its noise was never measured
    assert report.rank_marks(constant, higher=False)[0] == ["", ""]


def test_claims_get_a_verdict_from_the_data():
    rng = np.random.default_rng(0)
    rows = []
    for seed in SEEDS:
        for gen, fd, change in (("digit", 40.0, 0.2), ("vqgan_ar", 50.0, 0.4), ("ldm", 40.5, None)):
            rows.append({"run_id": f"{gen}-s{seed}", "generator": gen, "row_kind": "run", "seed": seed,
                         "backbone.name": "dino_tiny" if gen == "digit" else None,
                         "fd_local": fd + rng.normal(0, 0.5), "token_change_snr20": change})
    claims = report.claim_table(pd.DataFrame(rows), ["generator"]).text.set_index("claim")
    assert claims.loc["DiGIT beats the same GPT on VQGAN tokens", "verdict"] == "holds"
    assert claims.loc["DiGIT beats the latent diffusion model", "verdict"] == "within noise"
    assert claims.loc["Discriminative tokens are more stable than VQ tokens", "verdict"] == \
        "same direction, noise not measured"
    for r in rows:
        r["fd_local"] = 100 - r["fd_local"] if r["generator"] == "digit" else r["fd_local"]
    claims = report.claim_table(pd.DataFrame(rows), ["generator"]).text.set_index("claim")
    assert claims.loc["DiGIT beats the same GPT on VQGAN tokens", "verdict"] == "reversed"


def _paired(diffs) -> tuple[report.Cell, report.Cell]:
    a = pd.Series(30.0, index=range(len(diffs)))
    return report.Cell(a), report.Cell(a + np.asarray(diffs, dtype=float))


def _with_moments(n: int, mean: float, sd: float) -> np.ndarray:
    z = np.linspace(-1, 1, n)
    return mean + sd * (z - z.mean()) / z.std(ddof=1)


def test_seeds_to_separate_is_the_seed_count_at_which_the_paired_test_first_separates():
    two = _paired([2.2, 4.2])  # mean 3.2, sd 1.41: t(1) is too wide, t(3) is not
    assert report.differ(*two)[0] is False
    n = int(report.seeds_to_separate(*two))
    assert n == 4
    mean, sd = 3.2, float(np.std([2.2, 4.2], ddof=1))
    assert report.differ(*_paired(_with_moments(n, mean, sd)))[0] is True
    assert report.differ(*_paired(_with_moments(n - 1, mean, sd)))[0] is False
    assert report.seeds_to_separate(*_paired([-1.0, 1.0])) == f"> {report.SEPARATION_CAP}"  # mean 0: never
    assert report.seeds_to_separate(report.Cell(pd.Series([1.0])), report.Cell(pd.Series([2.0]))) == "–"


@pytest.mark.parametrize("names", [("dino_tiny", "moco_tiny", "mae_tiny", "random_vit"),
                                   ("dinov2_vitb14_reg4", "mocov3_vitb16", "mae_vitb16", "random_vit")])
def test_ssl_family_claims_take_the_best_discriminative_cell_in_every_profile(names):
    """The tiny and the paper backbone sweeps name their encoders differently; both get the Fig. 4a claim, with the
    best of the discriminative SSL family (DINO, MoCo, iBOT) against MAE."""
    rng = np.random.default_rng(0)
    fds = dict(zip(names, (45.0, 38.0, 50.0, 52.0)))
    rows = [{"run_id": f"{b}-s{s}", "generator": "digit", "row_kind": "run", "seed": s, "backbone.name": b,
             "fd_local": fd + rng.normal(0, 0.3)} for b, fd in fds.items() for s in SEEDS]
    claims = report.claim_table(pd.DataFrame(rows), ["generator", "backbone.name"]).text.set_index("claim")
    for claim in ("A discriminative SSL tokenizer beats a reconstructive one", "An SSL tokenizer beats an untrained one"):
        assert claims.loc[claim, "A"].startswith(f"DiGIT · {names[1]}:"), claims.loc[claim, "A"]  # MoCo's 38
        assert claims.loc[claim, "verdict"] == "holds"
    assert claims.loc["A discriminative SSL tokenizer beats a reconstructive one", "B"].startswith(f"DiGIT · {names[2]}")


def test_a_key_that_a_grid_group_leaves_unset_is_a_cell_of_its_own():
    """A decoder sweep whose DiGIT groups set different keys (stage-2 kind in one, the VQGAN's lr in another): the
    rows that leave a key unset (NaN) form their own cell, and no claim crashes or pools distinct settings."""
    rows = []
    for seed in SEEDS:
        for point, fd in (({"stage2.kind": "ar"}, 50.0), ({"stage2.kind": "maskgit"}, 46.0),
                          ({"vqgan.train.lr": 1e-3}, 30.0)):
            rows.append({"run_id": f"digit-{point}-s{seed}", "generator": "digit", "row_kind": "run", "seed": seed,
                         "backbone.name": "random_vit", **point, "fd_local": fd + seed * 0.1, "probe_top1": None})
        rows.append({"run_id": f"vq-s{seed}", "generator": "vqgan_ar", "row_kind": "run", "seed": seed,
                     "fd_local": 40.0 + seed * 0.2, "probe_top1": 60.0})
    runs = pd.DataFrame(rows)
    best = report._best_cell(runs[runs["generator"] == "digit"], "fd_local")
    assert len(best) == len(SEEDS) and best["stage2.kind"].isna().all() and (best["vqgan.train.lr"] == 1e-3).all()
    only_ar = runs[(runs["generator"] == "digit") & (runs["stage2.kind"] != "maskgit")]
    assert len(report._best_cell(only_ar, "fd_local")) == len(SEEDS)  # two cells, not one pooled cell
    claims = report.claim_table(runs, ["generator", "stage2.kind", "vqgan.train.lr"]).text.set_index("claim")
    assert claims.loc["DiGIT beats the same GPT on VQGAN tokens", "verdict"] == "holds"  # 30 vs 40
    assert "DiGIT's GPT learns better features than a GPT on VQ tokens" not in claims.index  # DiGIT has no probe


def test_comparison_has_verdicts_then_published_rows_and_the_card(written):
    text = written["comparison_md"].read_text()
    titles = re.findall(r"^## (.+)$", text, flags=re.M)
    assert titles == ["Ours vs paper", "Published: LDM, VQGAN-AR and DiGIT (DiGIT paper Tables 2–4)",
                      "Published: token stability (DiGIT paper Table 1)"]
    claims = _md_rows(text, titles[0])
    assert {c["claim"] for c in claims} == {"A discriminative SSL tokenizer beats a reconstructive one"}
    assert claims[0]["verdict"] == "holds"  # dino 30 vs mae 50
    published = _md_rows(text, titles[1])
    methods = {r["method"] for r in published}
    assert {"LDM", "LDM-4", "VQGAN", "DiGIT (+VQGAN)", "DiGIT (+MaskGIT)", "VQ only"} <= methods
    assert not methods & {"BigGAN", "MAGE", "VAR", "iGPT-L"}
    assert len(_md_rows(text, titles[2])) == 16
    assert "**Protocol card**" in text


def test_failed_runs_are_listed(written):
    text = written["failed_md"].read_text()
    rows = [line for line in text.splitlines() if line.startswith("| mae_tiny")]
    assert rows and "train_gpt" in rows[0] and rows[0].endswith(r"RuntimeError: CUDA out of memory \| step 12 |")
    assert json.loads((written["failed_md"].parent / "failed.json").read_text())[0]["stage"] == "train_gpt"


def test_figures_regenerate_from_the_csv_alone(written, tmp_path):
    csv = tmp_path / "committed" / "results.csv"
    csv.parent.mkdir()
    shutil.copy(written["results_csv"], csv)
    (tmp_path / "figs").mkdir()
    (tmp_path / "figs" / "fig_stale.png").write_bytes(b"old")
    regenerated = report.figures_from_csv(csv, tmp_path / "figs")
    assert [p.name for p in regenerated] == [p.name for p in written["figures"]]
    assert {p.name for p in (tmp_path / "figs").glob("*.png")} == EXPECTED_FIGURES


def test_figures_need_an_x_axis_that_varies(tmp_path):
    rows = [r for r in _rows() if r.get("tokenizer.k") in (None, 16)]
    for r in rows:
        r.pop("probe_curve", None)
    out = report.write_report(rows, tmp_path, sweep="s", profile="tiny", swept_keys=SWEPT, failed=[])
    names = {p.name for p in out["figures"]}
    assert "fig_fd_local_vs_tokenizer.k.png" not in names and "fig_probe_top1_vs_layer.png" not in names
    assert "fig_token_change_vs_snr.png" in names
    assert "No run failed." in out["failed_md"].read_text()
    same_tokenizer = [{**r, "artifacts.tokenizer_metrics": "one"} for r in rows]  # every cell: one tokenizer
    out = report.write_report(same_tokenizer, tmp_path, sweep="s", profile="tiny", swept_keys=SWEPT, failed=[])
    assert "fig_token_change_vs_snr.png" not in {p.name for p in out["figures"]}


def test_cli_takes_a_yaml_a_name_or_a_results_folder(tmp_path, capsys):
    rows_dir = tmp_path / "runs" / "sweeps" / "backbones" / "smoke"
    rows_dir.mkdir(parents=True)
    for row in _rows() + FAILED:
        (rows_dir / f"{row['run_id']}.json").write_text(json.dumps(row, default=str))
    results = tmp_path / "results"
    args = ["--root", str(tmp_path / "runs"), "--results", str(results)]
    assert cli_main(["report", str(REPO / "ablations" / "backbones.yaml"), "--profile", "smoke", *args]) == 0
    assert json.loads(capsys.readouterr().out)["report"] == [str(results / "backbones" / "smoke")]
    assert len(pd.read_csv(results / "backbones" / "smoke" / "results.csv")) == 13
    assert "mae_tiny-k256-s0" in (results / "backbones" / "smoke" / "failed.md").read_text()
    assert cli_main(["report", "backbones", "--profile", "smoke", *args]) == 0
    capsys.readouterr()
    assert cli_main(["report", str(results / "backbones" / "smoke"), "--out", str(tmp_path / "again"), "--readme"]) == 0
    snippet = capsys.readouterr().out
    assert snippet.startswith(f"#### {tmp_path / 'again'}") and "| DiGIT · dino_tiny · K=64 |" in snippet
    assert "**Protocol card**" in snippet and "Ours vs paper" not in snippet.split("**Protocol card**")[1]


def test_user_errors(tmp_path, capsys):
    with pytest.raises(UserError, match="no run rows"):
        report.report_from_dir(tmp_path, tmp_path / "out", "s", "tiny")
    with pytest.raises(UserError, match="tokenizer.layer"):
        report.write_report(_rows(), tmp_path, sweep="s", profile="tiny", swept_keys=["tokenizer.layer"], failed=[])
    with pytest.raises(UserError, match="no finished run"):
        report.write_report([], tmp_path, sweep="s", profile="tiny", swept_keys=SWEPT, failed=FAILED)
    assert "train_gpt" in (tmp_path / "failed.md").read_text()
    assert cli_main(["report", "nosuchsweep", "--root", str(tmp_path)]) == 2
    assert "run the sweep first" in capsys.readouterr().err


def test_published_csv_ships_inside_the_package():
    df = report.read_published()
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


def test_the_glossary_in_docs_is_generated_from_the_registry():
    assert (REPO / "docs" / "metrics.md").read_text() == glossary_markdown()


@pytest.fixture(scope="module")
def committed(tmp_path_factory) -> Path:
    """The committed smoke sweep output (a real sweep's rows, older columns included), re-rendered elsewhere."""
    out = tmp_path_factory.mktemp("committed") / "backbones" / "smoke"
    report.report_from_csv(COMMITTED, out)
    return out


def test_the_protocol_card_of_a_real_sweep_is_in_every_output(committed):
    source = pd.read_csv(COMMITTED / "results.csv")
    extractor = source["protocol_local"].dropna().iloc[0].split(" | ")[0]  # what the evaluate stage recorded
    reference = source["protocol_local"].dropna().iloc[0].split(" | ")[1].removeprefix("reference ")
    for name in ("table.md", "comparison.md", "index.html", "results.csv"):
        text = (committed / name).read_text()
        for expected in (extractor, reference, "200 generated images per run", "seeds", "interval"):
            assert expected in text, (name, expected)
    df = pd.read_csv(committed / "results.csv")
    assert df["protocol"].str.contains(extractor, regex=False).all()
    assert 'id="protocol-card"' in (committed / "index.html").read_text()


def _render(index: Path, tmp_path: Path, script: str) -> str:
    """The page's DOM after load and after `script` ran, dumped by headless Chromium."""
    page = index.read_text().replace("</body>", f"<script>window.addEventListener('load', () => {{{script}}});"
                                                  "</script></body>")
    probe = index.with_name("probe.html")
    probe.write_text(page)
    proc = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
         "--window-size=1400,900", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120, check=True)
    probe.unlink()
    console_errors = [line for line in proc.stderr.splitlines() if "CONSOLE" in line and "ERROR" in line.upper()]
    assert not console_errors, console_errors
    return proc.stdout


_VISIBLE = """
  const seen = (sel) => { const el = document.querySelector(sel); if (!el) return 0;
    const r = el.getBoundingClientRect(); return r.width > 0 && r.height > 0 ? 1 : 0; };
  document.body.dataset.mainTable = seen("#main-table");
  document.body.dataset.card = seen("#protocol-card");
  document.body.dataset.grid = seen("#sample-grids img");
  const th = Array.from(document.querySelectorAll("#main-table thead th")).find((h) => h.textContent.startsWith("fd_"));
  th.click();
  document.body.dataset.sortedFirst = document.querySelector("#main-table tbody tr td").textContent;
  document.body.dataset.sticky = getComputedStyle(th).position;
"""


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} (headless Chromium) is not installed")
def test_the_page_renders_in_chromium_with_table_card_grids_and_no_console_error(written, tmp_path):
    dom = _render(written["index_html"], tmp_path, _VISIBLE)
    attrs = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', dom.split("<body", 1)[1].split(">", 1)[0]))
    assert attrs["main-table"] == attrs["card"] == attrs["grid"] == "1", attrs
    assert attrs["images-total"] == attrs["images-loaded"]
    assert int(attrs["images-total"]) == len(EXPECTED_FIGURES) + 5  # figures + 4 cells' grids + the real data grid
    assert attrs["sorted-first"] == "DiGIT · dino_tiny · K=64"  # sorted by FD, ascending
    assert attrs["sticky"] == "sticky"
    assert "holds" in dom and "mae_tiny-k256-s0" in dom


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} (headless Chromium) is not installed")
def test_the_landing_page_and_a_committed_page_render(committed, tmp_path):
    dom = _render(committed.parent.parent / "index.html", tmp_path, "")
    assert 'href="backbones/smoke/index.html"' in dom
    dom = _render(committed / "index.html", tmp_path, _VISIBLE)
    attrs = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', dom.split("<body", 1)[1].split(">", 1)[0]))
    assert attrs["main-table"] == attrs["card"] == "1" and attrs["images-total"] == attrs["images-loaded"]


CONDITIONAL = REPO / "results" / "conditional" / "smoke"  # a committed sweep output with one external row


def test_a_real_external_row_is_merged_into_every_page_with_its_marker(tmp_path):
    ext = pd.read_csv(next((CONDITIONAL / "external").glob("*.csv")))
    label = f"external · {ext['generator'].iloc[0]}"
    digest = json.loads(ext["provenance"].iloc[0])["sha256"][:12]
    out = tmp_path / "conditional" / "smoke"
    assert report.report_from_csv(CONDITIONAL, out)["n_external"] == 1
    main = (out / "table.md").read_text().split("## Main table\n", 1)[1].split("\n## ", 1)[0]
    row = next(line for line in main.splitlines() if line.startswith(f"| {label} |"))
    assert f"sha256 {digest}" in row and "protocol: ours" in row and "112.9 [109, 117]" in row
    comparison = (out / "comparison.md").read_text()
    assert f"| {label} |" in comparison and digest in comparison and report.EXTERNAL_NOTE in comparison
    page = (out / "index.html").read_text()
    main_html = page.split('id="main-table"', 1)[1].split("</table>", 1)[0]
    assert f"<td>{label}</td>" in main_html and digest in main_html
    assert 'id="external-note"' in page
    assert (pd.read_csv(out / "results.csv")["row_kind"] != "external").all()  # results.csv keeps our rows only
    assert json.loads((out / "report.json").read_text())["best"].startswith("DiGIT · ")  # our best, never external


def test_external_rows_are_ranked_with_ours_only_on_our_protocol(tmp_path):
    folder = tmp_path / "conditional" / "smoke"
    shutil.copytree(CONDITIONAL, folder)
    real = next((folder / "external").glob("*.csv"))
    base = pd.read_csv(real)
    real.unlink()
    same = base.assign(generator="same_protocol", fd_local=60.0, fd_local_ci_low=58.0, fd_local_ci_high=62.0)
    other = base.assign(generator="other_protocol", fd_local=30.0, fd_local_ci_low=29.0, fd_local_ci_high=31.0,
                        protocol_differs=True, protocol_note="images are 64x64, the sweep's 32x32")
    same.to_csv(folder / "external" / "same.csv", index=False)
    other.to_csv(folder / "external" / "other.csv", index=False)
    report.report_from_csv(folder)
    main = (folder / "table.md").read_text().split("## Main table\n", 1)[1].split("\n## ", 1)[0]
    rows = {line.split(" | ")[0].removeprefix("| "): line for line in main.splitlines() if line.startswith("| ")}
    # the lower FD on another protocol is never marked; the best FD on ours is bold, separated from our run
    assert "**60 [58, 62]**" in rows["external · same_protocol"]
    assert "30 [29, 31]" in rows["external · other_protocol"] and "**30" not in rows["external · other_protocol"]
    assert "protocol differs: images are 64x64, the sweep's 32x32" in rows["external · other_protocol"]
    assert "**" not in rows["DiGIT · class_conditional=True"]
    html_main = (folder / "index.html").read_text().split('id="main-table"', 1)[1].split("</table>", 1)[0]
    assert html_main.count('class="best"') == 1


def test_an_unreadable_external_csv_is_a_user_error(tmp_path):
    folder = tmp_path / "smoke"
    shutil.copytree(CONDITIONAL, folder)
    (folder / "external" / "broken.csv").write_text("label,fd\n1\n")
    with pytest.raises(UserError, match="no generator column"):
        report.report_from_csv(folder)


def test_claims_compare_like_with_like_on_the_committed_conditional_results():
    """The conditional sweep has unconditional and class-conditional DiGIT but only a class-conditional VQ GPT: the
    DiGIT-vs-VQ claim must pair the two class-conditional cells, not DiGIT's best cell with whatever VQ has."""
    df = pd.read_csv(Path(__file__).resolve().parents[1] / "results" / "conditional" / "tiny" / "results.csv")
    runs = df[df["row_kind"] == "run"]
    table = report.claim_table(runs, ["generator", "gpt.class_conditional"]).text
    row = table[table["claim"].str.startswith("DiGIT beats the same GPT")].iloc[0]
    assert "class_conditional=True" in row["A"] and "class_conditional=True" in row["B"]


def test_full_seed_ceilings_pool_over_seeds_and_gaps_pair_each_seed_with_its_own_decoder(tmp_path):
    """The committed default tiny table (seed_scope full): every seed retrains the encoder and the decoders, so a
    ceiling row per label pools its seeds (n = 2) and Δ ceiling is the mean of each run's FD minus its own seed's
    ceiling."""
    csv = REPO / "results" / "backbones" / "tiny" / "results.csv"
    df = pd.read_csv(csv)
    ceilings, runs = df[df["row_kind"] == "ceiling"], df[df["row_kind"] == "run"]
    assert set(runs["seed_scope"]) == {"full"} and ceilings["seed"].nunique() == 2
    out = tmp_path / "backbones" / "tiny"
    report.report_from_csv(csv, out)
    text = (out / "table.md").read_text()
    ceiling_section = text.split("## Ceilings")[1].split("## Full table")[0]
    labels = [ln.split(" | ")[0].lstrip("| ") for ln in ceiling_section.splitlines() if ln.startswith("| ")][2:]
    assert len(labels) == len(set(labels)) == ceilings["generator"].nunique()
    dino = runs[runs["run_id"].str.startswith("digit-dino_tiny-")]
    own = dino["artifacts.ceiling_metrics"].map(ceilings.set_index("run_id")["fd_local"])
    assert own.notna().all() and own.nunique() == 2  # one decoder ceiling per seed
    row = next(ln for ln in text.split("## Main table")[1].splitlines() if ln.startswith("| DiGIT · dino_tiny"))
    assert row.rstrip(" |").split(" | ")[-1] == f"{(dino['fd_local'] - own).mean():+.3g}"
