"""The predictive distribution of a Gaussian-head method: a mixture of Gaussians in unit coordinates.

For each of ``N`` maps the predictive over ``P`` parameters is

    q(u) = sum_k w_k N(u; m_k, L_k L_k^T)          (unit coordinates, K components)

pushed to physical units by the prior bijection (:class:`~cosmoinfer.posterior.bijection.Bijection`):
affine for uniform priors, exp for log-uniform ones (so those marginals are lognormal). A single
network is ``K = 1``; a deep ensemble has one component per member, MC dropout one per pass, an
MDN one per mixture component, and combinations multiply.

Shapes: ``weights (N, K)`` (rows sum to 1), ``loc (N, K, P)``, ``scale_tril (N, K, P, P)`` lower
triangular with a positive diagonal. Every method takes and returns physical units unless its
name ends in ``_unit``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
from scipy.special import logsumexp, ndtr, ndtri

from cosmoinfer.posterior.bijection import Bijection

_LOG_2PI = np.log(2 * np.pi)
#: Budget of (draw, item, component) triples per vectorised block.
_BUDGET = 2_000_000


def _block(per_item: int) -> int:
    """Items per block when each item costs ``per_item`` (draw, component) pairs."""
    return max(1, _BUDGET // max(per_item, 1))


def _tri_solve(tril: np.ndarray, d: np.ndarray) -> np.ndarray:
    """``L^-1 d`` by forward substitution; ``tril (..., P, P)`` broadcasting against ``d (..., P)``."""
    p = d.shape[-1]
    z = np.empty(np.broadcast_shapes(d.shape, tril.shape[:-1]))
    for i in range(p):
        acc = d[..., i] - (np.sum(tril[..., i, :i] * z[..., :i], axis=-1) if i else 0.0)
        z[..., i] = acc / tril[..., i, i]
    return z


def _f(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


@dataclass
class MixturePredictive:
    """A weighted Gaussian mixture per item in unit coordinates, pushed through ``bijection``.

    Attributes:
        weights: ``(N, K)`` component weights (normalised on construction).
        loc: ``(N, K, P)`` component means, unit coordinates.
        scale_tril: ``(N, K, P, P)`` Cholesky factors of the component covariances, unit coordinates.
        bijection: unit -> physical map (and the prior box).
        param_names: the ``P`` names.
    """

    weights: np.ndarray
    loc: np.ndarray
    scale_tril: np.ndarray
    bijection: Bijection
    param_names: list[str]

    kind = "gaussian_mixture"

    def __post_init__(self):
        self.weights = _f(self.weights)
        self.loc = _f(self.loc)
        self.scale_tril = np.tril(_f(self.scale_tril))
        n, k, p = self.loc.shape
        if self.weights.shape != (n, k):
            raise ValueError(f"weights: shape {self.weights.shape}, expected {(n, k)}")
        if self.scale_tril.shape != (n, k, p, p):
            raise ValueError(f"scale_tril: shape {self.scale_tril.shape}, expected {(n, k, p, p)}")
        if self.bijection.p != p or len(self.param_names) != p:
            raise ValueError(f"bijection / param_names do not have P={p} parameters")
        self.weights = self.weights / self.weights.sum(axis=1, keepdims=True)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_gaussians(cls, loc, var_or_cov, bijection: Bijection, param_names: Sequence[str],
                       weights=None) -> "MixturePredictive":
        """From component means ``(N, K, P)`` and variances ``(N, K, P)`` or covariances ``(N, K, P, P)``.

        ``weights`` ``(N, K)`` or ``(K,)``; default equal weights.
        """
        loc = _f(loc)
        v = _f(var_or_cov)
        if v.ndim == loc.ndim:
            tril = np.sqrt(v)[..., :, None] * np.eye(loc.shape[-1])
        else:
            v = 0.5 * (v + np.swapaxes(v, -1, -2))
            tril = np.linalg.cholesky(v + 1e-300 * np.eye(loc.shape[-1]))
        n, k = loc.shape[:2]
        w = np.full((n, k), 1.0 / k) if weights is None else np.broadcast_to(_f(weights), (n, k)).copy()
        return cls(w, loc, tril, bijection, list(param_names))

    @property
    def n(self) -> int:
        return int(self.loc.shape[0])

    @property
    def k(self) -> int:
        return int(self.loc.shape[1])

    @property
    def p(self) -> int:
        return int(self.loc.shape[2])

    def subset(self, idx) -> "MixturePredictive":
        """The predictive of items ``idx`` (index or boolean array over N)."""
        idx = np.asarray(idx)
        return replace(self, weights=self.weights[idx], loc=self.loc[idx], scale_tril=self.scale_tril[idx])

    def marginal(self, j: int) -> "MixturePredictive":
        """The one-parameter predictive of parameter ``j``."""
        b = self.bijection
        box = None if b.box is None else (b.box[0][j:j + 1], b.box[1][j:j + 1])
        cov_jj = np.einsum("nki,nki->nk", self.scale_tril[:, :, j, :], self.scale_tril[:, :, j, :])
        return MixturePredictive(self.weights, self.loc[:, :, j:j + 1], np.sqrt(cov_jj)[..., None, None],
                                 Bijection(b.shift[j:j + 1], b.scale[j:j + 1], b.log[j:j + 1], box),
                                 [self.param_names[j]])

    @property
    def cov_unit(self) -> np.ndarray:
        """Component covariances in unit coordinates, ``(N, K, P, P)``."""
        return self.scale_tril @ np.swapaxes(self.scale_tril, -1, -2)

    @property
    def std_unit(self) -> np.ndarray:
        """Component marginal standard deviations in unit coordinates, ``(N, K, P)``."""
        return np.sqrt(np.einsum("nkij,nkij->nki", self.scale_tril, self.scale_tril))

    # ------------------------------------------------------------------ moments
    def component_moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Exact physical mean ``(N, K, P)`` and covariance ``(N, K, P, P)`` of every component.

        With ``y = a + b u ~ N(mu, C)``: affine coordinates keep ``mu``, ``C``; an exp coordinate has
        mean ``m_j = exp(mu_j + C_jj / 2)``; covariances are ``C_ij`` (affine, affine),
        ``C_ij m_j`` (affine i, exp j) and ``m_i m_j (exp(C_ij) - 1)`` (exp, exp).
        """
        b = self.bijection
        mu = b.shift + b.scale * self.loc
        c = self.cov_unit * b.scale[:, None] * b.scale[None, :]
        diag = np.diagonal(c, axis1=-2, axis2=-1)
        lg = b.log
        m1 = np.where(lg, np.exp(np.where(lg, mu + diag / 2, 0.0)), mu)
        li, lj = lg[:, None], lg[None, :]
        cov = np.where(li & lj, m1[..., :, None] * m1[..., None, :] * np.expm1(np.where(li & lj, c, 0.0)),
                       np.where(~li & lj, c * m1[..., None, :],
                                np.where(li & ~lj, c * m1[..., :, None], c)))
        return m1, cov

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Physical mean ``(N, P)`` and covariance ``(N, P, P)`` of the whole mixture (exact)."""
        m, c = self.component_moments()
        w = self.weights[..., None]
        mean = np.sum(w * m, axis=1)
        d = m - mean[:, None]
        cov = np.sum(w[..., None] * (c + d[..., :, None] * d[..., None, :]), axis=1)
        return mean, 0.5 * (cov + np.swapaxes(cov, -1, -2))

    @property
    def mean(self) -> np.ndarray:
        return self.moments()[0]

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(np.diagonal(self.moments()[1], axis1=-2, axis2=-1))

    def moments_unit(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-parameter mean and standard deviation of the mixture in unit coordinates, ``(N, P)`` each."""
        w = self.weights[..., None]
        mean = np.sum(w * self.loc, axis=1)
        var = np.sum(w * (self.std_unit**2 + (self.loc - mean[:, None]) ** 2), axis=1)
        return mean, np.sqrt(var)

    # ------------------------------------------------------------------ densities
    def log_prob_unit(self, u: np.ndarray) -> np.ndarray:
        """Joint log-density in unit coordinates at ``u`` ``(..., N, P)`` -> ``(..., N)``."""
        u = _f(u)
        diff = u[..., :, None, :] - self.loc  # (..., N, K, P)
        z = _tri_solve(self.scale_tril, diff)
        logdet = np.sum(np.log(np.diagonal(self.scale_tril, axis1=-2, axis2=-1)), axis=-1)
        comp = -0.5 * np.sum(z * z, axis=-1) - logdet - 0.5 * self.p * _LOG_2PI
        with np.errstate(divide="ignore"):
            return logsumexp(comp + np.log(self.weights), axis=-1)

    def log_prob(self, theta: np.ndarray) -> np.ndarray:
        """Joint log-density in physical units (Jacobian included) at ``theta (..., N, P)`` -> ``(..., N)``.

        ``-inf`` where an exp parameter is <= 0.
        """
        u = self.bijection.inverse(theta)
        ok = np.all(np.isfinite(u), axis=-1)
        u_safe = np.where(np.isfinite(u), u, 0.0)
        lp = self.log_prob_unit(u_safe) - np.sum(self.bijection.log_abs_det_jacobian(u_safe), axis=-1)
        return np.where(ok, lp, -np.inf)

    def marginal_log_prob(self, theta: np.ndarray) -> np.ndarray:
        """Per-parameter marginal log-densities in physical units at ``theta (N, P)`` -> ``(N, P)``."""
        u = self.bijection.inverse(theta)
        ok = np.isfinite(u)
        u = np.where(ok, u, 0.0)
        s = self.std_unit
        z = (u[:, None, :] - self.loc) / s
        comp = -0.5 * z**2 - np.log(s) - 0.5 * _LOG_2PI + np.log(self.weights)[..., None]
        lp = logsumexp(comp, axis=1) - self.bijection.log_abs_det_jacobian(u)
        return np.where(ok, lp, -np.inf)

    def marginal_cdf(self, theta: np.ndarray) -> np.ndarray:
        """Per-parameter marginal CDFs at ``theta (N, P)`` -> ``(N, P)`` (the PIT at the truth)."""
        u = self.bijection.inverse(theta)  # -inf for a non-positive exp parameter: CDF 0
        return np.sum(self.weights[..., None] * ndtr((u[:, None, :] - self.loc) / self.std_unit), axis=1)

    def marginal_ppf(self, q, tol: float = 1e-10, max_iter: int = 200) -> np.ndarray:
        """Per-parameter marginal quantiles at levels ``q`` (scalar or ``(N, P)``) -> ``(N, P)``.

        Vectorised bisection in unit coordinates between the smallest and largest component
        quantile (every component CDF is <= q at the first and >= q at the second).
        """
        q = np.broadcast_to(_f(q), (self.n, self.p))
        if np.any((q <= 0) | (q >= 1)):
            raise ValueError("quantile levels must lie strictly inside (0, 1)")
        s = self.std_unit
        comp = self.loc + s * ndtri(q)[:, None, :]
        lo, hi = comp.min(axis=1), comp.max(axis=1)
        if self.k == 1:
            return self.bijection.forward(lo)
        w = self.weights[..., None]
        scale = np.maximum(hi - lo, 1e-300)
        for _ in range(max_iter):
            mid = 0.5 * (lo + hi)
            below = np.sum(w * ndtr((mid[:, None, :] - self.loc) / s), axis=1) < q
            lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
            if np.all(hi - lo <= tol * scale):
                break
        return self.bijection.forward(0.5 * (lo + hi))

    def central_interval(self, level: float) -> tuple[np.ndarray, np.ndarray]:
        """Equal-tailed marginal credible interval at ``level``: ``(lo, hi)``, each ``(N, P)``."""
        return self.marginal_ppf(0.5 - level / 2), self.marginal_ppf(0.5 + level / 2)

    # ------------------------------------------------------------------ draws
    def sample_unit(self, n_samples: int, rng: np.random.Generator) -> np.ndarray:
        """``n_samples`` draws per item in unit coordinates, ``(S, N, P)``."""
        cum = np.cumsum(self.weights, axis=1)  # (N, K)
        r = rng.uniform(size=(n_samples, self.n, 1))
        comp = np.minimum(np.sum(r > cum[None], axis=-1), self.k - 1)  # (S, N)
        idx = np.arange(self.n)[None, :]
        eps = rng.standard_normal((n_samples, self.n, self.p))
        lt = self.scale_tril[idx, comp]  # (S, N, P, P)
        return self.loc[idx, comp] + np.einsum("snij,snj->sni", lt, eps)

    def sample(self, n_samples: int, rng: np.random.Generator, truncate: bool = False,
               max_rounds: int = 50) -> np.ndarray:
        """``n_samples`` physical draws per item, ``(S, N, P)``.

        ``truncate``: draws of the predictive restricted to the prior box (rejection sampling, up
        to ``max_rounds`` rounds; draws still missing after that, for items with almost no mass
        in the box, are clipped onto the box).
        """
        u = self.sample_unit(n_samples, rng)
        if truncate and self.bijection.box is not None:
            u = _truncate(u, self, n_samples, rng, max_rounds)
        return self.bijection.forward(u)

    # ------------------------------------------------------------------ regions
    def hpd_credibility(self, theta: np.ndarray, rng: np.random.Generator, n_samples: int = 1000) -> np.ndarray:
        """Credibility of the smallest highest-density region that contains ``theta (N, P)``, ``(N,)``.

        The mass of ``{x : q(x) > q(theta)}``: exactly ``chi2_P`` of the Mahalanobis distance for
        one Gaussian component in affine coordinates, otherwise the fraction of ``n_samples``
        draws denser than ``theta`` (ties split at random). Uniform on (0, 1) for a calibrated
        predictive; the truth lies in the HPD region of level ``alpha`` iff this is <= ``alpha``.
        """
        if self.k == 1 and not np.any(self.bijection.log):
            from scipy.stats import chi2

            u = self.bijection.inverse(theta)
            z = _tri_solve(self.scale_tril[:, 0], u - self.loc[:, 0])
            return chi2.cdf(np.sum(z * z, axis=-1), self.p)
        out = np.empty(self.n)
        lp_t = self.log_prob(theta)
        block = _block(n_samples * self.k)
        for a in range(0, self.n, block):
            sl = slice(a, min(a + block, self.n))
            sub = self.subset(np.arange(sl.start, sl.stop))
            x = sub.sample(n_samples, rng)
            lp_x = sub.log_prob(x)  # (S, n)
            more = np.sum(lp_x > lp_t[sl], axis=0)
            out[sl] = (more + rng.uniform(size=more.shape)) / (n_samples + 1)
        return out

    def scaled(self, s: np.ndarray) -> "MixturePredictive":
        """Spread scaled by ``s (P,)`` about the mixture mean, in unit coordinates.

        Every component mean moves to ``mbar + s (m_k - mbar)`` and every factor becomes
        ``diag(s) L_k``: the whole mixture is stretched by ``s`` along each unit axis (for a single
        Gaussian, variance scaling). Log-density changes by ``-sum ln s``.
        """
        s = _f(s)
        mbar = np.sum(self.weights[..., None] * self.loc, axis=1, keepdims=True)
        return replace(self, loc=mbar + s * (self.loc - mbar), scale_tril=s[:, None] * self.scale_tril)


def _truncate(u: np.ndarray, pred, n_samples: int, rng, max_rounds: int) -> np.ndarray:
    """Replace draws outside the prior box by fresh ones (rejection), per item; ``u (S, N, P)``."""
    lo, hi = pred.bijection.box
    u = u.copy()
    bad = ~pred.bijection.in_box(u)  # (S, N)
    rounds = 0
    while bad.any() and rounds < max_rounds:
        items = np.flatnonzero(bad.any(axis=0))
        fresh = pred.subset(items).sample_unit(n_samples, rng)  # (S, n_bad, P)
        ok = pred.bijection.in_box(fresh)
        for col, i in enumerate(items):
            need = np.flatnonzero(bad[:, i])
            have = fresh[ok[:, col], col]
            take = min(len(need), len(have))
            u[need[:take], i] = have[:take]
            bad[need[:take], i] = False
        rounds += 1
    if bad.any():
        u = np.clip(u, lo, hi)
    return u
