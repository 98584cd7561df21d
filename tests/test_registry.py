"""Every registered name resolves to a real callable (lazy "module:attr" targets cannot rot silently)."""

from __future__ import annotations

import pytest

from digit_bench.registry import ALL


@pytest.mark.parametrize("kind, name", [(k, n) for k, reg in ALL.items() for n in reg.names()])
def test_every_entry_resolves(kind, name):
    assert callable(ALL[kind].get(name))


def test_metric_entries_know_their_direction():
    assert ALL["metrics"].get("fd")() is False and ALL["metrics"].get("probe_top1")() is True
