"""How numbers read in the report, on the page and in the plots' labels alike."""

from __future__ import annotations

import math
from typing import Any


def fmt(value: Any, digits: int = 4) -> str:
    """Values for people: None as a dash, floats to `digits` decimals (significant digits when tiny or huge)."""
    if value is None:
        return "—"
    if not isinstance(value, float) or not math.isfinite(value):
        return str(value)
    if abs(value) < 1e-3 or abs(value) >= 1e5:
        return f"{value:.{digits}g}"
    return f"{value:.{digits}f}".rstrip("0").rstrip(".")
