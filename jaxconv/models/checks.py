"""Field checks shared by the model families: each raises ``ValueError`` naming the field and
what is valid, from a module's ``__post_init__`` (before anything is traced)."""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np


def positive_ints(field: str, values) -> tuple[int, ...]:
    """``values`` (an int or a sequence of them) as a tuple of positive Python ints."""
    values = tuple(values) if isinstance(values, (list, tuple)) else (values,)
    if not values or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0
                         for v in values):
        raise ValueError(f"{field} must be positive ints, got {values!r}")
    return tuple(int(v) for v in values)


def check_choice(field: str, value: Any, choices: Iterable[Any]) -> None:
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"{field} must be one of {choices}, got {value!r}")


def check_rate(field: str, rate) -> None:
    """A dropout-style probability: a float in [0, 1)."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
        raise ValueError(f"{field} must be a float in [0, 1), got {rate!r}")
