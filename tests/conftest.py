"""Shared fixtures: an artifact root per test, and offline settings for timm/HF."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a missing weight file fails in well under a second, never downloads
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture
def root(tmp_path):
    """An empty artifact root."""
    return tmp_path / "runs"
