"""The command line: listing, validation, and bad input -> exit code 2 with a one-line message naming the cause."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from digit_bench.cli import main

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["--profile", "smoke"]
BASE = f"include: {ROOT / 'ablations' / '_base.yaml'}\n"


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_ls_lists_registered_names(capsys):
    code, out, _ = run_cli(capsys, "ls", "datasets")
    assert code == 0 and json.loads(out)["datasets"] == ["digits", "fashion_mnist", "folder", "imagenet", "synthetic"]


def test_dry_run_prints_runs_with_stable_artifact_ids(tmp_path):
    cmd = [sys.executable, "-m", "digit_bench.sweep", "ablations/backbones.yaml", "--profile", "smoke", "--dry-run",
           "--root", str(tmp_path)]
    first = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert first.stderr.count("run ") >= 4 and "extract/" in first.stderr and "evaluate/" in first.stderr
    assert json.loads(first.stdout)["run_ids"] == json.loads(second.stdout)["run_ids"]
    ids = lambda s: [l.split()[-1] for l in s.splitlines() if l.startswith("    ")]  # noqa: E731
    assert ids(first.stderr) == ids(second.stderr)


def _sweep(tmp_path: Path, text: str) -> str:
    p = tmp_path / "s.yaml"
    p.write_text(text)
    return str(p)


def _corrupt_folder(tmp_path: Path) -> str:
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    (tmp_path / "imgs" / "a" / "x.png").write_bytes(b"not an image")
    return str(tmp_path / "imgs")


BAD = {
    "bad yaml": (lambda t: ["validate", _sweep(t, "grid: [\n")], "invalid YAML"),
    "unknown key": (lambda t: ["validate", _sweep(t, "defaults:\n  tokenizer.kk: 1\n")], "did you mean tokenizer.k?"),
    "wrong type": (lambda t: ["validate", _sweep(t, "defaults:\n  train.steps: lots\n")], "expected int"),
    "missing include": (lambda t: ["validate", _sweep(t, "include: nope.yaml\n")], "included file not found"),
    "unknown profile": (lambda t: ["validate", "ablations/backbones.yaml", "--profile", "huge"], "unknown profile 'huge'"),
    "unknown dataset": (lambda t: ["validate", "ablations/backbones.yaml", *SMOKE, "--set", "data.name=cifar10"], "unknown dataset 'cifar10'"),
    "missing data root": (lambda t: ["run", "features", _sweep(t, BASE), *SMOKE, "--root", str(t / "r"), "--set", "data.name=imagenet",
                                     "--set", f"data.root={t / 'nowhere'}"], "ImageNet not found"),
    "unreadable image": (lambda t: ["run", "features", _sweep(t, BASE), *SMOKE, "--root", str(t / "r"), "--set", "data.name=folder",
                                    "--set", f"data.root={_corrupt_folder(t)}"], "no readable images"),
    "negative size": (lambda t: ["validate", "ablations/backbones.yaml", *SMOKE, "--set", "train.batch_size=-8"], "must be > 0"),
    "empty grid": (lambda t: ["validate", _sweep(t, "grid: []\n")], "empty grid"),
    "missing sweep file": (lambda t: ["validate", str(t / "absent.yaml")], "sweep file not found"),
    "bad --set": (lambda t: ["validate", "ablations/backbones.yaml", "--set", "tokenizer.k"], "expected key=value"),
    "unknown registry": (lambda t: ["ls", "backbonez"], "did you mean backbones?"),
    "unknown stage": (lambda t: ["run", "featurez", "ablations/codebook_sizes.yaml", *SMOKE, "--root", str(t / "r")], "has no stage 'featurez'"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_exits_2_with_one_line(case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    argv, fragment = BAD[case]
    code, out, err = run_cli(capsys, *argv(tmp_path))
    lines = [l for l in err.splitlines() if l.startswith("error:")]
    assert code == 2, err
    assert len(lines) == 1 and fragment in lines[0], err
    assert "Traceback" not in err
    assert not list((tmp_path / "r").glob("*/*-*[0-9a-f]")) if (tmp_path / "r").exists() else True


def test_validate_prints_ids_and_computes_nothing(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    code, out, _ = run_cli(capsys, "validate", "ablations/codebook_sizes.yaml", *SMOKE, "--root", str(tmp_path / "r"))
    assert code == 0 and json.loads(out)["runs"] == 2
    assert not (tmp_path / "r").exists()


def test_validate_print_config_prints_each_runs_resolved_yaml(capsys, monkeypatch):
    import yaml

    monkeypatch.chdir(ROOT)
    code, out, _ = run_cli(capsys, "validate", "ablations/codebook_sizes.yaml", *SMOKE, "--print-config",
                           "--set", "train.lr=3e-4")
    docs = [yaml.safe_load(d) for d in out.split("---\n") if d.strip()]
    assert code == 0 and len(docs) == 2 and {d["train"]["lr"] for d in docs} == {3e-4}
    assert len({d["tokenizer"]["k"] for d in docs}) == 2  # the swept key differs between the two runs
    one = out.split("\n", 1)[0].removeprefix("# run ")
    code, out, _ = run_cli(capsys, "validate", "ablations/codebook_sizes.yaml", *SMOKE, "--print-config", one,
                           "--set", "train.lr=3e-4")
    assert code == 0 and out.count("# run ") == 1 and out.startswith(f"# run {one}")
    code, _, err = run_cli(capsys, "validate", "ablations/codebook_sizes.yaml", *SMOKE, "--print-config", "nope")
    assert code == 2 and "no run 'nope'" in err
