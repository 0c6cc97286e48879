"""Quadrature on the nodes of a column grid: Simpson weights, log-densities taken as Hermite cubics
between nodes (integrals, roots and peaks of ``exp(cubic)``), and running a method block by block.

:class:`~cosmoinfer.posterior.grid.GridPredictive` is built on these; they take and return plain
arrays (``(..., G)`` node values per row, ``(..., 4)`` cubic coefficients per segment).
"""

from __future__ import annotations

import numpy as np

#: log-density values below the row maximum minus this are treated as this (keeps the cubics finite)
FLOOR_NATS = 60.0


def simpson_weights(n: int) -> np.ndarray:
    """Composite Simpson weights for ``n`` equally spaced nodes at unit spacing (trapezoid if ``n`` is even)."""
    w = np.ones(n)
    if n < 2:
        return w
    if n % 2 == 1 and n >= 3:
        w[1:-1:2], w[2:-1:2] = 4.0, 2.0
        return w / 3.0
    w[0] = w[-1] = 0.5
    return w


def floor_log(lf: np.ndarray) -> np.ndarray:
    """Log values with ``-inf`` (and anything far below the row maximum) raised to ``max - FLOOR_NATS``."""
    top = np.max(lf, axis=-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    return np.maximum(lf, top - FLOOR_NATS)


_GL_X, _GL_W = np.polynomial.legendre.leggauss(6)
_GL_U, _GL_W = (_GL_X + 1) / 2, _GL_W / 2  # on [0, 1]
#: items per block in the heavier methods (bounds memory at a few x 10 MB per array)
ITEMS_PER_BLOCK = 256


def hermite_cubic(f0, f1, m0, m1) -> np.ndarray:
    """Hermite cubic on ``u`` in [0, 1] with end values ``f0``, ``f1`` and slopes ``m0``, ``m1``: coefficients ``(..., 4)``."""
    return np.stack([f0, m0, 3 * (f1 - f0) - 2 * m0 - m1, 2 * (f0 - f1) + m0 + m1], axis=-1)


def cubic_value(c: np.ndarray, u) -> np.ndarray:
    """Value of the cubics ``c (..., 4)`` at ``u``."""
    return c[..., 0] + u * (c[..., 1] + u * (c[..., 2] + u * c[..., 3]))


def cubic_slope(c: np.ndarray, u) -> np.ndarray:
    """Derivative of the cubics ``c (..., 4)`` at ``u``."""
    return c[..., 1] + u * (2 * c[..., 2] + 3 * u * c[..., 3])


def cubic_exp_integral(c: np.ndarray, s) -> np.ndarray:
    """``int_0^s exp(cubic(u)) du`` per segment, ``c (..., 4)``, ``s (...)`` in [0, 1] (6-point Gauss-Legendre)."""
    s = np.asarray(s, dtype=np.float64)
    return s * np.sum(_GL_W * np.exp(cubic_value(c[..., None, :], s[..., None] * _GL_U)), axis=-1)


def cubic_root(c: np.ndarray, a=0.0, b=1.0, n_iter: int = 10) -> np.ndarray:
    """A root in ``[a, b]`` of the cubics ``c (..., 4)`` whose values at ``a`` and ``b`` differ in sign (safeguarded Newton)."""
    a, b = (np.broadcast_to(np.asarray(v, dtype=np.float64), c.shape[:-1]).copy() for v in (a, b))
    fa, fb = cubic_value(c, a), cubic_value(c, b)
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.clip(a + np.where(fa != fb, fa / (fa - fb), 0.5) * (b - a), a, b)
        for _ in range(n_iter):
            fu = cubic_value(c, u)
            same = np.sign(fu) == np.sign(fa)
            a, b = np.where(same, u, a), np.where(same, b, u)
            step = u - fu / cubic_slope(c, u)
            u = np.where(np.isfinite(step) & (step > a) & (step < b), step, 0.5 * (a + b))
    return u


def cubic_peak(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Position in [0, 1] and value of the largest interior maximum of the cubics ``c (..., 4)`` (value -inf if none)."""
    c1, c2, c3 = c[..., 1], c[..., 2], c[..., 3]
    best_u, best_v = np.full(c1.shape, 0.5), np.full(c1.shape, -np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        disc = np.sqrt(np.maximum(c2 * c2 - 3 * c3 * c1, 0.0))
        quad = np.abs(c3) > 1e-12 * (np.abs(c2) + np.abs(c1) + 1e-300)
        for r in (np.where(quad, (-c2 + disc) / (3 * c3), -c1 / (2 * c2)),
                  np.where(quad, (-c2 - disc) / (3 * c3), np.nan)):
            v = cubic_value(c, r)
            ok = (r > 0) & (r < 1) & (2 * c2 + 6 * c3 * r < 0) & (v > best_v)
            best_u, best_v = np.where(ok, r, best_u), np.where(ok, v, best_v)
    return best_u, best_v


class LogCubic:
    """Densities ``exp(lf (..., G))`` on equally spaced nodes with ``lf`` a cubic between nodes.

    The cubic is Hermite with second-order finite-difference slopes (a quadratic ``lf``, i.e. a
    Gaussian, is reproduced exactly). Whole segments (per unit node spacing) are integrated by the
    end-corrected trapezoid rule ``(g0 + g1) / 2 + (g0' - g1') / 12``, part segments by
    Gauss-Legendre on the cubic. Built once, evaluated at many points.
    """

    def __init__(self, lf: np.ndarray):
        lf = floor_log(np.asarray(lf, dtype=np.float64))
        self.g = lf.shape[-1]
        self.f = lf - np.max(lf, axis=-1, keepdims=True)
        self.m = np.gradient(self.f, axis=-1, edge_order=2) if self.g > 2 else np.repeat(
            np.diff(self.f, axis=-1), 2, axis=-1)
        e = np.exp(self.f)
        em = e * self.m
        self.seg = np.maximum(0.5 * (e[..., :-1] + e[..., 1:]) + (em[..., :-1] - em[..., 1:]) / 12, 0.0)
        self.cum = np.concatenate([np.zeros(self.seg.shape[:-1] + (1,)), np.cumsum(self.seg, axis=-1)], axis=-1)
        self.total = self.cum[..., -1]

    def coeffs(self, k: np.ndarray) -> np.ndarray:
        """Cubic of segment ``k`` (an index array broadcasting against the rows) -> ``(..., 4)``."""
        k = np.asarray(k)[..., None]
        t = lambda a, j: np.take_along_axis(a, k + j, axis=-1)[..., 0]  # noqa: E731
        return hermite_cubic(t(self.f, 0), t(self.f, 1), t(self.m, 0), t(self.m, 1))

    def cdf(self, first, h, x0) -> np.ndarray:
        """CDF at ``x0`` for rows whose nodes are ``first + h k`` (all broadcasting); 0 below, 1 above, 0 for no mass."""
        first, h, x0 = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in (first, h, x0)))
        with np.errstate(divide="ignore", invalid="ignore"):
            pos = np.where(h > 0, (x0 - first) / np.where(h > 0, h, 1.0), 0.0)
        k = np.clip(np.floor(pos), 0, self.g - 2).astype(np.int64)
        s = np.clip(pos - k, 0.0, 1.0)
        part = np.take_along_axis(self.cum, k[..., None], axis=-1)[..., 0] + cubic_exp_integral(self.coeffs(k), s)
        total = np.broadcast_to(self.total, part.shape)
        with np.errstate(divide="ignore", invalid="ignore"):
            f = np.where(total > 0, part / total, 0.0)
        return np.clip(np.where(pos <= 0, 0.0, np.where(pos >= self.g - 1, 1.0, f)), 0.0, 1.0)


def blockwise(axis: int = 0):
    """Run a method on blocks of :data:`ITEMS_PER_BLOCK` items (array arguments split along their first axis)."""
    def wrap(fn):
        def run(self, *args, **kwargs):
            if self.n <= ITEMS_PER_BLOCK:
                return fn(self, *args, **kwargs)
            outs = []
            for a in range(0, self.n, ITEMS_PER_BLOCK):
                sl = slice(a, min(a + ITEMS_PER_BLOCK, self.n))
                part = [x[sl] if isinstance(x, np.ndarray) and x.ndim >= 1 and x.shape[0] == self.n else x
                        for x in args]
                outs.append(fn(self._view(sl), *part, **kwargs))
            if isinstance(outs[0], tuple):
                return tuple(np.concatenate(o, axis=axis) for o in zip(*outs))
            return np.concatenate(outs, axis=axis)

        run.__doc__, run.__name__ = fn.__doc__, fn.__name__
        return run

    return wrap
