"""The predictive of a method that gives only draws and a density (flows, Bayesian networks).

For each of ``N`` maps: ``S`` physical draws ``samples (N, S, P)``, their log-densities
``sample_log_prob (N, S)`` and the log-density at the true parameters ``truth_log_prob (N,)``
(physical units, Jacobian included). Marginal CDFs are the draws' empirical CDFs, marginal
densities a Gaussian kernel estimate in unit coordinates (Scott's bandwidth), the joint density is
known only where it was stored.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from cosmoinfer.posterior.bijection import Bijection

_LOG_2PI = np.log(2 * np.pi)


@dataclass
class SamplePredictive:
    """Draws ``samples (N, S, P)`` with ``sample_log_prob (N, S)`` and ``truth_log_prob (N,)``."""

    samples: np.ndarray
    sample_log_prob: np.ndarray
    truth_log_prob: np.ndarray
    bijection: Bijection
    param_names: list[str]

    kind = "samples"

    def __post_init__(self):
        self.samples = np.asarray(self.samples, dtype=np.float64)
        n, s, p = self.samples.shape
        self.sample_log_prob = np.asarray(self.sample_log_prob, dtype=np.float64)
        self.truth_log_prob = np.asarray(self.truth_log_prob, dtype=np.float64)
        if self.sample_log_prob.shape != (n, s):
            raise ValueError(f"sample_log_prob: shape {self.sample_log_prob.shape}, expected {(n, s)}")
        if self.truth_log_prob.shape != (n,):
            raise ValueError(f"truth_log_prob: shape {self.truth_log_prob.shape}, expected {(n,)}")
        if self.bijection.p != p or len(self.param_names) != p:
            raise ValueError(f"bijection / param_names do not have P={p} parameters")

    @property
    def n(self) -> int:
        return int(self.samples.shape[0])

    @property
    def n_draws(self) -> int:
        return int(self.samples.shape[1])

    @property
    def p(self) -> int:
        return int(self.samples.shape[2])

    def subset(self, idx) -> "SamplePredictive":
        idx = np.asarray(idx)
        return replace(self, samples=self.samples[idx], sample_log_prob=self.sample_log_prob[idx],
                       truth_log_prob=self.truth_log_prob[idx])

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Sample mean ``(N, P)`` and covariance ``(N, P, P)`` in physical units."""
        mean = self.samples.mean(axis=1)
        d = self.samples - mean[:, None]
        return mean, np.einsum("nsi,nsj->nij", d, d) / max(self.n_draws - 1, 1)

    @property
    def mean(self) -> np.ndarray:
        return self.samples.mean(axis=1)

    @property
    def std(self) -> np.ndarray:
        return self.samples.std(axis=1, ddof=1)

    def moments_unit(self) -> tuple[np.ndarray, np.ndarray]:
        u = self.bijection.inverse(self.samples)
        return u.mean(axis=1), u.std(axis=1, ddof=1)

    def log_prob(self, theta: np.ndarray) -> np.ndarray:
        raise NotImplementedError("a sample predictive knows its joint density only at the stored truth "
                                  "(truth_log_prob) and at its draws (sample_log_prob)")

    def marginal_cdf(self, theta: np.ndarray) -> np.ndarray:
        """Empirical marginal CDFs at ``theta (N, P)``: ``(#draws below + 1/2) / (S + 1)``, ``(N, P)``."""
        below = np.sum(self.samples < np.asarray(theta, float)[:, None, :], axis=1)
        return (below + 0.5) / (self.n_draws + 1)

    def marginal_log_prob(self, theta: np.ndarray) -> np.ndarray:
        """Kernel estimate of the marginal log-densities at ``theta (N, P)``, physical units, ``(N, P)``."""
        u_s = self.bijection.inverse(self.samples)  # (N, S, P)
        u = self.bijection.inverse(theta)
        h = u_s.std(axis=1, ddof=1) * self.n_draws ** (-0.2) + 1e-12  # Scott's rule, (N, P)
        z = (u[:, None, :] - u_s) / h[:, None, :]
        from scipy.special import logsumexp

        lp = logsumexp(-0.5 * z**2, axis=1) - np.log(self.n_draws) - np.log(h) - 0.5 * _LOG_2PI
        return lp - self.bijection.log_abs_det_jacobian(u)

    def marginal_ppf(self, q) -> np.ndarray:
        q = np.broadcast_to(np.asarray(q, float), (self.n, self.p))
        srt = np.sort(self.samples, axis=1)
        pos = np.clip(q * (self.n_draws + 1) - 0.5, 0, self.n_draws - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, self.n_draws - 1)
        f = pos - lo
        take = lambda i: np.take_along_axis(srt, i[:, None, :], axis=1)[:, 0]  # noqa: E731
        return (1 - f) * take(lo) + f * take(hi)

    def central_interval(self, level: float):
        return self.marginal_ppf(0.5 - level / 2), self.marginal_ppf(0.5 + level / 2)

    def sample(self, n_samples: int, rng: np.random.Generator, truncate: bool = False) -> np.ndarray:
        """``n_samples`` draws per item, resampled from the stored ones, ``(S', N, P)``.

        ``truncate``: only stored draws inside the prior box are resampled (items with none keep all).
        """
        ok = np.ones(self.samples.shape[:2], dtype=bool)
        if truncate:
            ok = self.bijection.in_box(self.bijection.inverse(self.samples))
            ok[~ok.any(axis=1)] = True
        p = ok / ok.sum(axis=1, keepdims=True)
        cum = np.cumsum(p, axis=1)
        r = rng.uniform(size=(self.n, n_samples))
        idx = np.minimum(np.array([np.searchsorted(c, x) for c, x in zip(cum, r)]), self.n_draws - 1)
        return np.transpose(np.take_along_axis(self.samples, idx[..., None], axis=1), (1, 0, 2))

    def hpd_credibility(self, theta: np.ndarray, rng: np.random.Generator, n_samples: int | None = None) -> np.ndarray:
        """Fraction of the stored draws denser than the truth (ties at random), ``(N,)``.

        ``theta`` must be the truth whose density is stored.
        """
        more = np.sum(self.sample_log_prob > self.truth_log_prob[:, None], axis=1)
        return (more + rng.uniform(size=self.n)) / (self.n_draws + 1)

    def scaled(self, s: np.ndarray) -> "SamplePredictive":
        """Draws stretched by ``s (P,)`` about their mean in unit coordinates (densities adjusted).

        The density at the truth is not known after stretching: ``truth_log_prob`` becomes NaN.
        """
        s = np.asarray(s, float)
        b = self.bijection
        u = b.inverse(self.samples)
        m = u.mean(axis=1, keepdims=True)
        u2 = m + s * (u - m)
        jac = lambda x: np.sum(b.log_abs_det_jacobian(x), axis=-1)  # noqa: E731
        slp = self.sample_log_prob + jac(u) - jac(u2) - np.sum(np.log(s))
        return replace(self, samples=b.forward(u2), sample_log_prob=slp, truth_log_prob=np.full(self.n, np.nan))
