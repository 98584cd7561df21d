"""Stage contracts: each stage module declares a frozen dataclass `Cfg`, exactly its inputs, typed. The generator
recipe builds it; the node stores its JSON form (hashed into the artifact id) apart from the fields marked SPEED
(batch sizes of batch-invariant inference), which reach the stage but not the id; the stage gets it back typed.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from digit_bench.config import build, to_dict

SPEED = {"speed": True}  # metadata of a stage Cfg field that changes speed only (a batch size): left out of the id


def split_cfg(cfg: Any) -> tuple[dict, dict]:
    """(hashed dict, speed dict) of a stage's typed `Cfg`: the fields marked SPEED go to the second."""
    d, speed = to_dict(cfg), {f.name for f in dataclasses.fields(cfg) if f.metadata.get("speed")}
    return {k: v for k, v in d.items() if k not in speed}, {k: v for k, v in d.items() if k in speed}


def typed(cls: type, d: dict) -> Any:
    """A stage's `Cfg` rebuilt from its JSON form: config sections rebuilt strictly, lists back to tuples. `threads`
    is the engine's (fixed_threads); any other key the Cfg does not declare is an error."""
    hints, names = typing.get_type_hints(cls), {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names - {"threads"}
    if unknown:
        raise TypeError(f"{cls.__module__}.Cfg has no field(s) {sorted(unknown)}")
    kw = {}
    for name in names & set(d):
        value, hint = d[name], hints[name]
        if dataclasses.is_dataclass(hint):
            value = build(hint, value)
        elif typing.get_origin(hint) is tuple:
            value = tuple(value)
        kw[name] = value
    return cls(**kw)
