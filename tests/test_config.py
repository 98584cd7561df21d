"""Strict configs and sweep files: expansion counts, stable ids, errors that name key, file, line and choices."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from digit_bench.config import (PROBE_PAPER_FIELDS, ExperimentConfig, Override, apply_overrides, load_sweep, run_id,
                                 to_dict)
from digit_bench.errors import UserError

ABL = Path(__file__).resolve().parents[1] / "ablations"


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_include_grid_and_seeds_expand_to_the_product(tmp_path):
    write(tmp_path, "base.yaml", "defaults:\n  tokenizer.k: 32\nprofiles:\n  smoke:\n    train.steps: 7\n")
    p = write(tmp_path, "s.yaml", "include: base.yaml\ngrid:\n  tokenizer.k: [16, 32, 64]\n  gpt.size: [gpt-nano, gpt-micro]\nseeds: [0, 1]\n")
    sweep = load_sweep(p, "smoke")
    assert len(sweep.runs) == 3 * 2 * 2
    assert {r.cfg.tokenizer.k for r in sweep.runs} == {16, 32, 64}
    assert all(r.cfg.train.steps == 7 for r in sweep.runs)
    assert len({r.run_id for r in sweep.runs}) == 12
    assert sweep.swept_keys == ("tokenizer.k", "gpt.size", "seed")


def test_union_of_grids(tmp_path):
    p = write(tmp_path, "s.yaml", "grid:\n  - {generator: [digit], backbone.name: [random_vit, pixels]}\n  - {generator: [vqgan_ar, ldm]}\n")
    sweep = load_sweep(p, "smoke")
    assert [r.cfg.generator for r in sweep.runs] == ["digit", "digit", "vqgan_ar", "ldm"]


def test_ids_are_stable_across_calls():
    a = load_sweep(ABL / "backbones.yaml", "smoke")
    b = load_sweep(ABL / "backbones.yaml", "smoke")
    assert [r.run_id for r in a.runs] == [r.run_id for r in b.runs]


def test_set_narrows_a_grid_key_and_overrides_others(tmp_path):
    p = write(tmp_path, "s.yaml", "grid:\n  tokenizer.k: [16, 32]\n")
    sweep = load_sweep(p, "smoke", ["tokenizer.k=32", "train.lr=0.5"])
    assert [(r.cfg.tokenizer.k, r.cfg.train.lr) for r in sweep.runs] == [(32, 0.5)]


@pytest.mark.parametrize("text, value", [("3e-4", 3e-4), ("1E3", 1000.0), ("2.5E-1", 0.25), ("1e-06", 1e-6)])
def test_set_reads_exponent_numbers_as_floats(tmp_path, text, value):
    sweep = load_sweep(write(tmp_path, "s.yaml", "grid:\n  tokenizer.k: [16]\n"), "smoke", [f"ldm.cfg_scale={text}"])
    assert sweep.runs[0].cfg.ldm.cfg_scale == value and isinstance(sweep.runs[0].cfg.ldm.cfg_scale, float)


@pytest.mark.parametrize("text", ["e5", "1e", "3e-4x", "dino_tiny"])
def test_set_keeps_strings_that_are_not_numbers(text):
    from digit_bench.config import _parse_set

    assert _parse_set(f"backbone.name={text}").value == text


LEAVES = [(k, v) for k, v in __import__("digit_bench.config", fromlist=["flatten"]).flatten(to_dict(ExperimentConfig())).items()
          if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("name",) and not k.startswith("launcher.")
          and k.removeprefix("probe.") not in PROBE_PAPER_FIELDS]  # the paper probe's settings: see the test below


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(LEAVES), st.integers(1, 1000))
def test_any_field_change_gives_a_new_id(leaf, delta):
    key, value = leaf
    base = ExperimentConfig()
    changed = apply_overrides(base, [Override(key, value + delta, "test")])
    reverted = apply_overrides(changed, [Override(key, value, "test")])
    point = {"seed": 0}
    assert run_id(changed, point) != run_id(base, point)
    assert run_id(reverted, point) == run_id(base, point)  # the id is a function of the values, not of their history


def test_paper_probe_settings_key_runs_only_under_the_paper_protocol():
    base = ExperimentConfig()
    paper = apply_overrides(base, [Override("probe.protocol", "paper", "test")])
    point = {"seed": 0}
    assert run_id(paper, point) != run_id(base, point)
    assert run_id(apply_overrides(base, [Override("probe.lr", 0.1, "test")]), point) == run_id(base, point)
    assert run_id(apply_overrides(paper, [Override("probe.lr", 0.1, "test")]), point) != run_id(paper, point)


def test_launcher_does_not_change_the_run_id():
    base = ExperimentConfig()
    other = dataclasses.replace(base, launcher=dataclasses.replace(base.launcher, mem_gb=999))
    assert run_id(base, {"seed": 0}) == run_id(other, {"seed": 0})


@pytest.mark.parametrize("text, fragments", [
    ("defaults:\n  tokenizer.kk: 3\n", ["s.yaml:2", "tokenizer.kk", "did you mean tokenizer.k?"]),
    ("defaults:\n  tokeniser.k: 3\n", ["s.yaml:2", "did you mean tokenizer?"]),
    ("defaults:\n  train.steps: many\n", ["s.yaml:2", "train.steps", "expected int"]),
    ("defaults:\n  tokenizer.backend: faiss_gpu\n", ["tokenizer.backend", "choose one of: faiss, torch"]),
    ("defaults:\n  train.batch_size: -4\n", ["s.yaml:2", "train.batch_size", "must be > 0"]),
    ("grid: []\n", ["empty grid"]),
    ("grid:\n  tokenizer.k: []\n", ["non-empty list"]),
    ("include: nowhere.yaml\n", ["s.yaml:1", "included file not found"]),
    ("gird:\n  tokenizer.k: [1]\n", ["unknown top-level key 'gird'", "did you mean grid?"]),
    ("defaults: [\n", ["s.yaml:", "invalid YAML"]),
    ("profiles:\n  smok: {}\n", ["unknown profile 'smok'", "did you mean smoke?"]),
    ("defaults:\n  ssl.crop_size: 12\n", ["ssl.crop_size 12", "multiple of 2 x ssl.patch_size = 8", "e.g. 8"]),
    ("defaults:\n  ssl.crop_size: 64\n", ["ssl.crop_size 64", "at most ssl.image_size 32", "e.g. 32"]),
    ("defaults:\n  launcher.gpus_per_node: 4\n  launcher.tasks_per_node: 2\n",
     ["tasks_per_node 2 != launcher.gpus_per_node 4", "set them equal"]),
])
def test_bad_sweep_files_name_the_cause(tmp_path, text, fragments):
    p = write(tmp_path, "s.yaml", text)
    with pytest.raises(UserError) as err:
        load_sweep(p, "smoke")
    msg = str(err.value)
    assert "\n" not in msg
    for f in fragments:
        assert f in msg, msg


def test_every_shipped_sweep_validates_in_every_profile():
    files = sorted(ABL.glob("*.yaml")) + sorted((ABL.parent / "baselines").glob("*.yaml"))
    for f in files:
        if f.name.startswith("_"):
            continue
        for profile in ("smoke", "tiny", "paper"):
            assert load_sweep(f, profile).runs, f


def test_token_views_start_with_identity_and_take_random_crops():
    runs = load_sweep(ABL / "backbones.yaml", "smoke", ["tokenizer.views=[identity, hflip, crop0, crop1]"]).runs
    assert runs[0].cfg.tokenizer.views == ("identity", "hflip", "crop0", "crop1")
    for bad in ("[hflip, identity]", "[identity, crop]", "[identity, identity]"):
        with pytest.raises(UserError, match="starting with identity"):
            load_sweep(ABL / "backbones.yaml", "smoke", [f"tokenizer.views={bad}"])
