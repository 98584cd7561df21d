"""Bad input of every kind is a one-line exit 2 naming the cause, and writes nothing outside --root.

The battery is built from field kinds, not from examples: every slug field and every name-valued field gets path
tricks (`../`, absolute paths, NUL, newlines, unicode); every numeric field gets NaN/inf and out-of-range values;
sweep files, roots, data folders and weight files get their broken variants.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from digit_bench import cli, config
from digit_bench.artifacts import NAME, Store, artifact_id
from digit_bench.config import ExperimentConfig
from digit_bench.errors import UserError

REPO = Path(__file__).resolve().parents[1]
BASE = f"include: {REPO / 'ablations' / '_base.yaml'}\n"
MINIMAL = BASE  # the smoke profile: its data, weights and extractor exist here, so validate's disk check passes
SMOKE = ["--profile", "smoke"]
TRICKS = ["../x", "../../victim", "/tmp/abs", "a/b", "..", "a\x00b", "a\nb", "ünïcødé", ""]


def numeric_fields(cls=ExperimentConfig, prefix=""):
    """(dotted key, type, tuple length: 0 for a scalar, 1 for a variable-length tuple) of every int/float (or
    tuple/Optional of them) field."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, key = hints[f.name], f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            out += numeric_fields(tp, key + ".")
            continue
        args = [a for a in (typing.get_args(tp) or (tp,)) if a not in (type(None), Ellipsis)]
        if args and all(a in (int, float) for a in args):
            fixed = typing.get_origin(tp) is tuple and Ellipsis not in typing.get_args(tp)
            length = len(typing.get_args(tp)) if fixed else int(typing.get_origin(tp) is tuple)
            out.append((key, float if float in args else int, length))
    return out


NUMERIC = numeric_fields()


def test_every_numeric_field_has_a_range():
    assert {k.split(".")[-1] for k, _, _ in NUMERIC} <= set(config._RANGES)


STRING_CASES = [(k, t) for k in ("name", "launcher.partition", "launcher.account", "launcher.qos", "gpt.size",
                                 "stage2.size", "ldm.dit_size", "data.name", "backbone.name", "eval.reference",
                                 "eval.extractor", "eval.extra_extractors", "ldm.scheduler", "profile",
                                 "data.root", "backbone.weights", "vqgan.weights", "eval.weights", "ldm.vae_weights")
                for t in TRICKS]
PATH_KEYS = {"data.root", "backbone.weights", "vqgan.weights", "eval.weights", "ldm.vae_weights"}


def _snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def run_cli(capsys, argv):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, err


def assert_one_line_exit_2(code: int, err: str, fragment: str = "") -> None:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2, err[-2000:]
    assert len(lines) == 1 and fragment in lines[0], err[-2000:]
    assert "Traceback" not in err


def _yaml_value(v: str) -> str:
    """A YAML scalar for `v` in a sweep file (double-quoted, escapes kept)."""
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\x00", "\\0").replace("\n", "\\n") + '"'


@pytest.mark.parametrize("key, trick", STRING_CASES, ids=[f"{k}={t!r}" for k, t in STRING_CASES])
def test_string_fields_refuse_path_tricks(key, trick, tmp_path, capsys):
    """Slug and name fields refuse every trick; path fields refuse control characters and accept the rest (they are
    keyed by content, never joined into store paths). Values go through YAML, so NUL and newlines reach the check."""
    sweep = tmp_path / "s.yaml"
    sweep.write_text(MINIMAL + ("name: " + _yaml_value(trick) + "\n" if key == "name" else ""))
    sets = [] if key == "name" else ["--set", f"{key}=" + (f"[{_yaml_value(trick)}]" if key == "eval.extra_extractors"
                                                           else _yaml_value(trick))]
    before = _snapshot(tmp_path)
    code, err = run_cli(capsys, ["validate", str(sweep), *SMOKE, "--root", str(tmp_path / "r"), *sets])
    if key in PATH_KEYS and "\x00" not in trick and "\n" not in trick:
        # a plain path, odd or not, is a path: accepted, or refused by the disk check as a missing file
        assert code == 0 or (code == 2 and "missing" in err.splitlines()[-1]), err[-1500:]
    else:
        assert_one_line_exit_2(code, err)
    assert _snapshot(tmp_path) == before  # validate writes nothing


