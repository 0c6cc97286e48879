"""Post-hoc recalibration of predicted widths, fitted on validation and judged on test.

Two recalibrators, both per parameter:

* **Variance scaling**: ``σ' = s σ`` with the closed-form NLL-minimising factor
  ``s² = mean((Δ/σ)²)`` on the fitting set (Δ = mean − truth). It fixes widths that are wrong by a
  constant factor and keeps the posterior Gaussian. (:func:`fit_coverage_scaling` fits the same
  ``s`` to the coverage error instead, for the training-time width factor.)
* **Isotonic recalibration of the CDF** (Kuleshov, Fenner & Ermon 2018): with PIT values
  ``p_i = F_i(y_i)`` on the fitting set, fit a monotone map ``R`` with ``R(p_(i)) ≈ i/(n+1)``
  (the expected order statistics of U(0,1)), anchored at R(0)=0, R(1)=1 and linearly
  interpolated. ``R ∘ F`` is then calibrated; its central interval at ``level`` runs between
  ``F⁻¹(R⁻¹((1 ∓ level)/2))``. It fixes any miscalibration of the PIT distribution's shape.

Arrays are ``(N, P)`` in physical units; scales ``(P,)`` are dimensionless.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtri

from cosmoinfer.calibration.coverage import coverage_error, coverage_from_pit, pit
from cosmoinfer.calibration.levels import DEFAULT_LEVELS

try:  # scipy >= 1.12
    from scipy.optimize import isotonic_regression as _scipy_iso
except ImportError:  # pragma: no cover - old scipy
    _scipy_iso = None


def pava(y: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Increasing isotonic regression of ``y (n,)`` (pool adjacent violators); scipy's when available."""
    y = np.asarray(y, dtype=np.float64)
    if _scipy_iso is not None:
        return np.asarray(_scipy_iso(y, weights=weights).x)
    w = np.ones_like(y) if weights is None else np.asarray(weights, dtype=np.float64)
    vals, wts, sizes = [], [], []
    for yi, wi in zip(y, w):
        vals.append(yi)
        wts.append(wi)
        sizes.append(1)
        while len(vals) > 1 and vals[-2] > vals[-1]:
            v2, w2, s2 = vals.pop(), wts.pop(), sizes.pop()
            wsum = wts[-1] + w2
            vals[-1] = (vals[-1] * wts[-1] + v2 * w2) / wsum
            wts[-1] = wsum
            sizes[-1] += s2
    return np.repeat(vals, sizes)


def fit_std_scaling(truth_val, mean_val, std_val) -> np.ndarray:
    """NLL-optimal width scale per parameter: ``s = sqrt(mean((Δ/σ)²))``, ``(P,)``.

    ``s > 1``: intervals too narrow; ``s < 1``: too wide.
    """
    z = (np.asarray(truth_val, float) - np.asarray(mean_val, float)) / np.asarray(std_val, float)
    return np.sqrt(np.mean(z**2, axis=0))


def fit_coverage_scaling(truth_val, mean_val, std_val, levels=DEFAULT_LEVELS) -> np.ndarray:
    """Width scale per parameter whose central intervals cover closest to nominal, ``(P,)``.

    The ``s`` that minimises ``max_levels |coverage(|Δ/σ| ≤ s Φ⁻¹((1 + level)/2)) − level|``: the
    coverage error the report reads, not the NLL. One simulation whose maps all sit far outside
    their intervals moves a few indicators here, where it can dominate ``mean((Δ/σ)²)``
    (:func:`fit_std_scaling`). Searched on a log grid of step 0.1% over [1/4, 4]; where several
    scales tie, the geometric middle of the tied ones.
    """
    lv = np.asarray(levels, dtype=np.float64)
    std = np.asarray(std_val, dtype=np.float64)
    grid = np.exp(np.arange(np.log(0.25), np.log(4.0) + 1e-12, 0.001))  # (S,)
    # the report's coverage error (coverage.coverage_error of the PIT's central intervals) at every scale: (S, P)
    err = np.array([coverage_error(coverage_from_pit(pit(truth_val, mean_val, g * std), lv), lv) for g in grid])
    out = np.empty(err.shape[1])
    for j in range(err.shape[1]):
        best = np.flatnonzero(err[:, j] <= err[:, j].min() + 1e-12)
        out[j] = np.sqrt(grid[best[0]] * grid[best[-1]])
    return out


