"""`digit-bench compare`: which metrics of a rerun land inside the original's intervals."""

from __future__ import annotations

import json

import pandas as pd

from digit_bench.cli import main
from digit_bench.compare import compare_frames


def rows(fd: list[float], probe: list[float], run_prefix: str) -> pd.DataFrame:
    """Two seeds of one DiGIT cell plus a ceiling row; run ids differ between files (other code versions)."""
    out = [{"run_id": f"{run_prefix}-s{s}", "generator": "digit", "seed": s, "backbone.name": "dino_tiny",
            "fd_local": f, "fd_local_bc": f - 5, "fd_local_ci_low": f - 8, "fd_local_ci_high": f - 2,
            "probe_top1": p, "cost.total.wall_s": 100.0 + s} for s, (f, p) in enumerate(zip(fd, probe))]
    out.append({"run_id": f"{run_prefix}-ceiling", "generator": "vq_recon", "seed": 0, "fd_local": 16.0,
                "probe_top1": float("nan")})
    return pd.DataFrame(out)


def test_inside_outside_and_what_is_compared():
    a = rows([50.0, 52.0], [60.0, 62.0], "old")
    b = rows([49.0, 70.0], [61.0, 70.0], "new")
    t = compare_frames(a, b).set_index(["generator", "seed", "metric"])
    # b's bias-corrected FD (44) inside a's [42, 48]; seed 1: 65 outside [44, 50]
    assert t.loc[("digit", 0, "fd_local"), "inside"] and t.loc[("digit", 0, "fd_local"), "b_compared"] == 44.0
    assert not t.loc[("digit", 1, "fd_local"), "inside"]
    # probe: a's two seeds give a prediction interval around 61 (t(0.975, 1) = 12.7 -> +- 22): 61 in, 70 in too
    assert t.loc[("digit", 0, "probe_top1"), "interval"] == "seed prediction interval"
    assert t.loc[("digit", 1, "probe_top1"), "inside"]
    # the ceiling has no interval: only identity is reported; costs are never compared
    assert t.loc[("vq_recon", 0, "fd_local"), "interval"] == "none" and t.loc[("vq_recon", 0, "fd_local"), "identical"]
    assert "cost.total.wall_s" not in t.index.get_level_values("metric")


def test_cli_prints_a_summary(tmp_path, capsys):
    rows([50.0, 52.0], [60.0, 62.0], "old").to_csv(tmp_path / "a.csv", index=False)
    rows([49.0, 70.0], [61.0, 70.0], "new").to_csv(tmp_path / "b.csv", index=False)
    assert main(["compare", str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), "--out", str(tmp_path / "t.csv")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["outside"] == ["digit s1 fd_local: 65 not in [44, 50]"]
    assert pd.read_csv(tmp_path / "t.csv")["metric"].nunique() == 2


def test_unmatched_files_are_a_user_error(tmp_path, capsys):
    rows([50.0], [60.0], "a").to_csv(tmp_path / "a.csv", index=False)
    other = rows([50.0], [60.0], "b").assign(generator="ldm")
    other.to_csv(tmp_path / "b.csv", index=False)
    assert main(["compare", str(tmp_path / "a.csv"), str(tmp_path / "b.csv")]) == 2
    assert "no row of B matches" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "missing.csv"), str(tmp_path / "b.csv")]) == 2


def test_committed_results_agree_with_themselves(capsys):
    path = "results/backbones/tiny/results.csv"
    assert main(["compare", path, path]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["outside"] == [] and summary["identical"] == summary["compared"] and summary["with_interval"] > 0
