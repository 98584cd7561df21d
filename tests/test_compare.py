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
    # one seed in A: FD is judged against its per-run interval, bias-corrected on both sides
    t = compare_frames(rows([50.0], [60.0], "old"), rows([49.0], [61.0], "new")).set_index(["generator", "seed", "metric"])
    assert t.loc[("digit", 0, "fd_local"), "interval"] == "fd interval (b: bias-corrected)"
    assert t.loc[("digit", 0, "fd_local"), "inside"] and t.loc[("digit", 0, "fd_local"), "b_compared"] == 44.0  # in [42, 48]
    t = compare_frames(rows([50.0], [60.0], "old"), rows([60.0], [61.0], "new")).set_index(["generator", "seed", "metric"])
    assert not t.loc[("digit", 0, "fd_local"), "inside"]  # 55 outside [42, 48]
    # two seeds in A: every metric, FD included, is judged against the seeds' prediction interval for one more run
    # (t(0.975, 1) = 12.7: 51 +- 22 for FD, 61 +- 22 for the probe), which retraining on another machine should hit
    a = rows([50.0, 52.0], [60.0, 62.0], "old")
    t = compare_frames(a, rows([49.0, 70.0], [61.0, 90.0], "new")).set_index(["generator", "seed", "metric"])
    assert (t.loc[("digit", 1, "fd_local"), "interval"] == "seed prediction interval"
            and t.loc[("digit", 1, "fd_local"), "b_compared"] == 70.0 and t.loc[("digit", 1, "fd_local"), "inside"])
    assert t.loc[("digit", 0, "probe_top1"), "inside"] and not t.loc[("digit", 1, "probe_top1"), "inside"]
    # the ceiling has no interval: only identity is reported; costs are never compared
    assert t.loc[("vq_recon", 0, "fd_local"), "interval"] == "none" and t.loc[("vq_recon", 0, "fd_local"), "identical"]
    assert "cost.total.wall_s" not in t.index.get_level_values("metric")
    # seeds that agree exactly measured no spread: no zero-width interval, the per-run FD interval is used instead
    t = compare_frames(rows([50.0, 50.0], [60.0, 60.0], "old"), rows([49.0, 50.0], [61.0, 60.0], "new"))
    t = t.set_index(["generator", "seed", "metric"])
    assert t.loc[("digit", 0, "fd_local"), "interval"] == "fd interval (b: bias-corrected)"
    assert t.loc[("digit", 0, "probe_top1"), "interval"] == "none" and t.loc[("digit", 1, "probe_top1"), "identical"]


def test_cli_prints_a_summary(tmp_path, capsys):
    rows([50.0], [60.0], "old").to_csv(tmp_path / "a.csv", index=False)
    rows([60.0], [61.0], "new").to_csv(tmp_path / "b.csv", index=False)
    assert main(["compare", str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), "--out", str(tmp_path / "t.csv")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["outside"] == ["digit s0 fd_local: 55 not in [42, 48]"]
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