@pytest.mark.parametrize("key, tp, length", NUMERIC, ids=[k for k, _, _ in NUMERIC])
def test_numeric_fields_refuse_non_finite_and_out_of_range(key, tp, length):
    """Through the same override and check path as a sweep file or --set (YAML values), without re-reading YAML."""
    leaf = key.split(".")[-1]
    lo, hi = config._RANGES[leaf][:2]
    bad = [".nan", ".inf", "-.inf", repr(lo - 1e-3)] if tp is float else [str(-(2**31) - 1), str(2**31), str(int(lo) - 1)]
    if hi < 1e6:
        bad.append(repr(hi + 1))
    for v in bad:
        value = yaml.safe_load(f"[{', '.join([v] * length)}]" if length else v)
        cfg = config.apply_overrides(ExperimentConfig(), [config.Override(key, value, "--set")])
        problems = dict(config.check_values(cfg))
        assert key in problems and "\n" not in problems[key], (key, v, problems)


def test_numeric_problems_reach_the_command_line_as_one_line(tmp_path, capsys):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(MINIMAL)
    code, err = run_cli(capsys, ["validate", str(sweep), "--set", "ldm.train.ema=.nan"])
    assert_one_line_exit_2(code, err, "--set: ldm.train.ema must be a finite number, got nan")


@pytest.mark.parametrize("argv, fragment", [
    (["--set", "train.lr=.nan"], "train.lr must be a finite number"),
    (["--set", "train.lr=.inf"], "train.lr must be a finite number"),
    (["--set", "sample.top_p=1.5"], "sample.top_p must be in (0, 1]"),
    (["--set", "gpt.size=../x"], "gpt.size: unknown GPT size '../x'"),
    (["--set", "eval.reference=dataset:fashion_mnist:tset"], "did you mean test?"),
    (["--set", "eval.reference=imagenet"], "expected dataset:<name>:<split>"),
    (["--set", "launcher.partition=gpu --wrap=x"], "launcher.partition"),
    (["--set", "backbone.embed_dim=100", "--set", "backbone.num_heads=3"], "not divisible"),
    (["--set", "vqgan.n_embed=70000"], "uint16"),
    (["--set", "tokenizer.k=2147483648"], "tokenizer.k must be <= 2147483647"),
])
def test_validate_refuses_with_one_line(argv, fragment, tmp_path, capsys):
    code, err = run_cli(capsys, ["validate", str(REPO / "ablations" / "backbones.yaml"), *SMOKE, *argv])
    assert_one_line_exit_2(code, err, fragment)


@pytest.mark.parametrize("content, fragment", [
    (b"", "is empty"),
    (b"# only a comment\n", "is empty"),
    (b"{}\n", "is empty"),
    (b"\x00\x01\x02binary", "binary file"),
    (b"\xff\xfe\xfa not utf-8", "not a text file"),
    (b"- a\n- b\n", "must be a mapping"),
    (b"name: ../../victim\ndefaults:\n  seed: 0\n", "name '../../victim' must be a plain name"),
])
def test_bad_sweep_files(content, fragment, tmp_path, capsys):
    p = tmp_path / "s.yaml"
    p.write_bytes(content)
    code, err = run_cli(capsys, ["validate", str(p), *SMOKE])
    assert_one_line_exit_2(code, err, fragment)


def test_a_folder_as_sweep_file(tmp_path, capsys):
    code, err = run_cli(capsys, ["validate", str(tmp_path), *SMOKE])
    assert_one_line_exit_2(code, err, "is a directory")


