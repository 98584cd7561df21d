"""Turn the metrics rows of one sweep and profile into tables, figures, a comparison with published numbers and a page.

`write_report` writes into `results/<sweep>/<profile>/`:

    results.csv, results.parquet   tidy, one row per run (lists such as `probe_curve` are stored as JSON text)
    table.md, table.tex            mean ± std over seeds per swept cell; ↑/↓ in the header; best cell in bold
    fig_*.png                      seaborn figures drawn from results.csv alone (`figures_from_csv`)
    comparison.md                  our cells beside the published LDM / VQGAN-AR / DiGIT rows of baselines/published.csv
    failed.md                      failed runs: run id, stage, the tail of the error
    index.html                     every table and figure on one page

Metric columns are discovered from the rows: every numeric column that is not a swept key, an id or a per-run
confidence bound. Only their direction (`HIGHER_IS_BETTER`) and column order (`DISPLAY_ORDER`) are listed here.

Ideas from: timm `results/*.csv` (one tidy CSV per sweep; plots regenerated from it), lm-eval `make_table`
(↑/↓ from a higher-is-better map), timm `bulk_runner.py` (failed runs listed beside the results, never fatal).

CLI: `digit-bench report SWEEP [--profile tiny] [--root runs]` reads `<root>/runs_index/<sweep>/<profile>/*.json`.
"""

from __future__ import annotations

import argparse
import html
import json
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from digit_bench.config import ExperimentConfig
from digit_bench.errors import UserError

# Direction of each metric family. A column belongs to the longest family it equals or extends with "_" or "."
# ("fd_local" -> "fd", "token_change_snr20" -> "token_change", "cost.total.wall_s" -> "cost").
HIGHER_IS_BETTER = {
    "fid": False, "fd": False, "kid": False, "is": True, "precision": True, "recall": True, "class_acc": True,
    "probe_top1": True, "probe_top5": True, "codebook_usage": True, "codebook_perplexity": True,
    "token_change": False, "cos_sim": True, "cost": False, "acc_ol": True, "kmeans_seed_ari": True, "dead_codes": False,
}
# Column order in the tables, by family; families not listed go just before "params".
DISPLAY_ORDER = ("fid", "fd", "is", "kid", "precision", "recall", "class_acc", "probe_top1", "probe_top5",
                 "probe_layer", "codebook_usage", "codebook_perplexity", "token_change", "cos_sim",
                 "params", "flops", "cost")
ID_COLUMNS = ("run_id", "sweep", "profile", "row_kind", "generator", "seed")
NOT_METRICS = ("seed", "num_samples")  # numeric columns that describe a run instead of measuring it
NOT_CONFIG = ("cost.", "protocol.", "artifacts.")  # dotted columns that are not swept keys
FLAGS = ("circular",)  # per-run booleans; a cell is flagged when any of its seeds is
# Metrics that have a published counterpart (our local-extractor FD/IS stand in for FID/IS).
COMPARED = re.compile(r"fid|is|fd_[a-z0-9]+|is_[a-z0-9]+|probe_top1|token_change_snr20|cos_sim_snr20")
PUBLISHED_METHODS = r"LDM|VQGAN|DiGIT|VQ only"  # published rows shown in comparison.md (prefix match)
PUBLISHED_NOTE = ("Published numbers are ImageNet 256×256, torch-fidelity FID/IS on 50k samples (DiGIT paper §7). "
                  "Ours use the protocol above on a different data set and scale: compare orderings, not values.")
TEX_ARROWS = {"↓": r"$\downarrow$", "↑": r"$\uparrow$"}


# ------------------------------------------------------------------------------------------------ columns
def _family(name: str, families) -> Optional[str]:
    """The longest family that `name` equals or extends with '_' or '.', or None."""
    hits = [f for f in families if name == f or name.startswith((f + "_", f + "."))]
    return max(hits, key=len, default=None)


def higher_is_better(name: str) -> Optional[bool]:
    """True/False for a metric with a direction; None for keys, counts and sizes."""
    return HIGHER_IS_BETTER.get(_family(name, HIGHER_IS_BETTER))


def _display_key(name: str) -> tuple:
    """Sort key: family rank from DISPLAY_ORDER, then the name with its numbers compared as numbers."""
    family = _family(name, DISPLAY_ORDER)
    rank = DISPLAY_ORDER.index(family) if family else DISPLAY_ORDER.index("params") - 0.5
    parts = re.split(r"(\d+(?:\.\d+)?)", name)  # [text, number, text, ...]
    return rank, [float(p) if i % 2 else p for i, p in enumerate(parts)]


