"""Figures of a results folder, drawn from results.csv (and curves.csv) alone, designed to go into a paper.

Each figure has a title, axis labels with units and the better direction, error bars from the cells' 95% intervals
(t over seeds, else the per-run interval), the cells' own ceilings as dashed lines and real data as a dotted line, a
colour fixed per backbone / generator across every figure, and the published Table 1 curves where the paper has them.
A figure is drawn only when its x axis varies between the sweep's cells; each is written as PNG and PDF.
"""

from __future__ import annotations

import json
import re
import zlib
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, LogLocator, MaxNLocator, NullFormatter

from digit_bench.metric_registry import metric
from digit_bench.report import (_group_keys, cells, config_columns, primary_fd, read_published, row_label)

# A colour per backbone and per baseline generator, the same in every figure (tab10 order).
COLOURS = {"dino_tiny": "#1f77b4", "mae_tiny": "#ff7f0e", "sup_tiny": "#9467bd", "random_vit": "#7f7f7f",
           "pixels": "#8c564b", "digit": "#1f77b4", "vqgan_ar": "#d62728", "ldm": "#2ca02c"}
_FALLBACK = ("#17becf", "#bcbd22", "#e377c2", "#aec7e8", "#ffbb78", "#98df8a", "#c5b0d5", "#c49c94")
PUBLISHED_STYLE = {"Disc Token": ("paper: DINOv2 + K-Means tokens (Table 1)", "#1f77b4"),
                   "VQ Token": ("paper: MAGE VQGAN tokens (Table 1)", "#d62728")}


def colour(row: pd.Series) -> str:
    """The backbone's colour for DiGIT cells, the generator's for baselines; unknown names hash to a fixed colour."""
    gen = str(row.get("generator", ""))
    name = str(row.get("backbone.name")) if gen == "digit" and not pd.isna(row.get("backbone.name")) else gen
    return COLOURS.get(name, _FALLBACK[zlib.crc32(name.encode()) % len(_FALLBACK)])


def axis_label(column: str, extractor_note: bool = True) -> str:
    """'Fréchet distance (local extractor) ↓' from a column name, via the metric registry."""
    m = metric(column)
    if m is None:
        return column
    text = m.label
    ext = re.fullmatch(r"(?:fd|is|kid|precision|recall)_([a-z0-9]+)", column)
    if ext and extractor_note:
        text += f" ({ext.group(1)} extractor)"
    snr = re.fullmatch(r"(?:token_change|cos_sim)_snr([0-9.]+)", column)
    if snr:
        text += f" at {snr.group(1)} dB"
    if m.higher_is_better is not None:
        text += "  ↑ better" if m.higher_is_better else "  ↓ better"
    return text


def _new(title: str, size=(6.4, 4.6)) -> tuple[Figure, object]:
    fig = Figure(figsize=size, layout="constrained")
    ax = fig.subplots()
    ax.set_title(title, fontsize=11)
    ax.grid(alpha=0.3)
    return fig, ax


def _errorbar(ax, xs, group, **kw) -> None:
    """Means as markers (and a line unless ls="none"), each cell's 95% interval as a capped bar drawn from its own
    bounds: a per-run bootstrap interval may exclude the point estimate, and the figure shows it as it is."""
    means = np.array([c.mean for c in group])
    ax.plot(xs, means, marker="o", **{"ls": "-", **kw})
    bars = [(x, c.interval()) for x, c in zip(xs, group) if c.interval()]
    if bars:
        lo, hi = np.array([b[1][0] for b in bars]), np.array([b[1][1] for b in bars])
        ax.errorbar([b[0] for b in bars], (lo + hi) / 2, yerr=(hi - lo) / 2, fmt="none", capsize=3,
                    color=kw.get("color"), alpha=0.8)


def _series(runs: pd.DataFrame, keys: list[str], x: str) -> list[tuple[str, str, pd.DataFrame]]:
    """(label, colour, rows) per series: the cells that differ only in `x`."""
    rest = [k for k in keys if k != x]
    groups = runs.groupby(rest, dropna=False, sort=True) if rest else [(None, runs)]
    return [(row_label(g.iloc[0], rest), colour(g.iloc[0]), g) for _, g in groups]


def _ceiling_lines(ax, df: pd.DataFrame, fd: str) -> None:
    """Real data as a dotted black line (the floor of every generator)."""
    real = df[(df["row_kind"] == "ceiling") & (df.get("source") == "real")] if "source" in df else df.iloc[:0]
    if len(real) and not real[fd].isna().all():
        ax.axhline(real[fd].mean(), color="black", ls=":", lw=1.2, label="real data (val)")


