"""Turn the metrics rows of one sweep and profile into a results folder a researcher can read.

`write_report` writes into `results/<sweep>/<profile>/`:

    results.csv, results.parquet   tidy, one row per run (lists as JSON text) with a `protocol` card column
    table.md, table.tex            main table (mean and 95% interval, significance marks, gap to ceiling), ceilings,
                                   full table (mean ± std of every headline metric), protocol card, provenance
    comparison.md                  ours-vs-paper verdict per claim, computed from the rows, then the published rows
    failed.md, failed.json         failed runs: run id, stage, the tail of the error
    samples/<row>.png              the 8×8 sample grid of every run and ceiling row (copied from the artifact store)
    runs/<run>/                    resolved config.yaml, the evaluation manifest.json, the generator's log.jsonl
    curves.csv                     training loss per step of every trained model of the sweep (from log.jsonl)
    fig_*.png, fig_*.pdf           figures drawn from results.csv and curves.csv alone (`figures_from_csv`)
    provenance.json, index.html    where and with what the numbers were made; the page of all of the above
and merges every `external/<label>.csv` of `out_dir` (samples generated elsewhere, scored by `digit-bench score`) into
the main table, comparison.md and index.html as rows labelled "external · <label>" (results.csv keeps our rows only);
and refreshes the landing page `results/index.html` over every `<sweep>/<profile>/` folder.

Significance: per metric, the best cell's 95% interval of the difference to every other cell decides: paired over
seeds when the cells share >= 2 seeds, Welch otherwise (>= 2 seeds each), else the per-run `<m>_ci_low/_ci_high`
intervals must not overlap. Cells indistinguishable from the best are marked ≈; the best is bold only when it is
separated from every other cell; without any interval nothing is marked. An external row takes part in the marks only
when `protocol_differs` is false (scored on our protocol); a missing or true value leaves it unmarked.

Ideas from: timm `results/*.csv` (one tidy CSV per sweep; plots regenerated from it), lm-eval `make_table`
(↑/↓ from a higher-is-better map), timm `bulk_runner.py` (failed runs listed beside the results, never fatal).

CLI: `digit-bench report ablations/backbones.yaml --profile tiny` (or the sweep name, or a results folder to
re-render it from its results.csv).
"""

from __future__ import annotations

import html
import json
import math
import platform
import re
import shutil
import time
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
from scipy import stats

from digit_bench.config import ExperimentConfig
from digit_bench.errors import UserError
from digit_bench.metric_registry import BY_NAME, family, metric

# Column order in the tables, by family; families not listed go just before "params".
DISPLAY_ORDER = ("fid", "fd", "is", "kid", "precision", "recall", "class_acc", "probe_top1", "probe_top5",
                 "probe_layer", "codebook_usage", "codebook_perplexity", "token_change", "cos_sim",
                 "params", "flops", "cost")
ID_COLUMNS = ("run_id", "sweep", "profile", "row_kind", "generator", "seed")
NOT_METRICS = ("seed", "num_samples")  # numeric columns that describe a run instead of measuring it
NOT_CONFIG = ("cost.", "protocol.", "artifacts.")  # dotted columns that are not swept keys
CHOICES = ("probe_layer",)  # integer choices: shown as the set of values over seeds, never averaged
FLAGS = ("circular",)  # per-run booleans; a cell is flagged when any of its seeds is
LEVEL = 0.95
KEY_NAMES = {"tokenizer.k": "K", "gpt.size": "", "stage2.size": "stage-2 size", "backbone.name": "", "stage2.kind": "stage 2", "backbone.layer": "layer",
             "ldm.denoiser": "", "tokenizer.seed": "K-Means seed"}
# Published rows shown in comparison.md (method prefix), and the paper's claims each sweep can test.
PUBLISHED_METHODS = r"LDM|VQGAN|DiGIT|VQ only"
PUBLISHED_NOTE = ("Published numbers are ImageNet 256×256, torch-fidelity FID/IS on 50k samples (DiGIT paper §7). "
                  "Ours follow the protocol card on a different data set and scale: compare orderings, not values.")
TEX_ARROWS = {"↓": r"$\downarrow$", "↑": r"$\uparrow$"}
# The training loss of each trained role, as it is named in that stage's log.jsonl (first key present wins).
LOSS_KEYS = {"vqgan": ("rec_loss",), "vae": ("rec_l1", "loss/main")}  # the GAN/KL terms hide the trend
DEFAULT_LOSS_KEYS = ("loss/main", "loss")
IMAGE_STAGES = ("render", "ldm_sample", "real_images")
EXTERNAL_TAG = "external · "
EXTERNAL_NOTE = ("External rows (\"external · <label>\"): samples generated elsewhere and scored on this sweep's "
                 "evaluation path (`digit-bench score`), one run each, with their provenance beside them. They take "
                 "part in the ≈/bold marks only when their protocol is ours (protocol_differs false); otherwise they "
                 "are never marked and the protocol note says what differs.")


# ------------------------------------------------------------------------------------------------ columns
SEED_SCOPES = {  # what the ± over seeds covers, by the runs' seed_scope
    "full": "a seed re-keys every stochastic stage (SSL pretraining, K-Means, VQGAN, stage 2, stage 1, sampling, LDM, "
            "judge)",
    "downstream": "a seed re-keys every stochastic stage downstream of the encoder (K-Means, VQGAN, stage 2, stage 1, "
                  "sampling, LDM, judge); the SSL backbones (and the random ViT) are trained once and shared by all "
                  "seeds, as a frozen pretrained encoder is",
    "generator": "a seed re-keys the stage-1 GPT, its samples, the probe and the LDM only (SSL backbone, K-Means, "
                 "VQGAN, stage-2 decoder and judge are shared by all seeds)",
}

def higher_is_better(name: str) -> Optional[bool]:
    """True/False for a metric with a direction; None for keys, counts and sizes."""
    m = metric(name)
    return None if m is None else m.higher_is_better


def _display_key(name: str) -> tuple:
    """Sort key: family rank from DISPLAY_ORDER, then the name with its numbers compared as numbers."""
    fam = family(name, DISPLAY_ORDER)
    rank = DISPLAY_ORDER.index(fam) if fam else DISPLAY_ORDER.index("params") - 0.5
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


def _headline(name: str) -> bool:
    """Columns of the full table: quality metrics, sizes and total cost (per-stage costs stay in the CSV)."""
    return not name.startswith("cost.") or name.startswith("cost.total.")


def primary_fd(df: pd.DataFrame) -> Optional[str]:
    """The Fréchet distance of the tables: Inception FID if measured, else the first fd_<extractor> with values."""
    candidates = ["fid", *sorted(c for c in df if re.fullmatch(r"fd_[a-z0-9]+", c))]
    return next((c for c in candidates if c in df and df[c].notna().any()), None)


def main_metrics(df: pd.DataFrame) -> list[str]:
    """The compact table's columns: the primary FD and its extractor's IS/precision/recall, then one of each other
    headline family that the rows measure."""
    fd = primary_fd(df)
    extractor = "" if fd in (None, "fid") else fd.removeprefix("fd")
    wanted = [fd, "is" + extractor if extractor else "is", f"precision{extractor}", f"recall{extractor}", "class_acc",
              "probe_top1", "acc_ol", "knn_ol", "token_change_snr20", "params", "cost.total.wall_s"]
    return [c for c in wanted if c and c in df and pd.api.types.is_numeric_dtype(df[c]) and df[c].notna().any()]


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


# ------------------------------------------------------------------------------------------------ labels
def _fmt_key(value) -> str:
    """A key or plain cell as text: whole floats without '.0', missing as '–'."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "–" if pd.isna(value) else str(value)


def _is_generator(name) -> bool:
    from digit_bench.registry import GENERATORS

    return isinstance(name, str) and name in GENERATORS


def generator_label(name: str) -> str:
    """A registered generator's label ("DiGIT", "VQGAN-AR"); any other name as it is."""
    from digit_bench.registry import GENERATORS

    return GENERATORS.get(name).label if _is_generator(name) else name


