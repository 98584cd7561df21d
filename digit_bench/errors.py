"""The one exception type for mistakes a user can fix: the CLI prints its message on one line and exits 2."""

from __future__ import annotations

import json
import sys
from typing import Any, Callable


class UserError(Exception):
    """Bad input (config, path, name, data): the message names the cause and the fix, on one line."""


def guarded(fn: Callable[[], Any], debug: bool = False) -> int:
    """Run fn; print its result as one JSON line; UserError -> one line on stderr and exit code 2."""
    try:
        result = fn()
    except UserError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    if result is not None:
        print(json.dumps(result, default=str))
    return 0