def _legend(ax) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize="small", loc="best", framealpha=0.85)


def _log_x(ax, base: int, values: np.ndarray, eng: bool = False) -> None:
    if values.max() >= base * values.min() > 0:
        ax.set_xscale("log", base=base)
        ax.xaxis.set_major_locator(LogLocator(base=base, numticks=6))
        ax.xaxis.set_minor_formatter(NullFormatter())
        if eng:  # ticks at the measured values (137k, 1.4M) when they are few and far apart, else decades
            ticks = np.array(sorted(set(values)))
            if len(ticks) <= 6 and (ticks[1:] / ticks[:-1]).min() >= 1.5:
                ax.set_xticks(ticks)
            ax.xaxis.set_major_formatter(EngFormatter(sep="", places=0 if values.max() < 1e3 else 1))
        elif base == 2:
            ax.set_xticks(sorted(set(values)))
            ax.set_xticklabels([f"{int(v)}" for v in sorted(set(values))])


# ------------------------------------------------------------------------------------------------ the figures
def fd_vs_k(df, runs, keys, fd):
    x = "tokenizer.k"
    if fd is None or x not in runs or runs[x].nunique() < 2:
        return None
    fig, ax = _new("Sample quality vs codebook size K")
    ceilings = df[df["row_kind"] == "ceiling"].set_index("run_id")[fd] if "run_id" in df else pd.Series(dtype=float)
    for label, col, g in _series(runs, keys, x):
        ks = sorted(g[x].dropna().unique())
        if len(ks) < 2:
            continue
        _errorbar(ax, ks, cells(g, [x], fd), color=col, label=label)
        if "artifacts.ceiling_metrics" in g:
            ceil = [g[g[x] == k]["artifacts.ceiling_metrics"].map(ceilings).mean() for k in ks]  # over seeds
            if not np.isnan(ceil).all():
                ax.plot(ks, ceil, ls="--", color=col, lw=1, label=f"{label}: decoder ceiling")
    _ceiling_lines(ax, df, fd)
    _log_x(ax, 2, runs[x].dropna().to_numpy(float))
    ax.set(xlabel="codebook size K (log scale)", ylabel=axis_label(fd))
    _legend(ax)
    return fig, f"fig_{fd}_vs_{x}"


def fd_vs_params(df, runs, keys, fd):
    if fd is None or "params" not in runs:
        return None
    if runs.groupby("generator")["params"].nunique().max() < 2:
        return None  # no generator changes size in this sweep: the x axis would only separate generators
    fig, ax = _new("Sample quality vs generator size")
    for gen, g in runs.groupby("generator", sort=True):
        sub = list(g.groupby(keys, dropna=False, sort=True)) if keys else [(None, g)]
        order = np.argsort([s["params"].mean() for _, s in sub])
        xs = [sub[i][1]["params"].mean() for i in order]
        group = [cells(sub[i][1], [], fd)[0] for i in order]
        _errorbar(ax, xs, group, color=colour(g.iloc[0]), label=row_label(g.iloc[0], ["generator"]),
                  ls="-" if len(xs) > 1 else "none")
    _ceiling_lines(ax, df, fd)
    _log_x(ax, 10, runs["params"].dropna().to_numpy(float), eng=True)
    ax.set(xlabel="stage-1 parameters (log scale)", ylabel=axis_label(fd))
    _legend(ax)
    return fig, f"fig_{fd}_vs_params"


def probe_vs_layer(df, runs, keys, fd):
    if "probe_curve" not in runs or runs["probe_curve"].isna().all():
        return None
    curves = runs.dropna(subset=["probe_curve"])
    long = curves.assign(probe_top1=curves["probe_curve"].map(json.loads)).explode("probe_top1")
    long = long.assign(layer=long.groupby(level=0).cumcount()).reset_index(drop=True)  # position in probe_curve
    if long["layer"].nunique() < 2:
        return None
    long["probe_top1"] = long["probe_top1"].astype(float)
    fig, ax = _new("Linear probe vs GPT layer")
    for label, col, g in _series(long.rename(columns={"layer": "_layer"}), keys, "_layer"):
        layers = sorted(g["_layer"].unique())
        _errorbar(ax, layers, cells(g, ["_layer"], "probe_top1"), color=col, label=label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="GPT layer the probe reads (0 = first block)", ylabel=axis_label("probe_top1"))
    _legend(ax)
    return fig, "fig_probe_top1_vs_layer"