def key_name(key: str, keys: list[str]) -> str:
    """A swept key as a label shows it: its KEY_NAMES name, else its last part, else (when another swept key ends
    the same way: `sample.top_p` and `stage2.top_p`) the whole dotted key."""
    if key in KEY_NAMES:
        return KEY_NAMES[key]
    short = key.split(".")[-1]
    return key if any(k != key and k.split(".")[-1] == short for k in keys) else short


def row_label(row: pd.Series, keys: list[str]) -> str:
    """A human name for a run cell or a ceiling row: "DiGIT · dino_tiny · K=256", "real data (val)"."""
    gen = str(row.get("generator", ""))
    if row.get("row_kind") == "ceiling":
        source = row.get("source")
        if source == "real" or gen.endswith("-val"):
            return "real data (val)"
        if source == "reconstruction" or gen == "vq_recon":
            return "VQ only (VQGAN reconstruction)"
        m = re.fullmatch(r"digit_vq_ceiling-(.+)-k(\d+)", gen)
        return f"DiGIT+VQ ceiling · {m.group(1)} · K={m.group(2)}" if m else gen
    parts = [generator_label(gen)]
    for k in keys:
        if k == "generator" or pd.isna(row.get(k)):
            continue
        name = key_name(k, keys)
        parts.append(f"{name}={_fmt_key(row[k])}" if name and name != "stage 2" else
                     f"{name} {_fmt_key(row[k])}" if name else _fmt_key(row[k]))
    return " · ".join(parts)


def _human(value: float) -> str:
    """12,345,678 -> '12.3M'; sizes, FLOPs and seconds as a reader says them."""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}"


def _num(value: float, digits: int = 4) -> str:
    if pd.isna(value):
        return "–"
    if abs(value) >= 1e5:
        return _human(value)
    return f"{value:.{digits}g}"


# ------------------------------------------------------------------------------------------------ statistics
def t_interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Student-t interval of the mean of >= 2 values."""
    values = np.asarray(values, dtype=float)
    half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return values.mean() - half, values.mean() + half


def _constant(values) -> bool:
    """True when the values are equal up to float rounding (a seed-independent metric)."""
    values = np.asarray(values, dtype=float)
    return np.ptp(values) <= 1e-9 * max(1.0, np.abs(values).max())


@dataclass
class Cell:
    """The runs of one table cell for one metric: values by seed, and per-run interval bounds when there are some."""
    values: pd.Series  # seed -> value
    low: Optional[float] = None
    high: Optional[float] = None

    @property
    def mean(self) -> float:
        return float(self.values.mean()) if len(self.values) else float("nan")

    def interval(self) -> Optional[tuple[float, float]]:
        """95% t-interval over seeds (>= 2 seeds that differ), else the per-run interval of a single run."""
        if len(self.values) >= 2 and not _constant(self.values):
            return t_interval(self.values.to_numpy())
        if len(self.values) == 1 and self.low is not None and not pd.isna(self.low):
            return self.low, self.high
        return None


def differ(a: Cell, b: Cell, level: float = LEVEL) -> tuple[Optional[bool], str]:
    """Whether two cells differ at `level`, and the test used; (None, "none") when no interval exists."""
    common = a.values.index.intersection(b.values.index)
    if len(common) >= 2:
        d = (b.values[common] - a.values[common]).to_numpy()
        if _constant(d):
            return (None, "none") if d.mean() != 0 else (False, "paired")  # no noise measured, or identical
        lo, hi = t_interval(d, level)
        return not lo <= 0 <= hi, "paired t"
    if len(a.values) >= 2 and len(b.values) >= 2:
        va, vb = a.values.var(ddof=1) / len(a.values), b.values.var(ddof=1) / len(b.values)
        if _constant(a.values) and _constant(b.values):
            return (None, "none") if a.mean != b.mean else (False, "Welch t")
        dof = (va + vb) ** 2 / (va ** 2 / (len(a.values) - 1) + vb ** 2 / (len(b.values) - 1))
        half = stats.t.ppf(0.5 + level / 2, dof) * math.sqrt(va + vb)
        return abs(b.mean - a.mean) > half, "Welch t"
    ia, ib = a.interval(), b.interval()
    if ia and ib:
        return ia[1] < ib[0] or ib[1] < ia[0], "interval overlap"
    return None, "none"


SEPARATION_CAP = 50  # seeds_to_separate looks no further


def seeds_to_separate(a: Cell, b: Cell, level: float = LEVEL) -> str:
    """How many paired seeds the claim's test needs to separate A from B if the mean and the spread of their per-seed
    difference stayed as measured: the smallest n with t(n-1) · sd / sqrt(n) < |mean|. A projection from the seeds
    at hand (with 2 seeds its sd is itself uncertain), not a power analysis; "–" without >= 2 paired seeds."""
    common = a.values.index.intersection(b.values.index)
    if len(common) < 2:
        return "–"
    d = (b.values[common] - a.values[common]).to_numpy()
    mean, sd = abs(d.mean()), d.std(ddof=1)
    if sd == 0:
        return str(len(common)) if mean else "–"
    for n in range(2, SEPARATION_CAP + 1):
        if stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n) < mean:
            return str(n)
    return f"> {SEPARATION_CAP}"


def cells(frame: pd.DataFrame, keys: list[str], name: str) -> list[Cell]:
    """One Cell per group of `frame` (grouped by keys, sorted), for column `name`."""
    out = []
    for _, g in frame.groupby(keys, dropna=False, sort=True) if keys else [(None, frame)]:
        values = g.set_index("seed")[name].dropna() if "seed" in g else g[name].dropna().reset_index(drop=True)
        low = g[f"{name}_ci_low"].iloc[0] if f"{name}_ci_low" in g and len(g) == 1 else None
        high = g[f"{name}_ci_high"].iloc[0] if f"{name}_ci_high" in g and len(g) == 1 else None
        out.append(Cell(values.astype(float), low, high))
    return out


def rank_marks(group: list[Cell], higher: Optional[bool]) -> tuple[list[str], str]:
    """Per cell: "best" (bold: separated from all), "tie" (≈: indistinguishable from the best), or "".

    Returns the marks and the tests used, or all "" when the metric has no direction, no spread of means, or no
    interval to decide with.
    """
    means = np.array([c.mean for c in group])
    ok = ~np.isnan(means)
    if higher is None or ok.sum() < 2 or np.nanmax(means) == np.nanmin(means):
        return [""] * len(group), ""
    best = int(np.nanargmax(means) if higher else np.nanargmin(means))
    tests, marks = set(), [""] * len(group)
    for i, c in enumerate(group):
        if i == best or not ok[i]:
            continue
        d, how = differ(group[best], c)
        if d is None:
            return [""] * len(group), ""
        tests.add(how)
        marks[i] = "" if d else "tie"
    marks[best] = "tie" if "tie" in marks else "best"
    return marks, ", ".join(sorted(tests))


# ------------------------------------------------------------------------------------------------ tables
def aggregate(df: pd.DataFrame, keys: list[str], metrics: list[str]) -> pd.DataFrame:
    """Per (row_kind, *keys) cell: n runs, flags (any seed), and `<metric>_mean`, `<metric>_std` (ddof=1)."""
    groups = df.groupby(["row_kind", *keys], dropna=False, sort=True)
    agg = groups[metrics].agg(["mean", "std"])
    agg.columns = [f"{m}_{stat}" for m, stat in agg.columns]
    parts = [groups.size().rename("n"), agg]
    flags = [f for f in FLAGS if f in df]
    if flags:
        parts.insert(1, groups[flags].agg(lambda s: bool(s.eq(True).any())))
    return pd.concat(parts, axis=1).reset_index()


@dataclass
class Table:
    """One table: display strings, a same-shaped frame of marks ("best", "tie", ""), a note, and per-row extras."""
    title: str
    text: pd.DataFrame
    marks: pd.DataFrame = None
    note: str = ""
    sort: pd.DataFrame = None  # numeric sort keys for the HTML table (same shape), NaN where the text sorts itself
    tag: str = ""  # HTML id

    def __post_init__(self):
        if self.marks is None:
            self.marks = pd.DataFrame("", index=self.text.index, columns=self.text.columns)
        if self.sort is None:
            self.sort = pd.DataFrame(np.nan, index=self.text.index, columns=self.text.columns)


def _interval_text(c: Cell) -> str:
    interval = c.interval()
    if pd.isna(c.mean):
        return "–"
    if interval is None:
        return _num(c.mean)
    return f"{_num(c.mean)} [{_num(interval[0], 3)}, {_num(interval[1], 3)}]"


def _spread_text(c: Cell, name: str) -> str:
    """'mean ± std' (ddof=1); the mean alone for one seed or a seed-independent metric; a choice as its values."""
    if pd.isna(c.mean):
        return "–"
    if name in CHOICES:
        return ", ".join(_fmt_key(v) for v in sorted(set(c.values)))
    if name in ("params", "flops") or name.startswith("cost."):
        return _human(c.mean) if len(set(c.values)) == 1 else f"{_human(c.mean)} ± {_human(c.values.std(ddof=1))}"
    if len(c.values) < 2 or _constant(c.values):
        return _num(c.mean)
    return f"{_num(c.mean)} ± {c.values.std(ddof=1):.2g}"


def _ceiling_gaps(runs: pd.DataFrame, ceilings: pd.DataFrame, keys: list[str], fd: Optional[str]) -> list[str]:
    """Per run cell: the mean over its runs of each run's FD minus its own ceiling's FD ("DiGIT+VQ" for DiGIT, "VQ
    only" for VQGAN-AR); with full-pipeline seeds every seed has its own decoders, so the gap is paired per seed."""
    if fd is None or "artifacts.ceiling_metrics" not in runs:
        return []
    gaps = []
    for _, g in runs.groupby(keys, dropna=False, sort=True):
        gap = (g[fd] - own_ceilings(g, ceilings, fd)).dropna()
        gaps.append("–" if gap.empty else f"{gap.mean():+.3g}")
    return gaps


def own_ceilings(runs: pd.DataFrame, ceilings: pd.DataFrame, name: str) -> pd.Series:
    """Per run row: `name` of the ceiling row its `artifacts.ceiling_metrics` points to (NaN when it has none)."""
    if "artifacts.ceiling_metrics" not in runs or not len(ceilings) or name not in ceilings:
        return pd.Series(np.nan, index=runs.index)
    return runs["artifacts.ceiling_metrics"].map(ceilings.set_index("run_id")[name]).astype(float)


def cell_table(runs: pd.DataFrame, keys: list[str], names: list[str], *, intervals: bool, title: str, tag: str,
               gaps: Optional[list[str]] = None, note: str = "", mark: bool = True,
               externals: Optional[pd.DataFrame] = None) -> Table:
    """Run cells as a table: label, n, one column per metric (with marks), the gap to the ceiling; then one row per
    external row, marked together with the run cells only when its protocol is ours."""
    groups = list(runs.groupby(keys, dropna=False, sort=True)) if keys else [(None, runs)]
    ext = externals if externals is not None else runs.iloc[:0]
    ranked = [_same_protocol(r) for _, r in ext.iterrows()]
    text = pd.DataFrame({"label": [row_label(g.iloc[0], keys) for _, g in groups] + [EXTERNAL_TAG + str(r["generator"])
                                                                                   for _, r in ext.iterrows()],
                         "n": [str(len(g)) for _, g in groups] + ["1"] * len(ext)})
    flagged = [bool(g[f].eq(True).any()) for f in FLAGS if f in runs for _, g in groups] \
        + [str(r.get(f)).lower() == "true" for f in FLAGS if f in runs for _, r in ext.iterrows()]
    if any(flagged):
        text["circular"] = ["yes" if f else "" for f in flagged]
    if len(ext):
        text["external"] = [""] * len(groups) + [_external_text(r) for _, r in ext.iterrows()]
    marks = pd.DataFrame("", index=text.index, columns=text.columns)
    sort = pd.DataFrame(np.nan, index=text.index, columns=text.columns)
    for name in names:
        group = cells(runs, keys, name)
        extra = [Cell(pd.Series([r.get(name)], index=["external"], dtype=float).dropna(), r.get(f"{name}_ci_low"),
                      r.get(f"{name}_ci_high")) for _, r in ext.iterrows()]
        if all(pd.isna(c.mean) for c in group + extra):
            continue
        header = name + _arrow(name)
        text[header] = [_interval_text(c) if intervals and name not in CHOICES and _headline_interval(name)
                        else _spread_text(c, name) for c in group + extra]
        if mark and _headline_interval(name):  # external cells on another protocol are left out of the ranking
            in_rank = group + [c for c, ok in zip(extra, ranked) if ok]
            got = iter(rank_marks(in_rank, higher_is_better(name))[0])
            marks[header] = [next(got) for _ in group] + [next(got) if ok else "" for ok in ranked]
        else:
            marks[header] = ""
        sort[header] = [c.mean for c in group + extra]
    if gaps:
        gaps = gaps + ["–"] * len(ext)
        text["Δ ceiling"] = gaps
        marks["Δ ceiling"] = ""
        sort["Δ ceiling"] = [float(g) if g != "–" else np.nan for g in gaps]
    return Table(title, text, marks, note, sort, tag)


def _same_protocol(row: pd.Series) -> bool:
    """An external row scored on our protocol: `protocol_differs` recorded as false (missing counts as differing)."""
    return str(row.get("protocol_differs")).strip().lower() in ("false", "0")


def _external_text(row: pd.Series) -> str:
    """Where an external row's samples came from, and what differs in its protocol if anything."""
    try:
        prov = json.loads(row["provenance"]) if isinstance(row.get("provenance"), str) else {}
    except json.JSONDecodeError:
        prov = {"input": row["provenance"]}
    parts = [str(prov.get("input", row.get("source", "?")))]
    if prov.get("sha256"):
        parts.append(f"sha256 {prov['sha256'][:12]}")
    if prov.get("files", 1) != 1:
        parts.append(f"{prov['files']} files")
    text = "provenance: " + ", ".join(parts)
    if _same_protocol(row):
        return text + "; protocol: ours"
    note = row.get("protocol_note")
    return text + "; protocol differs: " + (note if isinstance(note, str) and note else "not recorded")


def read_external(out_dir: Path) -> pd.DataFrame:
    """Every `out_dir/external/*.csv` (rows written by `digit-bench score`) as one frame, `row_kind=external`."""
    frames = []
    for path in sorted((Path(out_dir) / "external").glob("*.csv")):
        try:
            frame = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise UserError(f"{path} is not a readable CSV ({e}); delete it and rerun `digit-bench score`") from e
        if "generator" not in frame:
            raise UserError(f"{path} has no generator column; rewrite it with `digit-bench score`")
        frames.append(frame.assign(row_kind="external"))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["generator", "row_kind"])