def config_columns(df: pd.DataFrame) -> list[str]:
    """The dotted config columns of the rows ("tokenizer.k"): the swept keys. A metric name may hold a dot too
    ("token_change_snr0.01"), so the part before the first dot must be a config section."""
    sections = {f.name for f in fields(ExperimentConfig)}
    return [c for c in df.columns if c.split(".")[0] in sections and "." in c and not c.startswith(NOT_CONFIG)]


def metric_columns(df: pd.DataFrame, keys: list[str]) -> list[str]:
    """Numeric columns that measure something, in display order (per-run bounds, IS split std and chosen lrs stay in
    the CSV)."""
    skip = {*keys, *config_columns(df), *NOT_METRICS, *FLAGS}
    cols = [c for c in df.columns if c not in skip and not c.endswith(("_ci_low", "_ci_high", "_std", "_lr"))
            and pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])]
    return sorted(cols, key=_display_key)


def _group_keys(df: pd.DataFrame, swept_keys: list[str]) -> list[str]:
    """Table cells: the swept keys but seed, after the generator (shown even when it is not swept)."""
    keys = [k for k in swept_keys if k != "seed"]
    return keys if "generator" in keys or "generator" not in df else ["generator", *keys]


def _headline(metric: str) -> bool:
    """Columns of table.md: quality metrics, sizes and total cost (per-stage costs stay in the CSV)."""
    return not metric.startswith("cost.") or metric.startswith("cost.total.")


def results_frame(rows: list[dict], swept_keys: list[str]) -> pd.DataFrame:
    """The tidy frame of results.csv: ids, swept keys, metrics, then everything else; lists become JSON text."""
    df = pd.DataFrame(rows)
    missing = [k for k in swept_keys if k not in df]
    if missing:
        raise UserError(f"swept key(s) {missing} are in no metrics row; write them into metrics.json as dotted columns")
    df["row_kind"] = df["row_kind"].fillna("run") if "row_kind" in df else "run"
    for col in df.columns[df.dtypes == object]:
        df[col] = df[col].map(lambda v: json.dumps(v) if isinstance(v, (list, dict)) else v)
    keys = [k for k in swept_keys if k not in ID_COLUMNS]
    first = [c for c in ID_COLUMNS if c in df] + keys + metric_columns(df, keys)
    return df[first + sorted(set(df.columns) - set(first))]


# ------------------------------------------------------------------------------------------------ tables
def aggregate(df: pd.DataFrame, keys: list[str], metrics: list[str]) -> pd.DataFrame:
    """Per (row_kind, *keys) cell: n runs, flags (any seed), and `<metric>_mean`, `<metric>_std` (ddof=1)."""
    groups = df.groupby(["row_kind", *keys], dropna=False, sort=True)
    stats = groups[metrics].agg(["mean", "std"])
    stats.columns = [f"{metric}_{stat}" for metric, stat in stats.columns]
    parts = [groups.size().rename("n"), stats]
    flags = [f for f in FLAGS if f in df]
    if flags:
        parts.insert(1, groups[flags].agg(lambda s: bool(s.eq(True).any())))
    return pd.concat(parts, axis=1).reset_index()