def _distinct_tokenizers(runs: pd.DataFrame) -> list[pd.Series]:
    """One run row per distinct tokenizer (cells sharing a tokenizer measure the same stability)."""
    key = "artifacts.tokenizer_metrics" if "artifacts.tokenizer_metrics" in runs else None
    rows = runs.dropna(subset=["token_change_snr20"]) if "token_change_snr20" in runs else runs.iloc[:0]
    return [g.iloc[0] for _, g in rows.groupby(key, sort=True)] if key else [r for _, r in rows.iterrows()]


def token_change_vs_snr(df, runs, keys, fd):
    snr_of = {c: float(m.group(1)) for c in runs if (m := re.fullmatch(r"token_change_snr([0-9.]+)", c))}
    tokenizers = _distinct_tokenizers(runs)
    if len(snr_of) < 2 or len(tokenizers) < 2:
        return None
    fig, ax = _new("Token stability under pixel noise (cf. paper Table 1)")
    cols = sorted(snr_of, key=snr_of.get)
    tk_keys = [k for k in keys if k in ("generator", "backbone.name", "tokenizer.k", "backbone.layer")]
    for row in tokenizers:
        ax.plot([snr_of[c] for c in cols], [row[c] for c in cols], marker="o", color=colour(row),
                label=row_label(row, tk_keys) + " (ours)")
    published = read_published()
    table1 = published[published["task"] == "stability"]
    for method, (label, col) in PUBLISHED_STYLE.items():
        rows = table1[table1["method"] == method].astype({"snr_db": float, "token_change": float})
        rows = rows[rows["snr_db"] >= min(snr_of.values())].sort_values("snr_db")
        ax.plot(rows["snr_db"], rows["token_change"], ls="--", marker="x", color=col, alpha=0.6, label=label)
    ax.set(xlabel="SNR of the added Gaussian noise (dB) → less noise", ylabel=axis_label("token_change"))
    _legend(ax)
    return fig, "fig_token_change_vs_snr"


def _fd_vs_tokenizer_metric(df, runs, keys, fd, x: str, title: str):
    """FD of each tokenizer's cells against one tokenizer metric, with the decoder ceilings as lines."""
    if fd is None or x not in runs or len(_distinct_tokenizers(runs)) < 2:
        return None
    fig, ax = _new(title)
    for label, col, g in _series(runs, keys, "__none__"):
        if g[x].notna().any() and g[fd].notna().any():  # no legend entry for a generator without tokens (LDM)
            _errorbar(ax, [g[x].mean()], cells(g, [], fd), color=col, label=label, ls="none")
    _ceiling_lines(ax, df, fd)
    ax.set(xlabel=axis_label(x), ylabel=axis_label(fd))
    _legend(ax)
    return fig, f"fig_{fd}_vs_{x}"


def fd_vs_stability(df, runs, keys, fd):
    return _fd_vs_tokenizer_metric(df, runs, keys, fd, "token_change_snr20", "Sample quality vs token stability")


def fd_vs_encoder(df, runs, keys, fd):
    """The paper's argument in one picture: does a stronger encoder (kNN of its own features) give a lower FD?"""
    return _fd_vs_tokenizer_metric(df, runs, keys, fd, "knn_ol", "Sample quality vs encoder quality")


def fd_vs_cost(df, runs, keys, fd):
    x = "cost.total.wall_s"
    n_cells = runs.groupby(keys, dropna=False).ngroups if keys else len(runs)
    if fd is None or x not in runs or n_cells < 3:
        return None
    fig, ax = _new("Sample quality vs compute")
    for label, col, g in _series(runs, keys, "__none__"):
        _errorbar(ax, [g[x].mean()], cells(g, [], fd), color=col, label=label, ls="none")
    _ceiling_lines(ax, df, fd)
    _log_x(ax, 10, runs[x].dropna().to_numpy(float), eng=True)
    ax.set(xlabel="wall-clock of all the run's stages (s, log scale)  ← cheaper", ylabel=axis_label(fd))
    _legend(ax)
    return fig, f"fig_{fd}_vs_{x}"


ROLE_TITLES = {"gpt": "stage-1 GPT", "stage2": "stage-2 decoder", "vqgan": "VQGAN (reconstruction)", "diffusion": "LDM denoiser",
               "vae": "LDM autoencoder", "ssl": "SSL backbone", "classifier": "local extractor"}