def external_table(ext: pd.DataFrame, names: list[str]) -> Table:
    """The external rows alone, for comparison.md and the page: label, provenance and protocol, headline metrics."""
    text = pd.DataFrame({"label": [EXTERNAL_TAG + str(r["generator"]) for _, r in ext.iterrows()],
                         "external": [_external_text(r) for _, r in ext.iterrows()],
                         "ranked with our runs": ["yes" if _same_protocol(r) else "no" for _, r in ext.iterrows()]})
    sort = pd.DataFrame(np.nan, index=text.index, columns=text.columns)
    for name in names:
        if name not in ext or ext[name].isna().all():
            continue
        group = [Cell(pd.Series([r[name]]).dropna().astype(float), r.get(f"{name}_ci_low"), r.get(f"{name}_ci_high"))
                 for _, r in ext.iterrows()]
        text[name + _arrow(name)] = [_interval_text(c) if _headline_interval(name) else _spread_text(c, name)
                                     for c in group]
        sort[name + _arrow(name)] = [c.mean for c in group]
    return Table("External samples", text, None, EXTERNAL_NOTE, sort, "external")


def _headline_interval(name: str) -> bool:
    """Quality metrics carry an interval in the main table; sizes and costs do not."""
    return name not in ("params", "flops") and not name.startswith("cost.")


