"""The map from a network's unit coordinates to physical parameters, one prior at a time.

Networks predict in unit coordinates ``u`` (each parameter scaled to [0, 1] by its prior, in log
space for a log-uniform prior). The bijection to physical units is, per parameter ``j``:

    affine (uniform prior):     theta_j = a_j + b_j u_j
    exp (log-uniform prior):    theta_j = exp(a_j + b_j u_j)

so a Gaussian in ``u`` is a Gaussian (affine) or a lognormal (exp) in physical units. Files
written before the predictive was stored carry no unit coordinates; they use the identity
(``a = 0``, ``b = 1``, affine), i.e. their "unit" coordinates are the physical ones.

Arrays have the parameters on the last axis, ``(..., P)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from cosmoinfer.data.priors import Prior


@dataclass(frozen=True)
class Bijection:
    """Per-parameter ``theta = a + b u`` or ``theta = exp(a + b u)``.

    Attributes: ``shift`` a ``(P,)``, ``scale`` b ``(P,)`` (> 0), ``log`` ``(P,)`` bool (exp map).
    ``box`` is the prior box in unit coordinates, ``(low (P,), high (P,))``, or ``None``.
    """

    shift: np.ndarray
    scale: np.ndarray
    log: np.ndarray
    box: tuple[np.ndarray, np.ndarray] | None = None

    @classmethod
    def from_priors(cls, priors: Sequence[Prior]) -> "Bijection":
        """The networks' unit coordinates of ``priors``; the prior box is ``[0, 1]^P``."""
        log = np.array([p.log for p in priors], dtype=bool)
        lo = np.array([np.log(p.low) if p.log else p.low for p in priors], dtype=np.float64)
        hi = np.array([np.log(p.high) if p.log else p.high for p in priors], dtype=np.float64)
        p = len(priors)
        return cls(lo, hi - lo, log, (np.zeros(p), np.ones(p)))

    @classmethod
    def identity(cls, p: int, priors: Sequence[Prior] | None = None) -> "Bijection":
        """Unit coordinates that are the physical ones; the box from ``priors`` where given."""
        box = None
        if priors is not None:
            box = (np.array([pr.low for pr in priors], float), np.array([pr.high for pr in priors], float))
        return cls(np.zeros(p), np.ones(p), np.zeros(p, dtype=bool), box)

    @property
    def p(self) -> int:
        return int(self.scale.shape[0])

    def forward(self, u: np.ndarray) -> np.ndarray:
        """Unit coordinates ``(..., P)`` -> physical ``(..., P)``."""
        y = self.shift + self.scale * np.asarray(u, dtype=np.float64)
        return np.where(self.log, np.exp(np.where(self.log, y, 0.0)), y)

    def inverse(self, theta: np.ndarray) -> np.ndarray:
        """Physical ``(..., P)`` -> unit coordinates; a non-positive value of an exp parameter -> -inf."""
        theta = np.asarray(theta, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            y = np.where(self.log, np.log(np.where(self.log & (theta > 0), theta, 1.0)), theta)
            y = np.where(self.log & ~(theta > 0), -np.inf, y)
        return (y - self.shift) / self.scale

    def log_abs_det_jacobian(self, u: np.ndarray) -> np.ndarray:
        """``ln |d theta_j / d u_j|`` per parameter, ``(..., P)`` (``ln b``, plus ``a + b u`` for exp)."""
        y = self.shift + self.scale * np.asarray(u, dtype=np.float64)
        return np.log(self.scale) + np.where(self.log, y, 0.0)

    def in_box(self, u: np.ndarray) -> np.ndarray:
        """Whether unit coordinates ``(..., P)`` lie inside the prior box, ``(...)`` bool (all True without one)."""
        u = np.asarray(u)
        if self.box is None:
            return np.ones(u.shape[:-1], dtype=bool)
        return np.all((u >= self.box[0]) & (u <= self.box[1]), axis=-1)

    def to_attrs(self) -> dict:
        """JSON-able description (stored beside the predictive in predictions.h5)."""
        d = {"shift": self.shift.tolist(), "scale": self.scale.tolist(), "log": self.log.astype(int).tolist()}
        if self.box is not None:
            d["box_low"], d["box_high"] = self.box[0].tolist(), self.box[1].tolist()
        return d

    @classmethod
    def from_attrs(cls, d: dict) -> "Bijection":
        box = None
        if "box_low" in d:
            box = (np.asarray(d["box_low"], float), np.asarray(d["box_high"], float))
        scale = np.asarray(d["scale"], float)
        if scale.ndim != 1 or np.any(~(scale > 0)):
            raise ValueError("bijection scale must be a list of positive numbers")
        return cls(np.asarray(d["shift"], float), scale, np.asarray(d["log"], bool), box)