def apply_std_scaling(std, s) -> np.ndarray:
    """Recalibrated widths ``std * s`` (``std (N, P)``, ``s (P,)``)."""
    return np.asarray(std, dtype=np.float64) * np.asarray(s, dtype=np.float64)


@dataclass
class IsotonicCalibrator:
    """Monotone maps ``R_j: [0,1] → [0,1]`` of the PIT, one per parameter.

    ``knots_x[j]``, ``knots_y[j]`` are increasing knots (with (0,0) and (1,1)); ``R_j`` is their
    linear interpolation.
    """

    knots_x: list[np.ndarray]
    knots_y: list[np.ndarray]
    eps: float = 1e-6

    @classmethod
    def from_pit(cls, pit_values) -> "IsotonicCalibrator":
        """Fit on PIT values ``(N, P)`` (Gaussian or mixture PITs alike)."""
        p = np.asarray(pit_values, dtype=np.float64)
        n = p.shape[0]
        xs, ys = [], []
        for j in range(p.shape[1]):
            x = np.sort(p[:, j])
            y = pava(np.arange(1, n + 1) / (n + 1))
            # Ties in x: keep one knot per distinct x (the largest fitted value keeps R monotone).
            ux, last = np.unique(x[::-1], return_index=True)
            uy = y[::-1][last]
            xs.append(np.concatenate([[0.0], ux, [1.0]]))
            ys.append(np.concatenate([[0.0], uy, [1.0]]))
        return cls(xs, ys)

    @property
    def p(self) -> int:
        return len(self.knots_x)

    def calibrate_pit(self, pit_values) -> np.ndarray:
        """``R(PIT)``, ``(N, P)``: the recalibrated CDF at the truth."""
        p = np.asarray(pit_values, dtype=np.float64)
        return np.stack([np.interp(p[:, j], self.knots_x[j], self.knots_y[j]) for j in range(self.p)], axis=1)

    def inverse(self, q: float) -> np.ndarray:
        """``R⁻¹(q)`` per parameter, ``(P,)`` (flat stretches of R resolve to their first point)."""
        out = []
        for x, y in zip(self.knots_x, self.knots_y):
            uy, first = np.unique(y, return_index=True)
            out.append(np.interp(q, uy, x[first]))
        return np.clip(np.array(out), self.eps, 1 - self.eps)

    def recalibrated_coverage(self, truth, mean, std, levels=DEFAULT_LEVELS) -> np.ndarray:
        """Coverage ``(L, P)`` of the recalibrated central intervals on ``(truth, mean, std)``."""
        lv = np.asarray(levels, dtype=np.float64)
        r = self.calibrate_pit(pit(truth, mean, std))
        d = np.abs(r - 0.5)
        return np.mean(d[None] <= lv[:, None, None] / 2, axis=1)

    def recalibrated_coverage_from_pit(self, pit_values, levels=DEFAULT_LEVELS) -> np.ndarray:
        """As :meth:`recalibrated_coverage` for precomputed PIT values ``(N, P)``."""
        lv = np.asarray(levels, dtype=np.float64)
        d = np.abs(self.calibrate_pit(pit_values) - 0.5)
        return np.mean(d[None] <= lv[:, None, None] / 2, axis=1)

    def interval(self, mean, std, level: float):
        """Recalibrated central interval at ``level`` of Gaussian predictions: ``(lo, hi)``, each ``(N, P)``."""
        mean = np.asarray(mean, dtype=np.float64)
        std = np.asarray(std, dtype=np.float64)
        z_lo = ndtri(self.inverse(0.5 - level / 2))
        z_hi = ndtri(self.inverse(0.5 + level / 2))
        return mean + std * z_lo, mean + std * z_hi


def fit_isotonic(truth_val, mean_val, std_val) -> IsotonicCalibrator:
    """Fit the isotonic PIT recalibrator on validation Gaussian predictions ``(N, P)``."""
    return IsotonicCalibrator.from_pit(pit(truth_val, mean_val, std_val))