def ceiling_table(ceilings: pd.DataFrame, names: list[str], keys: list[str]) -> Table:
    """The real-data and decoder ceilings, once, never marked; ceilings of one tokenizer that differ in a swept
    setting (a decoder's top_p) name it."""
    labels = pd.Series([row_label(r, []) for _, r in ceilings.iterrows()], index=ceilings.index)
    for _, same in ceilings.groupby(labels):
        differ = [k for k in keys if k in same and k != "generator" and same[k].map(str).nunique() > 1]
        for i, r in same.iterrows():
            labels[i] = row_label(r, []) + "".join(f" · {key_name(k, keys)}={_fmt_key(r[k])}"
                                                   for k in differ if not pd.isna(r[k]))
    groups = [g for _, g in ceilings.groupby(labels, sort=False)]  # one row per label, its seeds pooled like a cell
    text = pd.DataFrame({"label": [labels[g.index[0]] for g in groups], "n": [len(g) for g in groups]})
    sort = pd.DataFrame(np.nan, index=text.index, columns=text.columns)
    for name in names:
        if name not in ceilings or ceilings[name].isna().all():
            continue
        group = [cells(g, [], name)[0] for g in groups]
        text[name + _arrow(name)] = [_interval_text(c) for c in group]
        sort[name + _arrow(name)] = [c.mean for c in group]
    return Table("Ceilings: real data and decoders", text, None,
                 "The best any generator can score on this protocol; never bold. With several seeds (n), a seed "
                 "retrains the decoders, so each ceiling is a mean [95% interval] over seeds like a cell.", sort,
                 "ceilings")


# ------------------------------------------------------------------------------------------------ protocol card
def _protocol_parts(df: pd.DataFrame, fd: Optional[str]) -> dict[str, str]:
    """`protocol_<extractor>` of the rows ("tool | reference ... | N samples | torch"), split into named parts."""
    col = f"protocol_{fd.removeprefix('fd_')}" if fd and fd.startswith("fd_") else "protocol_inception"
    col = col if col in df else next((c for c in df if c.startswith("protocol_") or c == "protocol"), None)
    texts = df[col].dropna().unique() if col else []
    parts = [t.split(" | ") for t in texts if isinstance(t, str)]
    out = {}
    if parts:
        out["extractor"] = "; ".join(sorted({p[0] for p in parts}))
        out["reference"] = "; ".join(sorted({p[1].removeprefix("reference ") for p in parts if len(p) > 1}))
        out["versions"] = "; ".join(sorted({p[-1] for p in parts if len(p) > 3}))
    return out


def _config_of(df: pd.DataFrame) -> dict:
    """The resolved config of the first run row that carries one ({} for rows without)."""
    if "config" not in df:
        return {}
    texts = df.loc[df["row_kind"] == "run", "config"].dropna()
    return json.loads(texts.iloc[0]) if len(texts) else {}


def protocol_card(df: pd.DataFrame) -> dict[str, str]:
    """What every number of the tables was measured with, as label -> text."""
    from digit_bench.data import GREY_DATASETS

    runs = df[df["row_kind"] == "run"]
    fd = primary_fd(df)
    cfg = _config_of(df)
    parts = _protocol_parts(df, fd)
    card = {"metric": f"{fd} ({BY_NAME[family(fd)].label}, ↓)" if fd else "–"}
    card["extractor"] = parts.get("extractor", cfg.get("eval", {}).get("extractor", "–"))
    data = cfg.get("data", {})
    transform = (f"{data.get('name')} at {data.get('image_size')}×{data.get('image_size')} px"
                 + (", grey channel repeated to RGB" if data.get("name") in GREY_DATASETS else "") if data else "–")
    card["reference set"] = f"{parts.get('reference', cfg.get('eval', {}).get('reference', '–'))}; {transform}"
    n = sorted(set(runs["num_samples"].dropna().astype(int))) if "num_samples" in runs else []
    card["samples"] = ", ".join(str(v) for v in n) + " generated images per run" if n else "–"
    seeds = sorted(set(runs["seed"].dropna().astype(int))) if "seed" in runs else []
    scopes = sorted(set(runs["seed_scope"].dropna())) if "seed_scope" in runs else ["generator"]
    scope = "; ".join(f"seed_scope {s}: {SEED_SCOPES.get(s, s)}" for s in scopes)
    card["seeds"] = f"{', '.join(map(str, seeds)) or '–'}; {scope}"
    per_run = (", ".join(sorted(set(df[f"{fd}_interval"].dropna()))) if fd and f"{fd}_interval" in df else
               f"percentile bootstrap of {fd} over the samples ({cfg.get('eval', {}).get('bootstrap', '?')} "
               "resamples): the spread of the estimate, not a calibrated 95% CI")
    card["interval"] = (f"[lo, hi]: 95% Student-t interval of the mean over seeds when a cell has ≥ 2 seeds; "
                        f"for a single run, the per-run interval: {per_run}")
    card["significance"] = ("≈: indistinguishable from the best cell (95%, paired over shared seeds, else Welch, else "
                            "non-overlapping per-run intervals); bold: best and separated from every other cell; "
                            "no mark: the metric has no interval to decide with")
    if parts.get("versions"):
        card["versions"] = parts["versions"]
    return card


def protocol_line(card: dict[str, str]) -> str:
    """The card as one line (the `protocol` column of results.csv)."""
    return " | ".join(f"{k}: {v}" for k, v in card.items())


# ------------------------------------------------------------------------------------------------ claims
@dataclass
class Claim:
    """One claim of the paper this sweep can test: cell A beats cell B on a metric."""
    text: str
    paper: str
    metric: str
    a: str  # which cells: "digit", a baseline generator, a family of SSL_FAMILIES, "largest"/"smallest", a backbone
    b: str


# SSL tokenizer families by backbone-name prefix, for every profile: dino_tiny / moco_tiny here, DINOv2, DINO, MoCo v3
# and iBOT in the paper's Fig. 4a; MAE in both
SSL_FAMILIES = {"discriminative": ("dino", "moco", "ibot"), "reconstructive": ("mae",)}


CLAIMS = (
    Claim("DiGIT beats the same GPT on VQGAN tokens", "Table 3: FID 9.13 vs 24.38", "fd", "digit", "vqgan_ar"),
    Claim("DiGIT beats the latent diffusion model", "Table 3: FID 9.13 vs 39.1 (LDM)", "fd", "digit", "ldm"),
    Claim("Discriminative tokens are more stable than VQ tokens", "Table 1: token change 0.260 vs 0.487 at 20 dB",
          "token_change_snr20", "digit", "vqgan_ar"),
    Claim("DiGIT's GPT learns better features than a GPT on VQ tokens",
          "Table 2: probe 71.7 (DiGIT) vs 61.8 (VIM+VQGAN)", "probe_top1", "digit", "vqgan_ar"),
    Claim("A discriminative SSL tokenizer beats a reconstructive one", "Fig. 4a: DINO-type tokens beat MAE-type",
          "fd", "discriminative", "reconstructive"),
    Claim("An SSL tokenizer beats an untrained one", "§1: the tokenizer's SSL features are what makes DiGIT work",
          "fd", "discriminative", "random_vit"),
    Claim("A larger GPT gives lower FD", "Table 3: FID 9.13 (219M) → 4.59 (732M)", "fd", "largest", "smallest"),
)


def _claim_rows(runs: pd.DataFrame, side: str, name: str) -> Optional[pd.DataFrame]:
    """The runs of the side a claim names: DiGIT, a baseline, a backbone, or a model size (the best cell is picked
    later, `_matched_cells`)."""
    if side == "digit":  # the paper's DiGIT: DINO-family tokens when the sweep has them, else any DiGIT cell
        rows = runs[runs["generator"] == side]
        dino = rows[rows["backbone.name"].astype(str).str.startswith("dino")] if "backbone.name" in rows else rows
        rows = dino if len(dino) else rows
    elif _is_generator(side):
        rows = runs[runs["generator"] == side]
    elif side in SSL_FAMILIES:
        rows = runs[(runs["generator"] == "digit")
                    & runs.get("backbone.name", pd.Series("", index=runs.index)).astype(str).str.startswith(
                        SSL_FAMILIES[side])]
    elif side in ("largest", "smallest"):
        rows = runs[runs["generator"] == "digit"]
        if "params" not in rows or "gpt.size" not in rows or rows["gpt.size"].nunique() < 2:
            return None  # only a sweep over the GPT's size tests it
        target = rows["params"].max() if side == "largest" else rows["params"].min()
        return rows[rows["params"] == target]
    else:
        rows = runs[(runs["generator"] == "digit") & (runs.get("backbone.name") == side)] \
            if "backbone.name" in runs else runs.iloc[:0]
    if rows.empty or name not in rows or rows[name].isna().all():
        return None
    return rows