# ------------------------------------------------------------------------------------------- roots and stores
def test_root_that_is_a_file_or_cannot_be_made(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    sweep = REPO / "tests" / "data" / "micro.yaml"
    code, err = run_cli(capsys, ["run", "features", str(sweep), *SMOKE, "--root", str(f)])
    assert_one_line_exit_2(code, err, "is a file")
    code, err = run_cli(capsys, ["run", "features", str(sweep), *SMOKE, "--root", "/proc/digit-bench-no/r"])
    assert_one_line_exit_2(code, err, "cannot create --root")


@pytest.mark.parametrize("trick", TRICKS)
def test_store_never_leaves_its_root(trick, tmp_path):
    store = Store(tmp_path / "r")
    aid = artifact_id("train", trick, {"a": 1}, [], 1)
    assert NAME.fullmatch(aid) and ".." not in aid
    art = store.lookup_or_compute("train", aid, {}, {}, lambda out: {}, log=lambda m: None)
    assert art.path.parent.parent.resolve() == (tmp_path / "r").resolve()
    if not NAME.fullmatch(trick) or ".." in trick:
        with pytest.raises(UserError, match="not a plain name"):
            store.path("train", trick)
        with pytest.raises(UserError, match="not a plain name"):
            store.path(trick, aid)
    assert [p.name for p in tmp_path.iterdir()] == ["r"]


def test_rows_dir_refuses_a_sweep_name_outside_the_root(tmp_path):
    from digit_bench.engine.rows import rows_dir

    with pytest.raises(UserError, match="not a plain name"):
        rows_dir(Store(tmp_path / "r"), "../../victim", "smoke")


# ------------------------------------------------------------------------------------------------- data
def _idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _fashion_folder(folder: Path, n: int = 20) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split in ("train", "t10k"):
        _idx(folder / f"{split}-images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28)))
        _idx(folder / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, (n,)))
    return folder


@pytest.mark.parametrize("damage, fragment", [
    (lambda p: p.write_bytes(p.read_bytes()[:-100]), "truncated"),
    (lambda p: p.write_bytes(b"\x12\x34\x56\x78" + p.read_bytes()[4:]), "bad header"),
    (lambda p: p.write_bytes(b"\x00\x00"), "bad header"),
    (lambda p: (p.with_name(p.name + ".gz").write_bytes(b"not gzip"), p.unlink()), "cannot read IDX file"),
    (lambda p: p.unlink(), "does not hold the Fashion-MNIST IDX files"),
])
def test_broken_idx_files_are_named(damage, fragment, tmp_path, capsys):
    folder = _fashion_folder(tmp_path / "fm")
    damage(folder / "train-images-idx3-ubyte")
    sweep = tmp_path / "s.yaml"
    sweep.write_text(BASE)
    code, err = run_cli(capsys, ["run", "features", str(sweep), *SMOKE, "--root", str(tmp_path / "r"),
                                 "--set", f"data.root={folder}"])
    assert_one_line_exit_2(code, err, fragment)


@pytest.mark.parametrize("how", ["data.root", "DIGIT_BENCH_DATA"])
def test_an_explicit_empty_data_folder_is_refused_not_replaced(how, tmp_path, monkeypatch):
    from digit_bench.config import DataConfig
    from digit_bench.data import load_split

    (tmp_path / "empty").mkdir()
    if how == "DIGIT_BENCH_DATA":
        monkeypatch.setenv("DIGIT_BENCH_DATA", str(tmp_path / "empty"))
        cfg = DataConfig()
    else:
        cfg = DataConfig(root=str(tmp_path / "empty"))
    with pytest.raises(UserError, match=f"{how} .*does not hold the Fashion-MNIST IDX files"):
        load_split(cfg, "train")


def test_an_explicit_data_folder_is_used(tmp_path):
    from digit_bench.config import DataConfig
    from digit_bench.data import load_split

    part = load_split(DataConfig(root=str(_fashion_folder(tmp_path / "fm", n=30)), num_val=5), "train")
    assert len(part) == 25


# ---------------------------------------------------------------------------------------------- weight files
class Payload:
    """Unpickling this creates `marker` (stands for any code a crafted checkpoint runs)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _payload_file(tmp_path: Path, name: str) -> tuple[Path, Path]:
    marker = tmp_path / f"pwned-{name}"
    path = tmp_path / name
    torch.save({"state_dict": {"w": torch.zeros(2)}, "x": Payload(marker)}, path)
    return path, marker


def _truncated_file(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    torch.save({"w": torch.zeros(1000)}, path)
    path.write_bytes(path.read_bytes()[:300])
    return path


def _loaders(tmp_path: Path):
    from digit_bench.backbones import pretrained_tiny, timm_backbone
    from digit_bench.config import VQGANConfig
    from digit_bench.eval import fidelity
    from digit_bench.models.vqgan import VQGAN, load_taming_checkpoint

    return {
        "backbone timm": lambda p: timm_backbone("vit_small_patch16_224", layer=-3, weights=str(p)),
        "backbone external": lambda p: timm_backbone("vit_base_patch16_224", layer=-3, weights=str(p),
                                                     external_weights="MoCo v3"),
        "backbone tiny": lambda p: pretrained_tiny("dino", layer=-3, weights=str(p), name="dino_tiny"),
        "vqgan": lambda p: load_taming_checkpoint(VQGAN(VQGANConfig(), 32), p),
        "eval inception": lambda p: fidelity.inception_extractor(str(p)),
        "local classifier": lambda p: fidelity.LocalFeatureExtractor(fidelity.LOCAL_NAME, ["feat"], str(p)),
    }


LOADERS = ["backbone timm", "backbone external", "backbone tiny", "vqgan", "eval inception", "local classifier"]


@pytest.mark.parametrize("which", LOADERS)
def test_a_pickled_payload_never_runs_and_is_refused(which, tmp_path):
    path, marker = _payload_file(tmp_path, f"{which.replace(' ', '_')}.pth")
    with pytest.raises(UserError, match="refusing to load"):
        _loaders(tmp_path)[which](path)
    assert not marker.exists()


@pytest.mark.parametrize("which", LOADERS)
def test_a_truncated_weight_file_is_named_as_such(which, tmp_path):
    path = _truncated_file(tmp_path, f"{which.replace(' ', '_')}.pth")
    with pytest.raises(UserError, match="truncated"):
        _loaders(tmp_path)[which](path)


@pytest.mark.parametrize("hub_file", ["inception", "dinov2"])
def test_payloads_in_the_torch_hub_cache_are_refused(hub_file, tmp_path, monkeypatch):
    from digit_bench.eval import fidelity

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    ckpts = tmp_path / "th" / "hub" / "checkpoints"
    ckpts.mkdir(parents=True)
    (tmp_path / "th" / "hub" / "facebookresearch_dinov2_main").mkdir()
    name = fidelity.INCEPTION_FILE if hub_file == "inception" else fidelity.DINOV2_FILE
    marker = tmp_path / "pwned"
    torch.save({"x": Payload(marker)}, ckpts / name)
    build = fidelity.inception_extractor if hub_file == "inception" else fidelity.dinov2_extractor
    with pytest.raises(UserError, match="refusing to load"):
        build()
    assert not marker.exists()


def test_inception_gets_checked_tensors_not_the_path(tmp_path, monkeypatch):
    """torch-fidelity torch.load()s its weights path with weights_only=False: it must receive a buffer."""
    from digit_bench.eval import fidelity

    seen = {}

    def fake_create(name, layers, cuda, verbose, **kw):
        seen.update(kw)
        raise RuntimeError("stop")

    monkeypatch.setattr(fidelity, "create_feature_extractor", fake_create)
    weights = tmp_path / "inc.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, weights)
    ex = fidelity.inception_extractor(str(weights))
    with pytest.raises(RuntimeError, match="stop"):
        fidelity.extract_features(np.zeros((1, 8, 8, 3), np.uint8), ex)
    buf = seen["feature_extractor_weights_path"]
    assert not isinstance(buf, (str, Path)) and torch.equal(torch.load(buf, weights_only=True)["fc.weight"], torch.zeros(2, 2))


def test_external_weights_are_keyed_by_content(tmp_path):
    w = tmp_path / "w.pth"
    torch.save({"a": torch.zeros(3)}, w)
    cfg = {"vqgan": {"weights": str(w)}}
    first = artifact_id("vqgan", "p", cfg, [], 1)
    assert artifact_id("vqgan", "p", cfg, [], 1) == first
    torch.save({"a": torch.ones(3)}, w)  # same path and size, new bytes
    os.utime(w, ns=(1, 1))
    assert artifact_id("vqgan", "p", cfg, [], 1) != first
    data = _fashion_folder(tmp_path / "fm")
    d1 = artifact_id("extract", "p", {"data": {"root": str(data)}}, [], 1)
    with gzip.open(data / "extra.gz", "wb") as f:
        f.write(b"x")
    assert artifact_id("extract", "p", {"data": {"root": str(data)}}, [], 1) != d1
    assert artifact_id("s", "p", {"data": {"root": None}}, [], 1) == artifact_id("s", "p", {"data": {"root": None}}, [], 1)