def _fmt_key(value) -> str:
    """A key or plain cell as text: whole floats without '.0', missing as '–'."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "–" if pd.isna(value) else str(value)


def _fmt(mean: float, std: float, n: int) -> str:
    """'mean ± std' with 4 and 2 significant digits; the mean alone for one seed; '–' when missing."""
    if pd.isna(mean):
        return "–"
    return f"{mean:.4g}" if n < 2 or pd.isna(std) else f"{mean:.4g} ± {std:.2g}"


def _is_best(means: pd.Series, higher: Optional[bool]) -> pd.Series:
    """True where the mean is the best of the column (ties too); all False without a direction or a difference."""
    if higher is None or means.nunique() < 2:
        return pd.Series(False, index=means.index)
    return pd.Series(np.isclose(means, means.max() if higher else means.min()), index=means.index)


@dataclass
class Section:
    """One table of a page: display strings, a same-shaped mask of bold cells, and a note printed above it."""
    title: str
    text: pd.DataFrame
    bold: pd.DataFrame
    note: str = ""


def _plain_section(title: str, frame: pd.DataFrame, note: str = "") -> Section:
    """A section without bold cells, from any frame (published rows, failed runs); empty columns dropped."""
    frame = frame.dropna(axis=1, how="all").reset_index(drop=True)
    text = frame.map(_fmt_key)
    return Section(title, text, pd.DataFrame(False, index=text.index, columns=text.columns), note)


def _cell_section(title: str, agg: pd.DataFrame, keys: list[str], metrics: list[str], bold: bool,
                  note: str = "") -> Section:
    """Aggregated cells as text (keys, n, flags, mean ± std); bold marks the best mean per metric if `bold`."""
    metrics = [m for m in metrics if agg[f"{m}_mean"].notna().any()]
    text = pd.DataFrame({k: agg[k].map(_fmt_key) for k in keys if agg[k].notna().any()})
    text["n"] = agg["n"].astype(str)
    for flag in FLAGS:
        if flag in agg:
            text[flag] = agg[flag].map({True: "yes", False: ""})
    mask = pd.DataFrame(False, index=text.index, columns=text.columns)
    for m in metrics:
        text[m] = [_fmt(*cell) for cell in zip(agg[f"{m}_mean"], agg[f"{m}_std"], agg["n"])]
        mask[m] = _is_best(agg[f"{m}_mean"], higher_is_better(m)) if bold else False
    return Section(title, text, mask, note)


def _cell_sections(df: pd.DataFrame, keys: list[str], metrics: list[str], prefix: str, note: str) -> list[Section]:
    """The run cells (best in bold) and, when present, the real-data ceiling cells (never bold)."""
    agg = aggregate(df, keys, metrics)
    sections = []
    for kind, title, bold in (("run", "runs", True), ("ceiling", "real-data ceilings", False)):
        part = agg[agg["row_kind"] == kind].reset_index(drop=True)
        if len(part):
            sections.append(_cell_section(f"{prefix}{title}", part, keys, metrics, bold, note if bold else ""))
    return sections


def _protocol_note(df: pd.DataFrame) -> str:
    """Mean ± std over seeds, the bold rule, and the evaluation protocol(s) recorded in the rows."""
    note = ("Mean ± std (ddof=1) over the n seeds of each cell; ↑/↓: higher/lower is better; bold: best run cell; "
            "circular = yes: a seed flagged its metrics as circular (evaluation encoder = tokenizer encoder).")
    if "protocol" in df:
        note += " Protocol: " + "; ".join(f"`{p}`" for p in df["protocol"].dropna().unique()) + "."
    return note


def _comparison_sections(df: pd.DataFrame, keys: list[str], metrics: list[str], published: pd.DataFrame,
                         title: str) -> list[Section]:
    """Our cells (metrics with a published counterpart, plus costs), then the published rows they compare to."""
    ours = [m for m in metrics if COMPARED.fullmatch(m) or m.startswith("cost.total.") or m in ("params", "flops")]
    sections = _cell_sections(df, keys, ours, f"Measured here ({title}): ", _protocol_note(df))
    generation = published[published["task"].isin(["uncond", "cond", "probe"])
                           & published["method"].str.match(PUBLISHED_METHODS)]
    sections.append(_plain_section("Published: LDM, VQGAN-AR and DiGIT (DiGIT paper Tables 2–4)", generation,
                                   PUBLISHED_NOTE))
    if any(m.startswith("token_change") for m in metrics):
        stability = published[published["task"] == "stability"]
        sections.append(_plain_section("Published: token stability (DiGIT paper Table 1)", stability))
    return sections


def _tail(error, lines: int = 8) -> str:
    """The last lines of an error message or traceback."""
    return "\n".join(str(error).strip().splitlines()[-lines:])


def _failed_section(failed: list[dict]) -> Section:
    """Failed runs as a table (run id, stage, error tail); a malformed record still gets a row."""
    frame = pd.DataFrame([{"run_id": f.get("run_id", "?"), "stage": f.get("stage", "?"),
                           "error": _tail(f.get("error", ""))} for f in failed], columns=["run_id", "stage", "error"])
    note = f"{len(failed)} run(s) failed; they are not in the tables." if failed else "No run failed."
    return _plain_section("Failed runs", frame, note)


def read_published(path: Path) -> pd.DataFrame:
    """baselines/published.csv as text, so that numbers print exactly as the paper writes them ("9.10")."""
    if not Path(path).is_file():
        raise UserError(f"published results file {path} not found; pass --published baselines/published.csv")
    return pd.read_csv(path, dtype=str)


# ------------------------------------------------------------------------------------------------ rendering
def _arrow(column: str) -> str:
    """' ↑' or ' ↓' after a metric name in a header; '' for columns without a direction."""
    direction = higher_is_better(column)
    return "" if direction is None else (" ↑" if direction else " ↓")


def _md_table(section: Section) -> str:
    text = section.text.map(lambda v: v.replace("|", r"\|").replace("\n", "<br>"))
    text = text.mask(section.bold, "**" + text + "**")
    header = [c + _arrow(c) for c in text.columns]
    lines = [header, ["---"] * len(header), *text.values.tolist()]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def _styler(section: Section, escape: str, uuid: str):
    """pandas Styler of a section: escaped cells, ↑/↓ in the header, bold as CSS (LaTeX: \\bfseries)."""
    header = {c: c + _arrow(c) for c in section.text.columns}
    bold = section.bold.rename(columns=header).map(lambda b: "font-weight: bold" if b else "")
    return (section.text.rename(columns=header).style.set_uuid(uuid).hide(axis="index")
            .format(escape=escape).format_index(escape=escape, axis=1).apply(lambda _: bold, axis=None))


def _md_page(title: str, sections: list[Section]) -> str:
    parts = [f"# {title}"]
    for s in sections:
        parts += [f"## {s.title}", s.note, _md_table(s)]
    return "\n\n".join(p for p in parts if p) + "\n"


def _tex_page(title: str, sections: list[Section]) -> str:
    parts = [f"% {title}. Generated by digit_bench.report; needs \\usepackage{{booktabs}}."]
    for i, s in enumerate(sections):
        tex = _styler(s, "latex", f"t{i}").to_latex(hrules=True, convert_css=True, column_format="l" * s.text.shape[1])
        parts += [f"% {s.title}", re.sub("[↑↓]", lambda m: TEX_ARROWS[m.group()], tex)]
    return "\n".join(parts)


# After load, the page records how many of its images decoded; tests read this from a headless-browser DOM dump.
_IMAGE_CHECK = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  document.body.dataset.imagesTotal = images.length;
  document.body.dataset.imagesLoaded = images.filter((img) => img.complete && img.naturalWidth > 0).length;
});
</script>"""
_CSS = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:2px 6px;white-space:pre-wrap;text-align:left}img{max-width:48%}")