SIDE_KEYS = ("generator", "backbone.name", "gpt.size", "seed")  # what a claim's side is; other swept keys are settings


def _matched_cells(a: pd.DataFrame, b: pd.DataFrame, keys: list[str], name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A's best cell and B's best cell at the same setting of the other swept keys when the two sides share one (a
    prefix length, the class token), so a claim compares like with like; each side's best cell when they share none."""
    shared = [k for k in keys if k not in SIDE_KEYS and k in a and k in b]
    setting_a = a[shared].map(str).agg("|".join, axis=1) if shared else pd.Series("", index=a.index)
    setting_b = b[shared].map(str).agg("|".join, axis=1) if shared else pd.Series("", index=b.index)
    common = set(setting_a) & set(setting_b)
    if not shared or not common:
        return _best_cell(a, name), _best_cell(b, name)
    best_a = _best_cell(a[setting_a.isin(common)], name)
    if best_a.empty:
        return best_a, b.iloc[:0]
    return best_a, _best_cell(b[setting_b == setting_a[best_a.index[0]]], name)


def _best_cell(rows: pd.DataFrame, name: str) -> pd.DataFrame:
    """The runs of the cell with the best mean `name` among `rows`. A key that a grid group leaves unset is NaN in
    its rows: that is a value of the key like any other (its own cell), never a wildcard or a mismatch."""
    keys = [c for c in config_columns(rows) if rows[c].nunique(dropna=False) > 1]
    if not keys:
        return rows
    means = rows.groupby(keys, dropna=False)[name].mean().dropna()
    if means.empty:
        return rows.iloc[:0]
    best = means.idxmax() if higher_is_better(name) else means.idxmin()
    best = best if isinstance(best, tuple) else (best,)
    return rows[np.logical_and.reduce([rows[k].isna() if pd.isna(v) else rows[k] == v for k, v in zip(keys, best)])]


def claim_table(runs: pd.DataFrame, keys: list[str]) -> Table:
    """Ours vs paper: per testable claim, our two cells with intervals and a verdict computed from them."""
    fd = primary_fd(runs)
    out = []
    for claim in CLAIMS:
        name = fd if claim.metric == "fd" else claim.metric
        if name is None or name not in runs:
            continue
        a, b = _claim_rows(runs, claim.a, name), _claim_rows(runs, claim.b, name)
        if a is None or b is None:
            continue
        a, b = _matched_cells(a, b, keys, name)
        if a.empty or b.empty:  # no cell of one side has the metric at a setting both sides share
            continue
        ca, cb = cells(a, [], name)[0], cells(b, [], name)[0]
        d, how = differ(ca, cb)
        better = (ca.mean > cb.mean) == bool(higher_is_better(name))
        verdict = ("same direction, noise not measured" if better else "opposite direction, noise not measured") \
            if d is None else ("within noise" if not d else "holds" if better else "reversed")
        out.append({"claim": claim.text, "paper": claim.paper, "metric": name + _arrow(name),
                    "A": f"{row_label(a.iloc[0], keys)}: {_interval_text(ca)}",
                    "B": f"{row_label(b.iloc[0], keys)}: {_interval_text(cb)}",
                    "verdict": verdict, "test": how if d is not None else "–",
                    "seeds to separate": seeds_to_separate(ca, cb)})
    text = pd.DataFrame(out, columns=["claim", "paper", "metric", "A", "B", "verdict", "test", "seeds to separate"])
    return Table("Ours vs paper", text, None,
                 "A claim holds when A beats B beyond the 95% interval of their difference, is reversed when B beats A "
                 "beyond it, and is within noise otherwise. When a side has several cells, its best cell is used, at a "
                 "setting of the other swept keys both sides have when there is one (like against like); DiGIT "
                 "means DINO-family tokens when the sweep has them; discriminative SSL means DINO, MoCo or iBOT "
                 "tokens, reconstructive means MAE. Seeds to separate: how many paired seeds the test would need to "
                 "separate A from B if the measured mean and spread of their per-seed difference held (a projection "
                 "from the seeds at hand, not a power analysis).",
                 None, "claims")


def read_published(path: Optional[Path] = None) -> pd.DataFrame:
    """The paper's result rows as text, so that numbers print exactly as the paper writes them ("9.10").
    Default: the copy shipped inside the package."""
    if path is None:
        with resources.as_file(resources.files("digit_bench") / "resources" / "published.csv") as p:
            return pd.read_csv(p, dtype=str)
    if not Path(path).is_file():
        raise UserError(f"published results file {path} not found; leave --published out to use the packaged copy")
    return pd.read_csv(path, dtype=str)


def published_tables(published: pd.DataFrame, stability: bool) -> list[Table]:
    generation = published[published["task"].isin(["uncond", "cond", "probe"])
                           & published["method"].str.match(PUBLISHED_METHODS)]
    out = [_plain("Published: LDM, VQGAN-AR and DiGIT (DiGIT paper Tables 2–4)", generation, PUBLISHED_NOTE)]
    if stability:
        out.append(_plain("Published: token stability (DiGIT paper Table 1)", published[published["task"] == "stability"]))
    return out


def _plain(title: str, frame: pd.DataFrame, note: str = "", tag: str = "") -> Table:
    frame = frame.dropna(axis=1, how="all").reset_index(drop=True)
    return Table(title, frame.map(_fmt_key), None, note, None, tag)


def _tail(error, lines: int = 8) -> str:
    return "\n".join(str(error).strip().splitlines()[-lines:])


def failed_table(failed: list[dict]) -> Table:
    frame = pd.DataFrame([{"run_id": f.get("run_id", "?"), "stage": f.get("stage", "?"),
                           "error": _tail(f.get("error", ""))} for f in failed], columns=["run_id", "stage", "error"])
    note = f"{len(failed)} run(s) failed; they are not in the tables." if failed else "No run failed."
    return Table("Failed runs", frame, None, note, None, "failed")


# ------------------------------------------------------------------------------------------------ provenance
def provenance(df: pd.DataFrame, store=None) -> dict:
    """Where the numbers come from: commit(s) and hosts of the runs (from their manifests when the store is at hand),
    when and with what this report was made."""
    from digit_bench.artifacts import git_commit, library_versions

    made = {"commits": [], "hosts": [], "created": []}
    if store is not None:
        for _, row in df.iterrows():
            art = _metrics_artifact(store, row)
            if art is not None:
                m = art.manifest
                for k, v in (("commits", m.get("git_commit")), ("hosts", m.get("host")), ("created", m.get("created"))):
                    if v and v not in made[k]:
                        made[k].append(v)
    devices = sorted({v for c in df if c.startswith("cost.") and c.endswith(".device") for v in df[c].dropna()})
    return {"report_created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "report_commit": git_commit(),
            "runs_commits": made["commits"], "runs_hosts": made["hosts"],
            "runs_created": [min(made["created"]), max(made["created"])] if made["created"] else [],
            "devices": devices, "machine": f"{platform.node()} ({platform.machine()}, {platform.system()})",
            "versions": library_versions()}


def _provenance_lines(p: dict) -> list[str]:
    made = p.get("runs_created")
    runs = (f"runs computed: {made[0]} – {made[-1]} on {', '.join(p['runs_hosts'])} "
            f"({', '.join(p.get('devices') or ['?'])}), commit {', '.join(p['runs_commits'])}" if made else
            f"runs computed on {', '.join(p.get('devices') or ['?'])}; their hosts, dates and commits are not recorded "
            "in this folder (rerun `digit-bench report` on the sweep's artifact root to add them)")
    return [runs,
            f"report made: {p['report_created']} on {p['machine']}, commit {p['report_commit']}",
            "versions: " + ", ".join(f"{k} {v}" for k, v in p["versions"].items())]


# ------------------------------------------------------------------------------------------------ artifacts
def _metrics_artifact(store, row: pd.Series):
    aid = row.get("artifacts.metrics") if row.get("row_kind") == "run" else row.get("run_id")
    return store.lookup("evaluate", aid) if isinstance(aid, str) else None


def collect_artifacts(df: pd.DataFrame, store, out_dir: Path) -> None:
    """Copy from the store: each row's sample grid to samples/, each run's config, evaluation manifest and
    generator log to runs/<run_id>/, and every trained model's loss curve to curves.csv."""
    import yaml

    samples, runs_dir = out_dir / "samples", out_dir / "runs"
    for d in (samples, runs_dir):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    curves, seen, train_stages = [], set(), trained_stages()
    for _, row in df.iterrows():
        art = _metrics_artifact(store, row)
        if art is None:
            continue
        image_id = art.manifest["parents"].get("images")
        grid = next((store.path(s, image_id) / "grid.png" for s in IMAGE_STAGES
                     if image_id and store.lookup(s, image_id)), None)
        if grid is not None and grid.is_file():
            shutil.copy(grid, samples / f"{row['run_id']}.png")
        if row["row_kind"] != "run":
            continue
        rdir = runs_dir / row["run_id"]
        rdir.mkdir()
        shutil.copy(art.path / "manifest.json", rdir / "manifest.json")
        if isinstance(row.get("config"), str):
            (rdir / "config.yaml").write_text(yaml.safe_dump(json.loads(row["config"]), sort_keys=False))
        own = _model_role(row.get("generator"))
        for role, aid in [(c[len("artifacts."):], row[c]) for c in df.columns if c.startswith("artifacts.")]:
            found = [store.lookup(s, aid) for s in train_stages] if isinstance(aid, str) else []
            trained = next((a for a in found if a is not None), None)
            if trained is None or not (trained.path / "log.jsonl").is_file():
                continue
            if role == own:  # the run's own generator (stage 1: the GPT, the LDM's denoiser, ...)
                shutil.copy(trained.path / "log.jsonl", rdir / "log.jsonl")
            if aid not in seen:
                seen.add(aid)
                curves += _loss_curve(trained.path / "log.jsonl", role, aid, row["run_id"])
    pd.DataFrame(curves, columns=["role", "artifact", "run_id", "step", "loss", "key"]).to_csv(out_dir / "curves.csv",
                                                                                       index=False)


def trained_stages() -> list[str]:
    """The stages that train a model (their module's KIND is "train"): their artifacts have loss curves."""
    import importlib
    import pkgutil

    from digit_bench import stages

    return [m.name for m in pkgutil.iter_modules(stages.__path__)
            if importlib.import_module(f"digit_bench.stages.{m.name}").KIND == "train"]


def _model_role(generator) -> Optional[str]:
    """The role of a registered generator's stage-1 model (None for a name no longer registered)."""
    from digit_bench.registry import GENERATORS

    return GENERATORS.get(generator).model_role if _is_generator(generator) else None


def _loss_curve(log: Path, role: str, artifact: str, run_id: str) -> list[dict]:
    out = []
    for line in log.read_text().splitlines():
        rec = json.loads(line) if line.strip() else {}
        key = next((k for k in LOSS_KEYS.get(role, DEFAULT_LOSS_KEYS) if k in rec), None)
        if key is not None and "step" in rec:
            out.append({"role": role, "artifact": artifact, "run_id": run_id, "step": rec["step"], "loss": rec[key],
                        "key": key})
    return out


# ------------------------------------------------------------------------------------------------ markdown / tex
def _arrow(column: str) -> str:
    direction = higher_is_better(column)
    return "" if direction is None else (" ↑" if direction else " ↓")


def _marked(text: str, mark: str, bold: str = "**") -> str:
    return f"{bold}{text}{bold}" if mark == "best" else f"{text} ≈" if mark == "tie" else text


def _md_table(t: Table) -> str:
    text = t.text.map(lambda v: str(v).replace("|", r"\|").replace("\n", "<br>"))
    text = pd.DataFrame({c: [_marked(v, m) for v, m in zip(text[c], t.marks[c])] for c in text.columns})
    if text.empty:
        return ""
    lines = [list(text.columns), ["---"] * text.shape[1], *text.values.tolist()]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def _md_card(card: dict[str, str]) -> str:
    return "**Protocol card**\n\n" + "\n".join(f"- **{k}**: {v}" for k, v in card.items())


def _md_page(title: str, tables: list[Table], card: dict, extra: list[str] = ()) -> str:
    parts = [f"# {title}"]
    for t in tables:
        parts += [f"## {t.title}", t.note, _md_table(t)]
    parts += [_md_card(card), *extra]
    return "\n\n".join(p for p in parts if p) + "\n"


def _tex_page(title: str, tables: list[Table], card: dict) -> str:
    parts = [f"% {title}. Generated by digit_bench.report; needs \\usepackage{{booktabs}}."]
    for t in tables:
        esc = t.text.map(lambda v: re.sub(r"([_%&#$])", r"\\\1", str(v)).replace("≈", r"$\approx$"))
        body = [" & ".join(_marked(v, m, "") if m != "best" else rf"\textbf{{{v}}}" for v, m in zip(row, mrow))
                for row, mrow in zip(esc.values.tolist(), t.marks.values.tolist())]
        header = " & ".join(re.sub(r"([_%&#$])", r"\\\1", c) for c in t.text.columns)
        parts += [f"% {t.title}", r"\begin{tabular}{" + "l" * t.text.shape[1] + "}", r"\toprule", header + r" \\",
                  r"\midrule", *[b + r" \\" for b in body], r"\bottomrule", r"\end{tabular}"]
    parts.append("% Protocol: " + protocol_line(card).replace("%", r"\%"))
    return re.sub("[↑↓]", lambda m: TEX_ARROWS[m.group()], "\n".join(parts)) + "\n"


# ------------------------------------------------------------------------------------------------ html
_CSS = """body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1400px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:14px}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:left;vertical-align:top;white-space:pre-wrap}
thead th{position:sticky;top:0;background:#eef;cursor:pointer;z-index:1}
th[data-order=asc]::after{content:" ▲"}th[data-order=desc]::after{content:" ▼"}
td.best{font-weight:bold}td.tie::after{content:" ≈";color:#06c}
.scroll{max-height:80vh;overflow:auto}.card{background:#f6f6f0;border:1px solid #dd9;padding:.5em 1em;margin:1em 0}
.card dt{font-weight:bold;float:left;clear:left;width:9em}.card dd{margin-left:10em}
.grids{display:flex;flex-wrap:wrap;gap:1em}.grids figure{margin:0;width:260px}.grids img{width:256px;
image-rendering:pixelated;border:1px solid #ccc}figcaption{font-size:13px}
.figs img{max-width:48%}.note{color:#555;font-size:14px}input[data-filter]{margin:.3em 0;padding:3px;width:20em}
"""
_IMAGE_CHECK = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  document.body.dataset.imagesTotal = images.length;
  document.body.dataset.imagesLoaded = images.filter((img) => img.complete && img.naturalWidth > 0).length;
});
</script>"""


def _table_js() -> str:
    return (resources.files("digit_bench") / "resources" / "table.js").read_text()


def _html_table(t: Table, filter_box: bool = True, links: bool = False) -> str:
    """A sortable table; `links`: cells may hold markdown links, written as <a>."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in t.text.columns)
    rows = []
    for i in t.text.index:
        tds = []
        for c in t.text.columns:
            s, mark = t.sort.at[i, c], t.marks.at[i, c]
            attrs = (f' class="{mark}"' if mark else "") + (f' data-sort="{s:.12g}"' if not pd.isna(s) else "")
            cell = str(t.text.at[i, c])
            tds.append(f"<td{attrs}>{_md_links_to_html(cell) if links else html.escape(cell)}</td>")
        rows.append("<tr>" + "".join(tds) + "</tr>")
    box = (f'<input data-filter="{t.tag}" placeholder="filter rows…" aria-label="filter {html.escape(t.title)}">'
           if filter_box and len(t.text) > 3 else "")
    return (f'{box}<div class="scroll"><table class="sortable" id="{t.tag}"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def _html_card(card: dict[str, str]) -> str:
    items = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in card.items())
    return f'<div class="card" id="protocol-card"><h3>Protocol card</h3><dl>{items}</dl></div>'


