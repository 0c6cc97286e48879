"""Nominal levels, false-alarm rates and the array helpers the metric modules share.

``levels`` are central-interval probabilities in (0, 1), shape ``(L,)``; metrics.json keys a level
by :func:`level_key`.
"""

from __future__ import annotations

import numpy as np

#: Nominal levels of the coverage curve: 0.05, 0.10, ..., 0.95 (DESIGN.md coverage_error).
DEFAULT_LEVELS = tuple(np.round(np.arange(1, 20) * 0.05, 2).tolist())
#: Levels reported under the ``coverage`` key of metrics.json.
REPORTED_LEVELS = (0.68, 0.95)

#: Family-wise false-alarm rate of a verdict, split between its two tests (coverage, width scale).
ALPHA_VERDICT = 0.05
ALPHA_COVERAGE = ALPHA_VERDICT / 2
ALPHA_SCALE = ALPHA_VERDICT / 2


def as_float(a) -> np.ndarray:
    """``a`` as a float64 array."""
    return np.asarray(a, dtype=np.float64)


def check_levels(levels) -> np.ndarray:
    """Nominal levels as a flat ``(L,)`` float array; refuses levels outside (0, 1)."""
    lv = as_float(levels).ravel()
    if np.any((lv <= 0) | (lv >= 1)):
        raise ValueError(f"levels must lie strictly inside (0, 1), got {lv}")
    return lv


def reduce_items(x: np.ndarray, reduce: bool) -> np.ndarray:
    """Mean over items (axis 0) when ``reduce``, else ``x`` unchanged."""
    return x.mean(axis=0) if reduce else x


def level_key(level: float) -> str:
    """metrics.json key of a nominal level: two decimals ("0.05", "0.68"), more only if needed."""
    level = float(level)
    return f"{level:.2f}" if abs(level - round(level, 2)) < 1e-9 else f"{level:g}"