def _index_html(title: str, pages: list[tuple[str, str, list[Section]]], figures: list[Path]) -> str:
    """One page: links to the files, every section as an HTML table, every figure as a relative <img>."""
    body = [f"<h1>{html.escape(title)}</h1>",
            "<p>" + " · ".join(f'<a href="{f}">{f}</a>' for f in
                               ("results.csv", "results.parquet", "table.md", "table.tex", "comparison.md",
                                "failed.md")) + "</p>"]
    for p, (_, page_title, sections) in enumerate(pages):
        body.append(f"<h2>{html.escape(page_title)}</h2>")
        for s, section in enumerate(sections):
            body += [f"<h3>{html.escape(section.title)}</h3>", f"<p>{html.escape(section.note)}</p>",
                     _styler(section, "html", f"p{p}s{s}").to_html()]
    body.append("<h2>Figures</h2>")
    body += [f'<figure><img src="{f.name}" alt="{f.stem}"><figcaption>{f.name}</figcaption></figure>'
             for f in figures]
    return (f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style></head>\n<body>\n" + "\n".join(body) + f"\n{_IMAGE_CHECK}\n</body></html>\n")


# ------------------------------------------------------------------------------------------------ figures
def _varies(df: pd.DataFrame, col: Optional[str]) -> bool:
    return col is not None and col in df and df[col].nunique() > 1


def _fd_column(runs: pd.DataFrame) -> Optional[str]:
    """The Fréchet distance to plot: Inception FID if measured, else the first fd_<extractor> that varies."""
    candidates = ["fid", *sorted(c for c in runs if re.fullmatch(r"fd_[a-z0-9]+", c))]
    return next((c for c in candidates if _varies(runs, c)), None)


def _with_hue(df: pd.DataFrame, prefer: Optional[str] = None, exclude: tuple = ()) -> tuple[pd.DataFrame, str]:
    """Colour by `prefer` if it varies, else by a "config" label of every varying config column but `exclude`."""
    if _varies(df, prefer):
        return df.assign(**{prefer: df[prefer].map(_fmt_key)}), prefer
    cols = [c for c in ["generator", *config_columns(df)] if c not in exclude and _varies(df, c)]
    labels = df[cols].apply(lambda r: ", ".join(f"{c}={_fmt_key(v)}" for c, v in r.items()), axis=1) if cols else "all"
    return df.assign(config=labels), "config"


def _plot(data: pd.DataFrame, x: str, y: str, hue: str, kind: str, log_base: Optional[int] = None) -> Figure:
    """A line plot (mean ± sd over seeds) or a scatter plot (one point per run), legend below the axes.

    The x axis is logarithmic when `log_base` is given and x spans at least one factor of it.
    """
    fig = Figure(figsize=(6.5, 5), layout="constrained")
    ax = fig.subplots()
    if kind == "line":
        sns.lineplot(data=data, x=x, y=y, hue=hue, errorbar="sd", marker="o", ax=ax)
    else:
        sns.scatterplot(data=data, x=x, y=y, hue=hue, ax=ax)
    if log_base and data[x].max() >= log_base * data[x].min() > 0:
        ax.set_xscale("log", base=log_base)
    ax.set(xlabel=x + _arrow(x), ylabel=y + _arrow(y))
    sns.move_legend(ax, "upper left", bbox_to_anchor=(0, -0.12), fontsize="small", title_fontsize="small")
    return fig


def _fd_vs_k(runs, fd):
    if fd is None or not _varies(runs, "tokenizer.k"):
        return None
    data, hue = _with_hue(runs, "backbone.name", exclude=("tokenizer.k",))
    return _plot(data, "tokenizer.k", fd, hue, "line", log_base=2), f"fig_{fd}_vs_tokenizer.k.png"


def _fd_vs_params(runs, fd):
    if fd is None or not _varies(runs, "params"):
        return None
    data, hue = _with_hue(runs, "generator")
    return _plot(data, "params", fd, hue, "scatter", log_base=10), f"fig_{fd}_vs_params.png"


def _probe_vs_layer(runs, fd):
    if "probe_curve" not in runs:
        return None
    curves = runs.dropna(subset=["probe_curve"])
    long = curves.assign(probe_top1=curves["probe_curve"].map(json.loads)).explode("probe_top1")
    long = long.assign(layer=long.groupby(level=0).cumcount()).reset_index(drop=True)  # position in probe_curve
    if long["layer"].nunique() < 2:
        return None
    data, hue = _with_hue(long.astype({"probe_top1": float}))
    fig = _plot(data, "layer", "probe_top1", hue, "line")
    fig.axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig, "fig_probe_top1_vs_layer.png"


def _token_change_vs_snr(runs, fd):
    snr_of = {c: float(m.group(1)) for c in runs if (m := re.fullmatch(r"token_change_snr([0-9.]+)", c))}
    if len(snr_of) < 2:
        return None
    data, hue = _with_hue(runs)
    long = data.melt(id_vars=[hue], value_vars=list(snr_of), var_name="column", value_name="token_change")
    long["snr_db"] = long["column"].map(snr_of)
    return _plot(long, "snr_db", "token_change", hue, "line"), "fig_token_change_vs_snr.png"


def _fd_vs_stability(runs, fd):
    x = "token_change_snr20"
    if fd is None or not _varies(runs, x):
        return None
    data, hue = _with_hue(runs)
    return _plot(data, x, fd, hue, "scatter"), f"fig_{fd}_vs_{x}.png"


def _fd_vs_cost(runs, fd):
    x = next((c for c in ("cost.total.device_hours", "cost.total.wall_s") if _varies(runs, c)), None)
    if fd is None or x is None:
        return None
    data, hue = _with_hue(runs)
    return _plot(data, x, fd, hue, "scatter", log_base=10), f"fig_{fd}_vs_{x}.png"


# Each takes (run rows, FD column or None) and returns (figure, file name), or None when its columns do not vary.
FIGURES = (_fd_vs_k, _fd_vs_params, _probe_vs_layer, _token_change_vs_snr, _fd_vs_stability, _fd_vs_cost)


def figures_from_csv(csv_path: Path, out_dir: Path) -> list[Path]:
    """Draw, from results.csv alone, each figure whose columns exist with more than one value.

    Old `fig_*.png` files in `out_dir` are removed first, so the folder holds exactly the figures of this CSV.

    Returns:
        The PNG paths written, in FIGURES order.
    """
    df = pd.read_csv(csv_path)
    runs = df[df["row_kind"] == "run"]
    fd = _fd_column(runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("fig_*.png"):
        old.unlink()
    paths = []
    for draw in FIGURES:
        drawn = draw(runs, fd)
        if drawn:
            fig, name = drawn
            fig.savefig(out_dir / name, dpi=120)
            paths.append(out_dir / name)
    return paths


# ------------------------------------------------------------------------------------------------ entry points
def write_report(rows: list[dict], out_dir: Path, *, sweep: str, profile: str, swept_keys: list[str],
                 failed: list[dict], published_csv: Path) -> dict:
    """Write every report file of one sweep and profile into `out_dir`.

    Args:
        rows: one flat metrics.json per run (and per real-data ceiling, `row_kind="ceiling"`).
        swept_keys: the dotted config columns of the sweep; "seed" is averaged over, never grouped by.
        failed: one dict per failed run with "run_id", "stage" and "error" (a message or traceback).
        published_csv: baselines/published.csv.

    Returns:
        Paths of the files written (by name, plus "figures": a list), "n_runs" and "n_failed".
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    title = f"{sweep}/{profile}"
    failures = [_failed_section(failed)]
    (out_dir / "failed.md").write_text(_md_page(f"{title}: failed runs", failures))
    if not rows:
        raise UserError(f"no finished run in {title} ({len(failed)} failed, see {out_dir / 'failed.md'}); "
                        "fix the failures and rerun the sweep")
    df = results_frame(rows, swept_keys)
    keys = _group_keys(df, swept_keys)
    df.to_csv(out_dir / "results.csv", index=False)
    df.to_parquet(out_dir / "results.parquet", index=False)
    metrics = metric_columns(df, keys)
    table = _cell_sections(df, keys, [m for m in metrics if _headline(m)], "", _protocol_note(df))
    comparison = _comparison_sections(df, keys, metrics, read_published(published_csv), title)
    pages = [("table", f"{title}: results", table), ("comparison", f"{title}: measured vs published", comparison),
             ("failed", f"{title}: failed runs", failures)]
    for name, page_title, sections in pages[:2]:
        (out_dir / f"{name}.md").write_text(_md_page(page_title, sections))
    (out_dir / "table.tex").write_text(_tex_page(f"{title}: results", table))
    figures = figures_from_csv(out_dir / "results.csv", out_dir)
    (out_dir / "index.html").write_text(_index_html(title, pages, figures))
    files = ("results.csv", "results.parquet", "table.md", "table.tex", "comparison.md", "failed.md", "index.html")
    return {**{f.replace(".", "_"): out_dir / f for f in files}, "figures": figures,
            "n_runs": int((df["row_kind"] == "run").sum()), "n_failed": len(failed)}


def load_rows(paths) -> list[dict]:
    """Read one JSON object per file."""
    rows = []
    for path in paths:
        try:
            rows.append(json.loads(Path(path).read_text()))
        except json.JSONDecodeError as e:
            raise UserError(f"{path} is not valid JSON ({e}); delete it and rerun that run") from e
    return rows


def report_from_dir(rows_dir: Path, out_dir: Path, sweep: str, profile: str, published_csv: Path) -> dict:
    """Report every `rows_dir/*.json`: a row with an "error" key is a failed run, any other is a metrics row.

    The swept keys are the dotted config columns the rows carry (`config_columns`).
    """
    paths = sorted(Path(rows_dir).glob("*.json"))
    if not paths:
        raise UserError(f"no run rows in {rows_dir}; run the sweep first (digit-bench sweep ...)")
    rows = load_rows(paths)
    done = [r for r in rows if "error" not in r]
    failed = [r for r in rows if "error" in r]
    return write_report(done, out_dir, sweep=sweep, profile=profile, swept_keys=config_columns(pd.DataFrame(done)),
                        failed=failed, published_csv=published_csv)


def main(argv: Optional[list[str]] = None) -> int:
    """`digit-bench report SWEEP`: write results/<sweep>/<profile>/ and print one JSON summary to stdout."""
    parser = argparse.ArgumentParser(prog="digit-bench report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep", help="sweep name (the `name:` of the sweep file)")
    parser.add_argument("--profile", default="tiny", help="profile the sweep ran with")
    parser.add_argument("--root", type=Path, default=Path("runs"), help="runs root holding runs_index/")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default results/<sweep>/<profile>)")
    parser.add_argument("--published", type=Path, default=Path("baselines/published.csv"))
    args = parser.parse_args(argv)
    out = args.out or Path("results") / args.sweep / args.profile
    summary = report_from_dir(args.root / "runs_index" / args.sweep / args.profile, out, args.sweep, args.profile,
                              args.published)
    print(json.dumps(summary, default=str))
    return 0
