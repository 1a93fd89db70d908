"""Checks shared by the online engine's option objects (standard library only: the option
objects travel to workers and simulation processes, which should not import torch for them)."""

from __future__ import annotations

import math
from numbers import Integral
from typing import Any


def check_int(value: Any, name: str, low: int) -> int:
    """``value`` as an ``int``, or ``ValueError`` naming ``name`` unless it is an integer
    (Python's or numpy's; not a bool) ``>= low``."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def check_seconds(value: Any, name: str, *, optional: bool = False) -> None:
    """``ValueError`` naming ``name`` unless ``value`` is a finite number of seconds > 0
    (or None when ``optional``)."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not 0 < value < math.inf:
        allowed = "a finite number of seconds > 0" + (" or None" if optional else "")
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