def _html_section(t: Table) -> str:
    return (f"<h2>{html.escape(t.title)}</h2>" + (f'<p class="note">{html.escape(t.note)}</p>' if t.note else "")
            + (_html_table(t) if len(t.text) else ""))


def _grids_html(df: pd.DataFrame, keys: list[str], out_dir: Path) -> str:
    """One figure per run cell (its first seed's grid) and per ceiling row, real data first."""
    figures = []
    ceilings = df[df["row_kind"] == "ceiling"]
    runs = df[df["row_kind"] == "run"]
    firsts = [g.sort_values("seed").iloc[0] for _, g in runs.groupby(keys, dropna=False, sort=True)] if keys \
        else [r for _, r in runs.iterrows()]
    for row in [*[r for _, r in ceilings.iterrows()], *firsts]:
        path = out_dir / "samples" / f"{row['run_id']}.png"
        if path.is_file():
            seeded = "seed" in row and not pd.isna(row["seed"])
            label = row_label(row, keys) + (f" (seed {_fmt_key(row['seed'])})" if seeded else "")
            figures.append(f'<figure><img src="samples/{path.name}" alt="samples of {html.escape(label)}">'
                           f"<figcaption>{html.escape(label)}</figcaption></figure>")
    if not figures:
        return "<p class=\"note\">No sample grids in samples/ (this folder was rendered without the artifact store).</p>"
    return '<div class="grids" id="sample-grids">' + "".join(figures) + "</div>"


