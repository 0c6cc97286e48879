"""Parameter priors and the map between physical parameters and the unit cube.

A prior is uniform on ``[low, high]`` or log-uniform (uniform in ``ln theta``). Networks see
parameters scaled to ``[0, 1]`` by the prior, in log space for log-uniform ones:

    u = (theta - low) / (high - low)                       (uniform)
    u = (ln theta - ln low) / (ln high - ln low)           (log-uniform)

All functions take arrays whose last axis runs over parameters, shape ``(..., P)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import numpy as np

#: CMD parameter table columns, in file order (AGN1 comes before SN2).
CMD_PARAM_NAMES = ("Omega_m", "sigma_8", "A_SN1", "A_AGN1", "A_SN2", "A_AGN2")


@dataclass(frozen=True)
class Prior:
    """One parameter's prior: ``name``, ``low``, ``high`` and ``log`` (log-uniform if true)."""

    name: str
    low: float
    high: float
    log: bool = False

    def __post_init__(self):
        if not self.high > self.low:
            raise ValueError(f"prior {self.name}: high ({self.high}) must exceed low ({self.low})")
        if self.log and self.low <= 0:
            raise ValueError(f"prior {self.name}: log-uniform needs low > 0, got {self.low}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["distribution"] = "log-uniform" if self.log else "uniform"
        del d["log"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Prior":
        dist = d.get("distribution", "uniform")
        if dist not in ("uniform", "log-uniform"):
            raise ValueError(f"prior {d.get('name')}: distribution must be uniform or log-uniform, got {dist!r}")
        return cls(str(d["name"]), float(d["low"]), float(d["high"]), dist == "log-uniform")


def standard_priors(suite: str = "IllustrisTNG") -> list[Prior]:
    """The CAMELS LH priors for the six CMD parameters (Astrid: A_AGN2 log-uniform [0.25, 4])."""
    agn2 = (0.25, 4.0) if suite.lower() == "astrid" else (0.5, 2.0)
    return [
        Prior("Omega_m", 0.1, 0.5),
        Prior("sigma_8", 0.6, 1.0),
        Prior("A_SN1", 0.25, 4.0, log=True),
        Prior("A_AGN1", 0.25, 4.0, log=True),
        Prior("A_SN2", 0.5, 2.0, log=True),
        Prior("A_AGN2", *agn2, log=True),
    ]


def select(priors: Iterable[Prior], names: Sequence[str]) -> list[Prior]:
    """The priors of ``names`` in that order; ``KeyError`` names an unknown parameter."""
    by_name = {p.name: p for p in priors}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise KeyError(f"unknown parameter(s) {missing}; known: {sorted(by_name)}")
    return [by_name[n] for n in names]


def _bounds(priors: Sequence[Prior]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    log = np.array([p.log for p in priors])
    low = np.array([np.log(p.low) if p.log else p.low for p in priors], dtype=np.float64)
    high = np.array([np.log(p.high) if p.log else p.high for p in priors], dtype=np.float64)
    return low, high, log


def to_unit(theta: np.ndarray, priors: Sequence[Prior]) -> np.ndarray:
    """Physical parameters ``(..., P)`` -> unit-cube coordinates ``(..., P)``."""
    low, high, log = _bounds(priors)
    theta = np.asarray(theta, dtype=np.float64)
    x = np.where(log, np.log(np.where(log, theta, 1.0)), theta)
    return (x - low) / (high - low)


def from_unit(u: np.ndarray, priors: Sequence[Prior]) -> np.ndarray:
    """Unit-cube coordinates ``(..., P)`` -> physical parameters ``(..., P)``."""
    low, high, log = _bounds(priors)
    x = low + np.asarray(u, dtype=np.float64) * (high - low)
    return np.where(log, np.exp(x), x)


def gaussian_to_physical(mean_u: np.ndarray, var_u: np.ndarray, priors: Sequence[Prior]):
    """Moments of a Gaussian in unit space -> exact moments in physical units.

    For a uniform prior the map is affine. For a log-uniform one ``theta = exp(a + b u)`` is
    lognormal, with mean ``exp(m + s²/2)`` and variance ``(exp(s²) - 1) exp(2m + s²)`` where
    ``m = a + b mu`` and ``s² = b² var``. Returns ``(mean, var)``, both ``(..., P)``.
    """
    low, high, log = _bounds(priors)
    b = high - low
    m = low + b * np.asarray(mean_u, dtype=np.float64)
    s2 = b**2 * np.asarray(var_u, dtype=np.float64)
    mean_log = np.exp(np.where(log, m + s2 / 2, 0.0))
    var_log = np.expm1(np.where(log, s2, 0.0)) * np.exp(np.where(log, 2 * m + s2, 0.0))
    return np.where(log, mean_log, m), np.where(log, var_log, s2)


def sample(priors: Sequence[Prior], n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` independent draws from the priors, shape ``(n, P)``."""
    return from_unit(rng.uniform(size=(n, len(priors))), priors)
