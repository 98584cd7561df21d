"""Every registered name resolves to a real callable, a generator to its recipe (lazy "module:attr" targets cannot
rot silently)."""

from __future__ import annotations

import pytest

from digit_bench.registry import ALL


@pytest.mark.parametrize("kind, name", [(k, n) for k, reg in ALL.items() for n in reg.names()])
def test_every_entry_resolves(kind, name):
    target = ALL[kind].get(name)
    if kind == "generators":
        from digit_bench.generators.common import Generator

        assert isinstance(target, Generator) and callable(target.nodes) and callable(target.seeds)
    else:
        assert callable(target)


def test_metric_entries_know_their_direction():
    assert ALL["metrics"].get("fd")() is False and ALL["metrics"].get("probe_top1")() is True
