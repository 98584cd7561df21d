"""`digit-bench compare A.csv B.csv`: does each metric of a rerun (B) land inside the interval of the original (A)?

Rows are matched on what identifies a result, not on artifact ids (those change with code versions): the generator
label, the seed and every swept config column the two files share. Per matched row and metric:
- when A holds two or more seeds of the cell: B's value must lie in A's 95% prediction interval for one more run,
  mean ± t(0.975, n-1) · sd · sqrt(1 + 1/n), over A's seeds. A rerun on another machine (or another instruction
  set on the same one) retrains every stage along a different floating-point path, which acts like a new seed of
  each trained stage, so only seeds that retrain those stages (seed_scope full; downstream leaves the encoder out)
  give an interval it should land in;
- else, FD columns with a per-run interval in A (`<fd>_ci_low`, `<fd>_ci_high`): B's bias-corrected `<fd>_bc` when
  both files carry it (A's interval is then one of the true FD), else B's `<fd>`, must lie in [low, high]. That
  interval covers the sampling of generated and reference images only, not retraining;
- otherwise there is no interval and the row only says whether the values are identical.
Costs (wall seconds, memory), sizes and ids are not compared. The table goes to stderr (and `--out`, a CSV), the
summary to stdout.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from digit_bench.errors import UserError
from digit_bench.report import config_columns

SKIP_PREFIXES = ("cost.", "artifacts.", "params", "flops", "num_samples", "seed", "probe_layer", "threads")
INTERVAL_SUFFIXES = ("_ci_low", "_ci_high", "_bc", "_std", "_interval", "_lr", "_l2")


def _read(path: Path) -> pd.DataFrame:
    if not Path(path).is_file():
        raise UserError(f"{path} does not exist; pass a results.csv written by a sweep (results/<sweep>/<profile>/)")
    df = pd.read_csv(path)
    if "generator" not in df or "seed" not in df:
        raise UserError(f"{path} has no generator/seed columns; pass a results.csv written by a sweep")
    return df


def _metrics(a: pd.DataFrame, b: pd.DataFrame, keys: list[str]) -> list[str]:
    """Numeric measurement columns present in both files."""
    out = []
    for c in a.columns:
        if c in keys or c not in b or c.startswith(SKIP_PREFIXES) or c.endswith(INTERVAL_SUFFIXES):
            continue
        if pd.api.types.is_numeric_dtype(a[c]) and not pd.api.types.is_bool_dtype(a[c]):
            out.append(c)
    return out


def _seed_interval(values: np.ndarray) -> tuple[float, float] | None:
    """95% prediction interval for one more run from A's per-seed values (None with fewer than two, or when they are
    all equal: no spread was measured, e.g. a stage shared by every seed)."""
    values = values[~np.isnan(values)]
    n = len(values)
    if n < 2 or np.ptp(values) == 0:
        return None
    half = stats.t.ppf(0.975, n - 1) * values.std(ddof=1) * math.sqrt(1 + 1 / n)
    return values.mean() - half, values.mean() + half


def compare_frames(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """One row per (matched row, metric): a, b, the interval, its kind, and whether b is inside / identical."""
    keys = ["generator"] + [c for c in config_columns(a) if c in b]
    for df in (a, b):
        for k in keys:
            df[k] = df[k].astype(str)
    metrics = _metrics(a, b, keys + ["seed"])
    cells = {cell: g for cell, g in a.groupby(keys, dropna=False)}
    out = []
    merged = a.merge(b, on=keys + ["seed"], suffixes=("_a", "_b"))
    for _, row in merged.iterrows():
        cell = tuple(row[k] for k in keys)
        for m in metrics:
            va, vb = row.get(f"{m}_a"), row.get(f"{m}_b")
            if pd.isna(va) and pd.isna(vb):
                continue
            low, high, kind, value = np.nan, np.nan, "none", vb
            if (seed_iv := _seed_interval(cells[cell][m].to_numpy(dtype=float))) is not None:
                (low, high), kind = seed_iv, "seed prediction interval"
            elif f"{m}_ci_low_a" in row and not pd.isna(row[f"{m}_ci_low_a"]):
                low, high = row[f"{m}_ci_low_a"], row[f"{m}_ci_high_a"]
                bc_a, bc_b = row.get(f"{m}_bc_a"), row.get(f"{m}_bc_b")
                both_bc = bc_a is not None and bc_b is not None and not (pd.isna(bc_a) or pd.isna(bc_b))
                kind, value = ("fd interval (b: bias-corrected)", bc_b) if both_bc else ("fd interval", vb)
            inside = bool(low <= value <= high) if kind != "none" and not pd.isna(value) else None
            out.append({**{k: row[k] for k in keys}, "seed": row["seed"], "metric": m, "a": va, "b": vb,
                        "b_compared": value, "low": low, "high": high, "interval": kind, "inside": inside,
                        "identical": bool(va == vb)})
    if not out:
        raise UserError("no row of B matches a row of A (same generator, seed and swept config values); compare "
                        "results of the same sweep and profile")
    return pd.DataFrame(out)


def main(args) -> dict:
    a, b = _read(Path(args.a)), _read(Path(args.b))
    table = compare_frames(a, b)
    if args.out:
        table.to_csv(args.out, index=False)
    shown = table.copy()
    shown["inside"] = shown["inside"].map({True: "yes", False: "NO", None: "-"})
    with pd.option_context("display.max_rows", None, "display.width", 200, "display.float_format", "{:.4g}".format):
        print(shown.drop(columns=["b_compared"]).to_string(index=False), file=sys.stderr)
    judged = table[table["inside"].notna()]
    outside = judged[judged["inside"] == False]  # noqa: E712 - a pandas mask
    return {"compared": len(table), "with_interval": len(judged), "inside": int(judged["inside"].sum()),
            "outside": [f"{r.generator} s{r.seed} {r.metric}: {r.b_compared:.4g} not in [{r.low:.4g}, {r.high:.4g}]"
                        for r in outside.itertuples()],
            "identical": int(table["identical"].sum())}
