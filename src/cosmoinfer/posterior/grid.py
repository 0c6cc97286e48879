"""A two-parameter predictive known on a grid: the exact posterior of a map, for instance.

The density lives on a *column grid* in log coordinates ``x = ln theta_0``, ``y = ln theta_1``
(both parameters positive), built to follow a narrow curved ridge such as the exact GRF
posterior of ``(Omega_m, sigma_8)``:

* ``Gx`` columns at equally spaced ``x_i`` (per item), spanning where the posterior has mass;
* in column ``i``, ``Gy`` equally spaced nodes ``y_ij = lo_i + (hi_i - lo_i) j / (Gy - 1)`` over
  that column's own window ``[lo_i, hi_i]`` (where the conditional density of ``y`` is within a
  few dozen nats of its maximum, clipped to the prior box).

Each column resolves the ridge across its width however thin it is, since the window follows the
ridge. In the coordinates ``(x, t)`` with ``y = lo(x) + (hi(x) - lo(x)) t`` (``lo``, ``hi``
interpolated linearly between columns) the grid is a plain tensor grid.

Stored per item: ``log_q (N, Gx, Gy)``, the normalised log-density in ``(x, y)`` (so the physical
density is ``p(theta) = q / (theta_0 theta_1)``), and ``log_norm (N,)``, the log of the evidence
``ln Z`` of the unnormalised density a ``density`` object evaluates at any point. With that
object, :meth:`GridPredictive.log_prob` is the analytic log-density minus ``ln Z`` (the grid only
normalises); without it the grid is interpolated.

Quadrature (:mod:`~cosmoinfer.posterior.grid_quadrature`): Simpson's rule along ``x`` and within each column (an odd number of nodes; the
trapezoid rule otherwise), so windows cut by the prior box cost ``O(h^4)``. Cumulative quantities
(marginal CDFs, highest-density masses) take the log-density as a cubic between nodes (Hermite,
reproducing a Gaussian exactly) and combine columns with trapezoid weights.

Shapes: ``theta (N, P)`` with ``P = 2`` unless stated; everything in physical units unless the name
says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
from scipy.special import logsumexp

from cosmoinfer.posterior.bijection import Bijection
from cosmoinfer.posterior.grid_quadrature import (
    LogCubic,
    blockwise,
    cubic_exp_integral,
    cubic_peak,
    cubic_root,
    cubic_value,
    floor_log,
    hermite_cubic,
    simpson_weights,
)


class PointDensity(Protocol):
    """The unnormalised log-density ``ln [L(theta | x_n) prior(theta)]`` of items, physical units.

    ``__call__(theta (..., n, P), items (n,)) -> (..., n)``: ``-inf`` outside the prior box;
    ``items`` index the items the object was built for.
    """

    def __call__(self, theta: np.ndarray, items: np.ndarray) -> np.ndarray: ...


@dataclass
class GridPredictive:
    """Per item, a normalised density on a column grid in ``(ln theta_0, ln theta_1)``.

    Attributes:
        x: ``(N, Gx)`` column positions ``ln theta_0``, equally spaced per item.
        lo, hi: ``(N, Gx)`` each column's window in ``ln theta_1`` (``hi >= lo``; equal for a
            column of no mass).
        log_q: ``(N, Gx, Gy)`` normalised log-density in ``(ln theta_0, ln theta_1)`` at the nodes.
        log_norm: ``(N,)`` ``ln Z`` of ``density`` (0 when there is none).
        bijection: unit <-> physical map of the priors (:meth:`Bijection.from_priors`).
        param_names: the two names.
        density: the unnormalised log-density at any point (:class:`PointDensity`), or ``None``
            (the grid is then interpolated).
        items: ``(N,)`` the items of ``density`` these rows are.
    """

    x: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    log_q: np.ndarray
    log_norm: np.ndarray
    bijection: Bijection
    param_names: list[str]
    density: PointDensity | None = None
    items: np.ndarray | None = None

    kind = "grid"

    def __post_init__(self):
        self.x, self.lo, self.hi, self.log_q = (np.asarray(a, dtype=np.float64)
                                                for a in (self.x, self.lo, self.hi, self.log_q))
        self.log_norm = np.asarray(self.log_norm, dtype=np.float64)
        n, gx, gy = self.log_q.shape
        for name, a in (("x", self.x), ("lo", self.lo), ("hi", self.hi)):
            if a.shape != (n, gx):
                raise ValueError(f"{name}: shape {a.shape}, expected {(n, gx)}")
        if self.log_norm.shape != (n,):
            raise ValueError(f"log_norm: shape {self.log_norm.shape}, expected {(n,)}")
        if gx < 3 or gy < 3:
            raise ValueError(f"a grid needs at least 3 x 3 nodes, got {gx} x {gy}")
        if len(self.param_names) != 2 or self.bijection.p != 2:
            raise ValueError("a GridPredictive has exactly two parameters")
        if np.any(self.hi < self.lo):
            raise ValueError("column windows need hi >= lo")
        self.items = np.arange(n) if self.items is None else np.asarray(self.items, dtype=np.int64)

    # ------------------------------------------------------------------ layout
    @property
    def n(self) -> int:
        return int(self.log_q.shape[0])

    @property
    def p(self) -> int:
        return 2

    @property
    def shape(self) -> tuple[int, int]:
        """``(Gx, Gy)``."""
        return int(self.log_q.shape[1]), int(self.log_q.shape[2])

    @property
    def dx(self) -> np.ndarray:
        """Column spacing per item, ``(N,)``."""
        return self.x[:, 1] - self.x[:, 0]

    @property
    def dy(self) -> np.ndarray:
        """Node spacing within each column, ``(N, Gx)``."""
        return (self.hi - self.lo) / (self.shape[1] - 1)

    @property
    def y(self) -> np.ndarray:
        """Node positions ``ln theta_1``, ``(N, Gx, Gy)``."""
        t = np.linspace(0.0, 1.0, self.shape[1])
        return self.lo[..., None] + (self.hi - self.lo)[..., None] * t

    @property
    def box(self) -> tuple[np.ndarray, np.ndarray]:
        """The prior box in physical units, ``(low (2,), high (2,))``."""
        b = self.bijection
        if b.box is None:
            return np.full(2, 0.0), np.full(2, np.inf)
        return b.forward(b.box[0]), b.forward(b.box[1])

    def weights(self) -> tuple[np.ndarray, np.ndarray]:
        """Simpson weights: along ``x`` ``(N, Gx)`` and within each column ``(N, Gx, Gy)``."""
        gx, gy = self.shape
        return self.dx[:, None] * simpson_weights(gx), self.dy[..., None] * simpson_weights(gy)

    def node_mass(self) -> np.ndarray:
        """Probability of each node (density times both weights), ``(N, Gx, Gy)``; sums to 1 per item."""
        wx, wy = self.weights()
        m = np.exp(self.log_q) * wx[..., None] * wy
        return m / m.sum(axis=(1, 2), keepdims=True)

    def column_log_mass(self) -> np.ndarray:
        """Log of the marginal density of ``ln theta_0`` at the columns (within-column Simpson), ``(N, Gx)``."""
        _, wy = self.weights()
        with np.errstate(divide="ignore"):
            return logsumexp(self.log_q + np.log(wy), axis=-1)

    def _view(self, sl: slice) -> "GridPredictive":
        return replace(self, x=self.x[sl], lo=self.lo[sl], hi=self.hi[sl], log_q=self.log_q[sl],
                       log_norm=self.log_norm[sl], items=self.items[sl])

    def subset(self, idx) -> "GridPredictive":
        """The predictive of items ``idx`` (index or boolean array over N)."""
        idx = np.asarray(idx)
        return replace(self, x=self.x[idx], lo=self.lo[idx], hi=self.hi[idx], log_q=self.log_q[idx],
                       log_norm=self.log_norm[idx], items=self.items[idx])

    # ------------------------------------------------------------------ moments
    @blockwise()
    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Physical mean ``(N, 2)`` and covariance ``(N, 2, 2)`` (Simpson over the grid)."""
        m = self.node_mass()
        t0 = np.exp(self.x)[..., None]
        t1 = np.exp(self.y)
        mean = np.stack([np.sum(m * t0, axis=(1, 2)), np.sum(m * t1, axis=(1, 2))], axis=1)
        d0 = t0 - mean[:, 0, None, None]
        d1 = t1 - mean[:, 1, None, None]
        c00, c01, c11 = (np.sum(m * a * b, axis=(1, 2)) for a, b in ((d0, d0), (d0, d1), (d1, d1)))
        cov = np.stack([np.stack([c00, c01], -1), np.stack([c01, c11], -1)], -2)
        return mean, cov

    @property
    def mean(self) -> np.ndarray:
        return self.moments()[0]

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(np.diagonal(self.moments()[1], axis1=-2, axis2=-1))

    @blockwise()
    def moments_unit(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-parameter mean and standard deviation in the priors' unit coordinates, ``(N, 2)`` each."""
        m = self.node_mass()
        th = np.stack(np.broadcast_arrays(np.exp(self.x)[..., None], np.exp(self.y)), axis=-1)
        u = self.bijection.inverse(th)
        mean = np.einsum("nij,nijp->np", m, u)
        var = np.einsum("nij,nijp->np", m, (u - mean[:, None, None]) ** 2)
        return mean, np.sqrt(var)

    # ------------------------------------------------------------------ densities
    def log_prob(self, theta: np.ndarray) -> np.ndarray:
        """Joint log-density in physical units at ``theta (..., N, 2)`` -> ``(..., N)``; ``-inf`` outside the box.

        With ``density``: its analytic value minus ``log_norm``. Otherwise ``log_q`` interpolated in
        ``(x, t)``: cubic along the two neighbouring columns, linear between them (``-inf`` outside
        the grid; errors of a few 0.01 nats where the box clips the windows).
        """
        theta = np.asarray(theta, dtype=np.float64)
        if self.density is not None:
            return self.density(theta, self.items) - self.log_norm
        return self._interp_log_prob(theta)

    def _interp_log_prob(self, theta: np.ndarray) -> np.ndarray:
        gx, gy = self.shape
        with np.errstate(divide="ignore", invalid="ignore"):
            x0, y0 = np.log(theta[..., 0]), np.log(theta[..., 1])
        pos = (x0 - self.x[:, 0]) / self.dx
        i = np.clip(np.floor(np.nan_to_num(pos)), 0, gx - 2).astype(np.int64)
        s = pos - i
        n = np.broadcast_to(np.arange(self.n), i.shape)
        lo = (1 - s) * self.lo[n, i] + s * self.lo[n, i + 1]
        hi = (1 - s) * self.hi[n, i] + s * self.hi[n, i + 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            tp = np.where(hi > lo, (y0 - lo) / np.where(hi > lo, hi - lo, 1.0), np.nan) * (gy - 1)
            ok = (pos >= 0) & (pos <= gx - 1) & (tp >= 0) & (tp <= gy - 1)
        tp = np.where(ok, tp, 0.0)
        j = np.clip(np.floor(tp), 0, gy - 2).astype(np.int64)
        u = tp - j
        lq = floor_log(self.log_q)
        m = self._cached("slopes", lambda: np.gradient(lq, axis=-1, edge_order=2))
        col = [cubic_value(hermite_cubic(lq[n, c, j], lq[n, c, j + 1], m[n, c, j], m[n, c, j + 1]), u) for c in (i, i + 1)]
        return np.where(ok, (1 - s) * col[0] + s * col[1] - x0 - y0, -np.inf)

    @blockwise()
    def marginal_log_prob(self, theta: np.ndarray) -> np.ndarray:
        """Per-parameter marginal log-densities in physical units at ``theta (N, 2)`` -> ``(N, 2)``.

        ``theta_0``: the joint density integrated (Simpson) over a column at ``ln theta_0`` (its
        window interpolated between the neighbouring columns); ``theta_1``: over the columns.
        """
        theta = np.asarray(theta, dtype=np.float64)
        gx, gy = self.shape
        wx, _ = self.weights()
        out = np.full((self.n, 2), -np.inf)
        with np.errstate(divide="ignore", invalid="ignore"):
            x0 = np.log(theta[:, 0])
        pos = np.clip(np.nan_to_num((x0 - self.x[:, 0]) / self.dx), 0, gx - 1)
        i = np.clip(np.floor(pos), 0, gx - 2).astype(np.int64)
        s = pos - i
        r = np.arange(self.n)
        lo = (1 - s) * self.lo[r, i] + s * self.lo[r, i + 1]
        hi = (1 - s) * self.hi[r, i] + s * self.hi[r, i + 1]
        yc = lo[None] + (hi - lo)[None] * np.linspace(0.0, 1.0, gy)[:, None]  # (Gy, N)
        pts = np.stack(np.broadcast_arrays(theta[None, :, 0], np.exp(yc)), axis=-1)
        with np.errstate(divide="ignore"):
            lw = np.log((hi - lo) / (gy - 1))[None] + np.log(simpson_weights(gy))[:, None]
            out[:, 0] = logsumexp(self.log_prob(pts) + yc + lw, axis=0)
        pts = np.stack(np.broadcast_arrays(np.exp(self.x).T, theta[None, :, 1]), axis=-1)  # (Gx, N, 2)
        with np.errstate(divide="ignore"):
            out[:, 1] = logsumexp(self.log_prob(pts) + self.x.T + np.log(wx).T, axis=0)
        lo_b, hi_b = self.box
        return np.where((theta >= lo_b) & (theta <= hi_b), out, -np.inf)

    # ------------------------------------------------------------------ CDFs
    def _cached(self, key: str, make):
        cache = self.__dict__.setdefault("_cache", {})  # not a field: views and subsets start afresh
        if key not in cache:
            cache[key] = make()
        return cache[key]

    def _column_masses(self) -> np.ndarray:
        """Relative weight of each column in the ``x`` integral, ``(N, Gx)``, summing to 1.

        Trapezoid weights: what they combine (conditional CDFs at a point, fractions of a column
        above a level) can change within a few columns, where Simpson's alternating weights alias.
        """
        def make():
            wx = np.ones(self.shape[0])
            wx[0] = wx[-1] = 0.5
            with np.errstate(divide="ignore"):
                lw = self.column_log_mass() + np.log(wx)
            w = np.exp(lw - np.max(lw, axis=1, keepdims=True))
            return w / w.sum(axis=1, keepdims=True)

        return self._cached("column_masses", make)

    def _cdf_x(self, x0: np.ndarray) -> np.ndarray:
        """Marginal CDF of ``ln theta_0`` at ``x0 (N,)`` -> ``(N,)``."""
        tab = self._cached("cdf_x", lambda: LogCubic(self.column_log_mass()))
        return tab.cdf(self.x[:, 0], self.dx, x0)

    def _cdf_y(self, y0: np.ndarray) -> np.ndarray:
        """Marginal CDF of ``ln theta_1`` at ``y0 (N,)`` -> ``(N,)``: the columns' conditional CDFs, weighted."""
        tab = self._cached("cdf_y", lambda: LogCubic(self.log_q))  # rows: (N, Gx)
        y0 = np.asarray(y0, dtype=np.float64)[:, None]
        c = tab.cdf(self.lo, self.dy, y0)  # (N, Gx)
        c = np.where(self.hi <= self.lo, (y0 >= self.lo).astype(float), c)  # empty columns hold no mass
        return np.sum(c * self._column_masses(), axis=1)

    @blockwise()
    def marginal_cdf(self, theta: np.ndarray) -> np.ndarray:
        """Per-parameter marginal CDFs at ``theta (N, 2)`` -> ``(N, 2)`` (the PIT at the truth)."""
        theta = np.asarray(theta, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            lt = np.where(theta > 0, np.log(np.where(theta > 0, theta, 1.0)), -1e300)
        return np.stack([self._cdf_x(lt[:, 0]), self._cdf_y(lt[:, 1])], axis=1)

    @blockwise()
    def marginal_ppf(self, q, n_iter: int = 50) -> np.ndarray:
        """Per-parameter marginal quantiles at levels ``q`` (scalar or ``(N, 2)``) -> ``(N, 2)`` (bisection)."""
        q = np.broadcast_to(np.asarray(q, dtype=np.float64), (self.n, 2))
        if np.any((q <= 0) | (q >= 1)):
            raise ValueError("quantile levels must lie strictly inside (0, 1)")
        out = np.empty((self.n, 2))
        bounds = ((self.x[:, 0], self.x[:, -1], self._cdf_x), (self.lo.min(axis=1), self.hi.max(axis=1), self._cdf_y))
        for j, (a, b, cdf) in enumerate(bounds):
            a, b = a.copy(), b.copy()
            for _ in range(n_iter):
                mid = 0.5 * (a + b)
                below = cdf(mid) < q[:, j]
                a, b = np.where(below, mid, a), np.where(below, b, mid)
            out[:, j] = np.exp(0.5 * (a + b))
        return out

    def central_interval(self, level: float) -> tuple[np.ndarray, np.ndarray]:
        """Equal-tailed marginal credible interval at ``level``: ``(lo, hi)``, each ``(N, 2)``."""
        return self.marginal_ppf(0.5 - level / 2), self.marginal_ppf(0.5 + level / 2)

    # ------------------------------------------------------------------ regions
    @blockwise()
    def hpd_credibility(self, theta: np.ndarray, rng: np.random.Generator | None = None,
                        n_samples: int | None = None) -> np.ndarray:
        """Mass of ``{theta' : p(theta') > p(theta)}`` (physical density), ``(N,)``; no sampling.

        Within each column the log-density is a cubic between nodes (:class:`LogCubic`), the
        level is crossed at the cubic's roots (also between two nodes below the level around a
        column's maximum, as at the tips of the region), and columns are combined with trapezoid
        weights. ``rng`` and ``n_samples`` are accepted for the common interface and unused.
        """
        level = self.log_prob(np.asarray(theta, dtype=np.float64))  # (N,)
        dq = LogCubic(self.log_q)
        # the physical log-density minus the level, and its slope per node (y_j = lo + dy j)
        lp = dq.f + (np.max(floor_log(self.log_q), axis=-1, keepdims=True) - self.x[..., None] - self.y
                     - level[:, None, None])
        mp = dq.m - self.dy[..., None]
        ea, eb = lp[..., :-1], lp[..., 1:]
        frac = np.sum(np.where((ea >= 0) & (eb >= 0), dq.seg, 0.0), axis=-1)  # (N, Gx)
        n, i, k = np.nonzero((ea >= 0) != (eb >= 0))  # the segments that cross the level
        u = cubic_root(hermite_cubic(lp[n, i, k], lp[n, i, k + 1], mp[n, i, k], mp[n, i, k + 1]))
        part = cubic_exp_integral(hermite_cubic(dq.f[n, i, k], dq.f[n, i, k + 1], dq.m[n, i, k], dq.m[n, i, k + 1]), u)
        np.add.at(frac, (n, i), np.where(ea[n, i, k] >= 0, part, dq.seg[n, i, k] - part))
        # a column with no node above the level may still rise above it between the two nodes around
        # its maximum (the tips of the region along the ridge; a region smaller than a cell)
        top = np.argmax(lp, axis=-1)
        for off in (-1, 0):
            k = np.clip(top + off, 0, self.shape[1] - 2)
            n, i = np.nonzero((lp.max(axis=-1) < 0) & (top + off >= 0) & (top + off <= self.shape[1] - 2))
            k = k[n, i]
            cp = hermite_cubic(lp[n, i, k], lp[n, i, k + 1], mp[n, i, k], mp[n, i, k + 1])
            um, vm = cubic_peak(cp)
            up = vm > 0
            n, i, k, cp, um = n[up], i[up], k[up], cp[up], um[up]
            u1, u2 = cubic_root(cp, 0.0, um), cubic_root(cp, um, 1.0)
            cq = hermite_cubic(dq.f[n, i, k], dq.f[n, i, k + 1], dq.m[n, i, k], dq.m[n, i, k + 1])
            np.add.at(frac, (n, i), cubic_exp_integral(cq, u2) - cubic_exp_integral(cq, u1))
        with np.errstate(divide="ignore", invalid="ignore"):
            frac = np.where(dq.total > 0, frac / dq.total, 0.0)
        return np.clip(np.sum(self._column_masses() * frac, axis=1), 0.0, 1.0)

    # ------------------------------------------------------------------ draws
    @blockwise(axis=1)
    def sample(self, n_samples: int, rng: np.random.Generator, truncate: bool = False) -> np.ndarray:
        """``n_samples`` physical draws per item, ``(S, N, 2)``, always inside the grid (hence the prior box).

        A cell of the ``(x, t)`` tensor grid is drawn with probability proportional to its mass
        (mean of its corners), then a point in it from the bilinear interpolant of the density
        (rejection). ``truncate`` is accepted for the common interface (draws never leave the box).
        """
        gx, gy = self.shape
        lq = self.log_q - np.max(self.log_q, axis=(1, 2), keepdims=True)
        v = np.exp(lq) * (self.hi - self.lo)[..., None]  # density in (x, t)
        c = 0.25 * (v[:, :-1, :-1] + v[:, 1:, :-1] + v[:, :-1, 1:] + v[:, 1:, 1:])  # (N, Gx-1, Gy-1)
        flat = c.reshape(self.n, -1)
        cum = np.cumsum(flat, axis=1)
        cum /= cum[:, -1:]
        s_ = int(n_samples)
        cell = np.empty((s_, self.n), dtype=np.int64)
        for k in range(self.n):
            cell[:, k] = np.minimum(np.searchsorted(cum[k], rng.uniform(size=s_), side="right"), flat.shape[1] - 1)
        i, j = np.divmod(cell, gy - 1)
        r = np.broadcast_to(np.arange(self.n), cell.shape)
        corners = np.stack([v[r, i, j], v[r, i + 1, j], v[r, i, j + 1], v[r, i + 1, j + 1]], axis=-1)
        top = corners.max(axis=-1)
        sx = np.empty(cell.shape)
        ty = np.empty(cell.shape)
        todo = np.ones(cell.shape, dtype=bool)
        while todo.any():
            m = int(todo.sum())
            a, b = rng.uniform(size=m), rng.uniform(size=m)
            cc = corners[todo]
            dens = (1 - a) * (1 - b) * cc[:, 0] + a * (1 - b) * cc[:, 1] + (1 - a) * b * cc[:, 2] + a * b * cc[:, 3]
            ok = rng.uniform(size=m) * top[todo] <= dens
            idx = np.flatnonzero(todo)[ok]
            sx.flat[idx], ty.flat[idx] = a[ok], b[ok]
            todo.flat[idx] = False
        x = self.x[r, i] + sx * self.dx[r]
        lo = (1 - sx) * self.lo[r, i] + sx * self.lo[r, i + 1]
        hi = (1 - sx) * self.hi[r, i] + sx * self.hi[r, i + 1]
        y = lo + (hi - lo) * (j + ty) / (gy - 1)
        return np.exp(np.stack([x, y], axis=-1))

    # ------------------------------------------------------------------ pictures
    @blockwise()
    def axis_grid(self, n_grid: int = 128, drop: float = 25.0, pad: float = 0.1):
        """The density on an axis-aligned grid in physical units around its mass, for corner plots.

        Returns ``(theta_0 (N, G), theta_1 (N, G), log_density (N, G, G))``: equally spaced axes
        spanning the nodes within ``drop`` nats of the maximum (widened by ``pad`` of the span each
        side, clipped to the box) and the normalised physical log-density there
        (``log_density[n, i, j]`` at ``(theta_0[n, i], theta_1[n, j])``).
        """
        keep = self.log_q >= np.max(self.log_q, axis=(1, 2), keepdims=True) - drop
        x = np.broadcast_to(self.x[..., None], self.log_q.shape)
        y = self.y
        big = np.inf
        lo_b, hi_b = self.box
        axes = []
        for a, low, high in ((x, lo_b[0], hi_b[0]), (y, lo_b[1], hi_b[1])):
            amin = np.exp(np.where(keep, a, big).min(axis=(1, 2)))
            amax = np.exp(np.where(keep, a, -big).max(axis=(1, 2)))
            span = amax - amin
            a0, a1 = np.maximum(amin - pad * span, low), np.minimum(amax + pad * span, high)
            axes.append(a0[:, None] + (a1 - a0)[:, None] * np.linspace(0, 1, n_grid))
        t0, t1 = axes
        pts = np.stack(np.broadcast_arrays(t0.T[:, None, :], t1.T[None, :, :]), axis=-1)  # (G, G, N, 2)
        lp = self.log_prob(pts)  # (G, G, N)
        return t0, t1, np.moveaxis(lp, -1, 0)
