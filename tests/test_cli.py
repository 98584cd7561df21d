"""The command line: listing, validation, and bad input -> exit code 2 with a one-line message naming the cause."""

from __future__ import annotations

import json
import re
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


# Command-line failures, each with the whole message it must print (where, what, and the fix). Errors inside sweep
# files are tested once, against load_sweep, in tests/test_config.py; typos in names in tests/test_registry.py.
BAD = {
    "sweep file error": (lambda t: ["validate", _sweep(t, "grid: [\n")],
                         r"error: .*/s\.yaml:2: invalid YAML: expected the node content, but found '<stream end>'"),
    "unknown profile": (lambda t: ["validate", "ablations/backbones.yaml", "--profile", "huge"],
                        r"error: unknown profile 'huge'; choose one of: smoke, tiny, paper, paper_long"),
    "missing data root": (lambda t: ["run", "features", _sweep(t, BASE), *SMOKE, "--root", str(t / "r"), "--set",
                                     "data.name=imagenet", "--set", f"data.root={t / 'nowhere'}"],
                          r"error: ImageNet not found at .*/nowhere: set data\.root \(or DIGIT_BENCH_DATA\) to a folder "
                          r"with train/ and val/ ImageFolders \(one sub-folder per class\)"),
    "unreadable image": (lambda t: ["run", "features", _sweep(t, BASE), *SMOKE, "--root", str(t / "r"), "--set",
                                    "data.name=folder", "--set", f"data.root={_corrupt_folder(t)}"],
                         r"error: no readable images under .*/imgs \(extensions \.jpg, \.jpeg, \.png, \.bmp, \.webp\)"),
    "negative size": (lambda t: ["validate", "ablations/backbones.yaml", *SMOKE, "--set", "train.batch_size=-8"],
                      r"error: --set: train\.batch_size must be > 0, got -8"),
    "missing sweep file": (lambda t: ["validate", str(t / "absent.yaml")],
                           r"error: sweep file not found: .*/absent\.yaml; give the path of a YAML file such as "
                           r"ablations/backbones\.yaml"),
    "bad --set": (lambda t: ["validate", "ablations/backbones.yaml", "--set", "tokenizer.k"],
                  r"error: --set 'tokenizer\.k': expected key=value, e\.g\. --set tokenizer\.k=1024"),
    "unknown registry": (lambda t: ["ls", "backbonez"],
                         r"error: unknown registry 'backbonez' \(did you mean backbones\?\); choose one of: datasets, "
                         r"backbones, .*"),
    "unknown stage": (lambda t: ["run", "featurez", "ablations/codebook_sizes.yaml", *SMOKE, "--root", str(t / "r")],
                      r"error: no run of sweep codebook_sizes has a stage 'featurez'; its stages are: .*\bfeatures\b.*"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_exits_2_with_its_one_line_message(case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    argv, message = BAD[case]
    code, out, err = run_cli(capsys, *argv(tmp_path))
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2, err
    assert len(lines) == 1 and re.fullmatch(message, lines[0]), err
    assert "Traceback" not in err
    assert list((tmp_path / "r").glob("*/*-*[0-9a-f]")) == []  # no artifact was computed


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