def _runs_table(df: pd.DataFrame, keys: list[str], out_dir: Path) -> Table:
    """Every run row with links to what was copied for it."""
    rows = []
    for _, r in df[df["row_kind"] == "run"].iterrows():
        links = [(name, f"runs/{r['run_id']}/{name}") for name in ("config.yaml", "manifest.json", "log.jsonl")]
        links.append(("grid", f"samples/{r['run_id']}.png"))
        present = " ".join(f"[{n}]({p})" for n, p in links if (out_dir / p).is_file())
        rows.append({"run_id": r["run_id"], "label": row_label(r, keys), "seed": _fmt_key(r.get("seed")),
                     "files": present or "–"})
    return Table("Runs", pd.DataFrame(rows, columns=["run_id", "label", "seed", "files"]), None,
                 "Resolved config, evaluation manifest, generator training log and sample grid of each run.", None,
                 "runs")


def _md_links_to_html(text: str) -> str:
    return re.sub(r"\[([^\]]+)\]\(([^)]+)\)", r'<a href="\2">\1</a>', html.escape(text))


def _index_html(title: str, page: dict, out_dir: Path) -> str:
    body = [f'<p><a href="../../index.html">all results</a></p><h1>{html.escape(title)}</h1>',
            "<p>" + " · ".join(f'<a href="{f}">{f}</a>' for f in
                               ("results.csv", "table.md", "table.tex", "comparison.md", "curves.csv",
                                "provenance.json") if (out_dir / f).is_file()) + "</p>",
            _html_card(page["card"]), _html_section(page["main"]), "<h2>Samples</h2>", page["grids"],
            _html_section(page["claims"]) if len(page["claims"].text) else "",
            _html_section(page["external"]) if page["external"] is not None else "", _html_section(page["ceilings"])]
    body.append(f"<details><summary>Full table (every headline metric, mean ± std over seeds)</summary>"
                f"{_html_section(page['full'])}</details>")
    body.append(f"<details><summary>Runs: configs, manifests, logs</summary>{_html_table(page['runs'], links=True)}"
                "</details>")
    body.append("<h2>Figures</h2><div class=\"figs\">" + "".join(
        f'<a href="{f.with_suffix(".pdf").name}"><img src="{f.name}" alt="{f.stem}"></a>' for f in page["figures"])
        + "</div>")
    if page["failed"].text.shape[0]:
        body.append(_html_section(page["failed"]))
    body.append("<details><summary>Published rows</summary>"
                + "".join(_html_section(t) for t in page["published"]) + "</details>")
    body.append("<h2>Provenance</h2><ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in page["provenance"])
                + "</ul>")
    if page["external"] is not None:
        body.append(f'<footer class="note" id="external-note">{html.escape(EXTERNAL_NOTE)}</footer>')
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style></head>\n<body>\n" + "\n".join(body)
            + f"\n<script>{_table_js()}</script>\n{_IMAGE_CHECK}\n</body></html>\n")


def write_landing(results_root: Path) -> Path:
    """results/index.html: one row per <sweep>/<profile> folder with a report.json."""
    rows = []
    for summary in sorted(Path(results_root).glob("*/*/report.json")):
        s = json.loads(summary.read_text())
        rel = summary.parent.relative_to(results_root).as_posix()
        rows.append(f'<tr><td><a href="{rel}/index.html">{html.escape(rel)}</a></td><td>{s["n_runs"]}</td>'
                    f'<td>{s["n_failed"]}</td><td>{html.escape(s.get("best", "–"))}</td>'
                    f'<td>{html.escape(s.get("created", "–"))}</td></tr>')
    page = (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>digit_bench results</title>'
            f"<style>{_CSS}</style></head><body><h1>digit_bench results</h1>"
            '<p class="note">One page per sweep and profile. Each shows the protocol card, the main table with '
            "intervals and significance marks, sample grids, the ours-vs-paper verdicts, figures and provenance.</p>"
            '<table class="sortable" id="sweeps"><thead><tr><th>sweep/profile</th><th>runs</th><th>failed</th>'
            f'<th>best cell (primary FD)</th><th>report made</th></tr></thead><tbody>{"".join(rows)}</tbody></table>'
            f"<script>{_table_js()}</script></body></html>\n")
    path = Path(results_root) / "index.html"
    path.write_text(page)
    return path


# ------------------------------------------------------------------------------------------------ figures
def figures_from_csv(csv_path: Path, out_dir: Path) -> list[Path]:
    """Draw, from results.csv (and curves.csv beside it) alone, each figure whose x axis the sweep varies.

    Old `fig_*` files in `out_dir` are removed first. Returns the PNG paths (a PDF is written beside each).
    """
    from digit_bench.figures import draw_all

    return draw_all(Path(csv_path), Path(out_dir))


# ------------------------------------------------------------------------------------------------ entry points
@dataclass
class _Pages:
    main: Table
    full: Table
    ceilings: Table
    claims: Table
    card: dict
    published: list[Table] = field(default_factory=list)
    external: Optional[Table] = None


def _pages(df: pd.DataFrame, keys: list[str], published: pd.DataFrame, ext: pd.DataFrame) -> _Pages:
    runs, ceilings = df[df["row_kind"] == "run"], df[df["row_kind"] == "ceiling"]
    fd = primary_fd(df)
    metrics = metric_columns(df, keys)
    card = protocol_card(df)
    gaps = _ceiling_gaps(runs, ceilings, keys, fd)
    main = cell_table(runs, keys, main_metrics(df), intervals=True, title="Main table", tag="main-table", gaps=gaps,
                      note=f"Mean [95% interval] per cell (see the protocol card); ↑/↓: higher/lower is better; "
                           f"≈: indistinguishable from the best cell; bold: best and separated from all; "
                           f"Δ ceiling: {fd} minus the cell's own decoder ceiling."
                           + (" Rows \"external · …\": samples made elsewhere, scored here; see External rows."
                              if len(ext) else ""), externals=ext)
    full = cell_table(runs, keys, [m for m in metrics if _headline(m)], intervals=False, title="Full table",
                      tag="full-table", gaps=gaps, note="Mean ± std (ddof=1) over the n seeds of each cell; marks as "
                                                        "in the main table.")
    ceil = ceiling_table(ceilings, [m for m in main_metrics(df) if _headline_interval(m)], keys)
    stability = any(m.startswith("token_change") for m in metrics)
    return _Pages(main, full, ceil, claim_table(runs, keys), card, published_tables(published, stability),
                  external_table(ext, main_metrics(df)) if len(ext) else None)