def training_curves(curves: pd.DataFrame, runs: pd.DataFrame, keys: list[str]) -> Optional[tuple]:
    """Loss vs step, one panel per trained role, one line per trained model (running mean over 5% of its steps)."""
    if curves.empty:
        return None
    roles = [r for r in ROLE_TITLES if r in set(curves["role"])]
    ncols = min(3, len(roles))
    nrows = -(-len(roles) // ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.2 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    fig.suptitle("Training loss per stage (running mean)", fontsize=12)
    by_run = runs.set_index("run_id") if "run_id" in runs else pd.DataFrame()
    for ax, role in zip(axes, roles):
        part = curves[curves["role"] == role]
        shared = part.groupby("artifact")["run_id"].first()
        for artifact, g in part.groupby("artifact", sort=True):
            run = by_run.loc[shared[artifact]] if shared[artifact] in by_run.index else None
            per_run = role in ("gpt", "diffusion") and run is not None
            label = row_label(run, keys) + f" s{int(run['seed'])}" if per_run else artifact.rsplit("-", 1)[0]
            window = max(1, len(g) // 20)
            ax.plot(g["step"], g["loss"].rolling(window, min_periods=1).mean(), lw=1.2,
                    color=colour(run) if per_run else None, label=label)
        ax.set_title(ROLE_TITLES[role], fontsize=10)
        keys = ", ".join(sorted(set(part["key"]))) if "key" in part else "loss"
        ax.set(xlabel="optimiser step", ylabel=f"training {keys}  ↓")
        ax.grid(alpha=0.3)
        if part["artifact"].nunique() <= 8:
            ax.legend(fontsize="x-small")
    for ax in axes[len(roles):]:
        ax.set_visible(False)
    return fig, "fig_training_curves"


def fd_vs_settings(df, runs, keys, fd):
    """FD against each numeric swept setting that no figure above draws (prefix length: Fig. 4b; top-k / top-p:
    Fig. 6; training steps), one series per value of the other keys, with each series' decoder ceiling dashed."""
    if fd is None:
        return []
    figures = []
    ceilings = df[df["row_kind"] == "ceiling"].set_index("run_id")[fd] if "run_id" in df else pd.Series(dtype=float)
    for x in keys:
        if x in ("tokenizer.k", "seed", "generator") or not pd.api.types.is_numeric_dtype(runs[x]) \
                or runs[x].nunique() < 2:
            continue
        fig, ax = _new(f"Sample quality vs {x}")
        for label, col, g in _series(runs[runs[x].notna()], keys, x):
            xs = sorted(g[x].unique())
            _errorbar(ax, xs, cells(g, [x], fd), color=col, label=label)
            if "artifacts.ceiling_metrics" in g:
                ceil = [g[g[x] == v]["artifacts.ceiling_metrics"].map(ceilings).mean() for v in xs]  # over seeds
                if not np.isnan(np.asarray(ceil, float)).all():
                    ax.plot(xs, ceil, ls="--", color=col, lw=1, label=f"{label}: decoder ceiling")
        _ceiling_lines(ax, df, fd)
        ax.set(xlabel=x, ylabel=axis_label(fd))
        _legend(ax)
        figures.append((fig, f"fig_{fd}_vs_{x}"))
    return figures


FIGURES = (fd_vs_k, fd_vs_params, probe_vs_layer, token_change_vs_snr, fd_vs_stability, fd_vs_encoder, fd_vs_cost,
           fd_vs_settings)


def draw_all(csv_path: Path, out_dir: Path) -> list[Path]:
    df = pd.read_csv(csv_path)
    runs = df[df["row_kind"] == "run"]
    keys = _group_keys(df, [c for c in config_columns(df)])
    fd = primary_fd(runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in [*out_dir.glob("fig_*.png"), *out_dir.glob("fig_*.pdf")]:
        old.unlink()
    drawn = []
    for draw in FIGURES:
        item = draw(df, runs, keys, fd)
        drawn.extend(item if isinstance(item, list) else [item])
    curves_csv = Path(csv_path).parent / "curves.csv"
    if curves_csv.is_file():
        drawn.append(training_curves(pd.read_csv(curves_csv), runs, keys))
    paths = []
    for item in drawn:
        if item:
            fig, stem = item
            fig.savefig(out_dir / f"{stem}.png", dpi=150)
            fig.savefig(out_dir / f"{stem}.pdf")
            paths.append(out_dir / f"{stem}.png")
    return paths
