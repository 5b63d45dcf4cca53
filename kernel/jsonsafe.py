"""One rule for non-finite numbers in every JSON file fkernel writes: they become null.

JSON has no NaN or Infinity; Python's ``json`` writes them as bare ``NaN`` / ``Infinity``, which
other readers refuse. A mean return before the first finished episode, an explained variance of
constant returns or a non-finite gradient norm are written as null; readers take null as "no
value" (NaN).
"""
from __future__ import annotations

import json
import math
from typing import Any


def finite_or_none(value: Any) -> Any:
    """``value`` with every non-finite float (in dicts, lists and tuples, all the way down) as None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def dumps(value: Any, **kwargs) -> str:
    """``json.dumps`` of ``value`` with non-finite floats as null (and never a bare NaN)."""
    return json.dumps(finite_or_none(value), allow_nan=False, **kwargs)


def number(value: Any) -> float:
    """A number read back from such a file: null (or a missing value) is NaN."""
    return float("nan") if value is None else float(value)