def write_report(rows: list[dict], out_dir: Path, *, sweep: str, profile: str, swept_keys: list[str],
                 failed: list[dict], published_csv: Optional[Path] = None, store=None) -> dict:
    """Write every report file of one sweep and profile into `out_dir`.

    Args:
        rows: one flat metrics.json per run (and per real-data ceiling, `row_kind="ceiling"`).
        swept_keys: the dotted config columns of the sweep; "seed" is averaged over, never grouped by.
        failed: one dict per failed run with "run_id", "stage" and "error" (a message or traceback).
        published_csv: the paper's rows (default: the packaged copy).
        store: the artifact Store the rows came from: sample grids, configs, logs and curves are copied from it;
            without it, whatever samples/, runs/ and curves.csv `out_dir` already holds is shown.

    Returns:
        Paths of the files written (by name, plus "figures": a list), "n_runs" and "n_failed".
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    title = f"{sweep}/{profile}"
    failures = failed_table(failed)
    (out_dir / "failed.json").write_text(json.dumps(failed, indent=1, default=str))
    (out_dir / "failed.md").write_text(f"# {title}: failed runs\n\n{failures.note}\n\n{_md_table(failures)}\n")
    if not rows:
        raise UserError(f"no finished run in {title} ({len(failed)} failed, see {out_dir / 'failed.md'}); "
                        "fix the failures and rerun the sweep")
    df = results_frame(rows, swept_keys)
    keys = _group_keys(df, swept_keys)
    card = protocol_card(df)
    df["protocol"] = protocol_line(card)
    df.to_csv(out_dir / "results.csv", index=False)
    df.to_parquet(out_dir / "results.parquet", index=False)
    if store is not None:
        collect_artifacts(df, store, out_dir)
    prov_path = out_dir / "provenance.json"
    prov = provenance(df, store)
    if store is None and prov_path.is_file():  # re-rendered from a CSV: keep where the runs were made
        old = json.loads(prov_path.read_text())
        prov.update({k: old[k] for k in ("runs_commits", "runs_hosts", "runs_created") if old.get(k)})
    prov_path.write_text(json.dumps(prov, indent=1))
    ext = read_external(out_dir)
    pages = _pages(df, keys, read_published(published_csv), ext)
    prov_lines = _provenance_lines(prov)
    prov_md = "**Provenance**\n\n" + "\n".join(f"- {line}" for line in prov_lines)
    footer = [EXTERNAL_NOTE] if len(ext) else []
    (out_dir / "table.md").write_text(_md_page(f"{title}: results", [pages.main, pages.ceilings, pages.full],
                                               pages.card, [prov_md, *footer]))
    extern = [pages.external] if pages.external is not None else []
    (out_dir / "comparison.md").write_text(_md_page(f"{title}: ours vs paper",
                                                    [pages.claims, *extern, *pages.published], pages.card, footer))
    (out_dir / "table.tex").write_text(_tex_page(f"{title}: results", [pages.main, pages.ceilings], pages.card))
    figures = figures_from_csv(out_dir / "results.csv", out_dir)
    page = {"card": pages.card, "main": pages.main, "full": pages.full, "ceilings": pages.ceilings,
            "claims": pages.claims, "published": pages.published, "failed": failures, "figures": figures,
            "external": pages.external,
            "grids": _grids_html(df, keys, out_dir), "runs": _runs_table(df, keys, out_dir),
            "provenance": prov_lines}
    (out_dir / "index.html").write_text(_index_html(title, page, out_dir))
    best = _best_label(pages.main)
    n_runs = int((df["row_kind"] == "run").sum())
    (out_dir / "report.json").write_text(json.dumps({"title": title, "n_runs": n_runs, "n_failed": len(failed),
                                                     "best": best, "created": prov["report_created"]}))
    if out_dir.parent.parent.is_dir() and out_dir.name == profile and out_dir.parent.name == sweep:
        write_landing(out_dir.parent.parent)
    files = ("results.csv", "results.parquet", "table.md", "table.tex", "comparison.md", "failed.md", "index.html")
    return {**{f.replace(".", "_"): out_dir / f for f in files}, "figures": figures, "n_runs": n_runs,
            "n_failed": len(failed), "n_external": len(ext)}


def _best_label(main: Table) -> str:
    """The main table's best cell by its first metric, with its value, or '–'."""
    metric_cols = [c for c in main.text.columns if c not in ("label", "n", "circular", "external", "Δ ceiling")]
    if not metric_cols:
        return "–"
    col = metric_cols[0]
    order = main.sort.loc[~main.text["label"].str.startswith(EXTERNAL_TAG), col].dropna()  # our runs only
    if order.empty:
        return "–"
    i = order.idxmax() if higher_is_better(col.rstrip(" ↑↓")) else order.idxmin()
    return f"{main.text.at[i, 'label']}: {main.text.at[i, col]} ({col})"


def readme_snippet(out_dir: Path) -> str:
    """The README's results block for one folder: its main table, the verdicts and the protocol card, as markdown."""
    text = (Path(out_dir) / "table.md").read_text()
    main = text.split("## Main table\n", 1)[1].split("\n## ", 1)[0].strip()
    comparison = (Path(out_dir) / "comparison.md").read_text()
    claims = comparison.split("## Ours vs paper\n", 1)[1].split("\n## ", 1)[0].split("**Protocol card**")[0].strip() \
        if "## Ours vs paper\n" in comparison else ""
    card = "**Protocol card**" + text.split("**Protocol card**", 1)[1].split("**Provenance**")[0].rstrip()
    rel = Path(out_dir).as_posix()
    return (f"#### {rel}\n\n{main}\n\n{claims}\n\n{card}\n\nFull page: [{rel}/index.html]({rel}/index.html)\n")


def load_rows(paths) -> list[dict]:
    rows = []
    for path in paths:
        try:
            rows.append(json.loads(Path(path).read_text()))
        except json.JSONDecodeError as e:
            raise UserError(f"{path} is not valid JSON ({e}); delete it and rerun that run") from e
    return rows


def report_from_dir(rows_dir: Path, out_dir: Path, sweep: str, profile: str, published_csv: Optional[Path] = None,
                    store=None) -> dict:
    """Report every `rows_dir/*.json`: a row with an "error" key is a failed run, any other is a metrics row.

    The swept keys are the dotted config columns the rows carry. The store defaults to the root that holds
    `rows_dir` (`<root>/sweeps/<sweep>/<profile>`).
    """
    paths = sorted(Path(rows_dir).glob("*.json"))
    if not paths:
        raise UserError(f"no run rows in {rows_dir}; run the sweep first (digit-bench sweep ...)")
    rows = load_rows(paths)
    done = [r for r in rows if "error" not in r]
    failed = [r for r in rows if "error" in r]
    if store is None and Path(rows_dir).parent.parent.name == "sweeps":
        from digit_bench.artifacts import Store

        store = Store(Path(rows_dir).parents[2])
    return write_report(done, out_dir, sweep=sweep, profile=profile, swept_keys=config_columns(pd.DataFrame(done)),
                        failed=failed, published_csv=published_csv, store=store)


def report_from_csv(folder: Path, out_dir: Optional[Path] = None, published_csv: Optional[Path] = None) -> dict:
    """Re-render a results folder from its results.csv (older column sets included), keeping its samples/, runs/,
    external/, curves.csv and provenance; `out_dir` defaults to the folder itself."""
    folder = Path(folder)
    csv = folder / "results.csv" if folder.is_dir() else folder
    if not csv.is_file():
        raise UserError(f"{csv} not found; pass a results folder holding results.csv (e.g. results/backbones/tiny)")
    folder = csv.parent
    out_dir = Path(out_dir) if out_dir else folder
    if out_dir.resolve() != folder.resolve():
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in ("samples", "runs", "external"):
            if (folder / name).is_dir():
                shutil.copytree(folder / name, out_dir / name, dirs_exist_ok=True)
        for name in ("curves.csv", "provenance.json"):
            if (folder / name).is_file():
                shutil.copy(folder / name, out_dir / name)
    df = pd.read_csv(csv)
    rows = [{k: v for k, v in r.items() if not (isinstance(v, float) and math.isnan(v))}
            for r in df.drop(columns=["protocol"], errors="ignore").to_dict("records")]
    failed = json.loads((folder / "failed.json").read_text()) if (folder / "failed.json").is_file() else []
    sweep = str(df["sweep"].iloc[0]) if "sweep" in df else folder.parent.name
    profile = str(df["profile"].iloc[0]) if "profile" in df else folder.name
    return write_report(rows, out_dir, sweep=sweep, profile=profile, swept_keys=config_columns(df), failed=failed,
                        published_csv=published_csv)
