"""The predictive of conditional flows (``loss=flow``): an equal-weight mixture of flows per map.

For each of ``N`` maps the predictive is ``q(u) = (1/C) sum_c q_c(u)`` in unit coordinates, one
component per network draw (ensemble member x MC-dropout pass) and TTA view, each a flow whose
parameters are that draw's raw head outputs ``raw (N, C, n_outputs)``; the prior bijection maps
it to physical units (``ln q(theta) = ln q(u) - sum_j ln |dtheta_j / du_j|``). Its support is the
prior box.

:class:`FlowPredictive` is a :class:`~cosmoinfer.posterior.samples.SamplePredictive` (so
``predictions.h5`` stores it as draws, their log-densities and the log-density at the truth, and
the report reads it back as one) that also keeps the flows, so in Python :meth:`~FlowPredictive.log_prob`
works at any point and :meth:`~FlowPredictive.sample` draws afresh. Its stored draws are
stratified: ``k = max(2, ceil(n_samples / C))`` from each component, component after component, so the
draws ``[c k, (c + 1) k)`` are component ``c``'s (the evaluator's per-member moments use this).

The ``head`` is the parameter-free :class:`~cosmoinfer.models.flow.ConditionalFlow` (any object
with ``log_prob_unit(raw, u)`` and ``sample_unit(raw, n, generator)``); computations run in
float64 on the CPU, ``block`` maps at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np
import torch

from cosmoinfer.posterior.bijection import Bijection
from cosmoinfer.posterior.samples import SamplePredictive

#: Budget of (map, draw, component) evaluations per block.
_BUDGET = 400_000


def _blocks(n: int, per_item: int):
    step = max(1, _BUDGET // max(per_item, 1))
    for a in range(0, n, step):
        yield slice(a, min(a + step, n))


@torch.no_grad()
def mixture_log_prob_unit(head, raw: np.ndarray, u: np.ndarray) -> np.ndarray:
    """``ln (1/C) sum_c q_c(u)`` at ``u (N, S, P)`` (unit coordinates) -> ``(N, S)``; ``raw (N, C, n_out)``."""
    raw_t = torch.as_tensor(np.asarray(raw), dtype=torch.float64)
    u_t = torch.as_tensor(np.asarray(u, dtype=np.float64))
    n, c = raw_t.shape[:2]
    out = np.empty(u_t.shape[:2])
    for sl in _blocks(n, u_t.shape[1] * c):
        lp = torch.stack([head.log_prob_unit(raw_t[sl, k], u_t[sl]) for k in range(c)])  # (C, n, S)
        out[sl] = (torch.logsumexp(lp, dim=0) - math.log(c)).numpy()
    return out


@torch.no_grad()
def sample_components_unit(head, raw: np.ndarray, k: int, generator: torch.Generator) -> np.ndarray:
    """``k`` draws from each component, ``(N, C * k, P)`` unit coordinates, component after component."""
    raw_t = torch.as_tensor(np.asarray(raw), dtype=torch.float64)
    n, c = raw_t.shape[:2]
    parts = []
    for sl in _blocks(n, k * c):
        x = head.sample_unit(raw_t[sl].reshape(-1, raw_t.shape[-1]), k, generator)  # (n*C, k, P)
        parts.append(x.reshape(sl.stop - sl.start, c * k, -1).numpy())
    return np.concatenate(parts, axis=0)


def _generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(int(seed))
    return g


@dataclass
class FlowPredictive(SamplePredictive):
    """Stored draws of a mixture of flows, plus the flows themselves (``raw (N, C, n_out)``, ``head``).

    ``log_prob``/``sample`` use the flows; everything else (moments, CDFs, HPD credibility) the
    stored draws, as for any :class:`SamplePredictive`.
    """

    raw: np.ndarray | None = None
    head: Any = None

    @classmethod
    def from_raw(cls, head, raw: np.ndarray, bijection: Bijection, param_names: Sequence[str],
                 n_samples: int = 1000, truth: np.ndarray | None = None, seed: int = 0) -> "FlowPredictive":
        """Draw ``C * ceil(n_samples / C)`` samples per map and evaluate the mixture's log-density
        at each draw and at ``truth (N, P)`` (physical; NaN where not given)."""
        raw = np.asarray(raw)
        n, c = raw.shape[:2]
        k = max(2, math.ceil(int(n_samples) / c))
        u = sample_components_unit(head, raw, k, _generator(seed))
        jac = bijection.log_abs_det_jacobian(u).sum(-1)
        slp = mixture_log_prob_unit(head, raw, u) - jac
        pred = cls(bijection.forward(u), slp, np.full(n, np.nan), bijection, list(param_names), raw=raw, head=head)
        if truth is not None:
            pred.truth_log_prob = pred.log_prob(np.asarray(truth, dtype=np.float64))
        return pred

    @property
    def n_components(self) -> int:
        return int(self.raw.shape[1])

    def subset(self, idx) -> "FlowPredictive":
        idx = np.asarray(idx)
        return replace(super().subset(idx), raw=self.raw[idx])

    def log_prob(self, theta: np.ndarray) -> np.ndarray:
        """Joint log-density in physical units (Jacobian included) at ``theta (..., N, P)`` -> ``(..., N)``.

        ``-inf`` outside the prior box.
        """
        theta = np.asarray(theta, dtype=np.float64)
        lead = theta.shape[:-2]
        u = self.bijection.inverse(theta).reshape(-1, self.n, self.p)  # (S, N, P)
        ok = np.all(np.isfinite(u), axis=-1)
        u_safe = np.where(ok[..., None], u, -1.0)  # outside the box: -inf from the flow
        lp = mixture_log_prob_unit(self.head, self.raw, np.swapaxes(u_safe, 0, 1)).T  # (S, N)
        lp = lp - self.bijection.log_abs_det_jacobian(u_safe).sum(-1)
        return np.where(ok, lp, -np.inf).reshape(*lead, self.n)

    def hpd_credibility(self, theta: np.ndarray, rng: np.random.Generator, n_samples: int | None = None) -> np.ndarray:
        """Fraction of the stored draws denser than ``theta (N, P)`` (ties at random), ``(N,)``; any ``theta``."""
        level = self.log_prob(np.asarray(theta, dtype=np.float64))
        more = np.sum(self.sample_log_prob > level[:, None], axis=1)
        return (more + rng.uniform(size=self.n)) / (self.n_draws + 1)

    def sample(self, n_samples: int, rng: np.random.Generator, truncate: bool = False) -> np.ndarray:
        """``n_samples`` fresh draws per map from the mixture of flows, ``(S, N, P)`` physical.

        Every draw lies inside the prior box, so ``truncate`` changes nothing. Each component gives
        ``ceil(n_samples / C)`` draws, of which a random ``n_samples`` per map are kept.
        """
        c = self.n_components
        k = max(1, math.ceil(int(n_samples) / c))
        u = sample_components_unit(self.head, self.raw, k, _generator(rng.integers(2**63 - 1)))
        order = np.argsort(rng.uniform(size=u.shape[:2]), axis=1)[:, :int(n_samples)]
        u = np.take_along_axis(u, order[..., None], axis=1)
        return np.swapaxes(self.bijection.forward(u), 0, 1)

    def scaled(self, s: np.ndarray) -> SamplePredictive:
        """A plain :class:`SamplePredictive` of the stretched draws (the flows no longer describe them)."""
        base = SamplePredictive(self.samples, self.sample_log_prob, self.truth_log_prob, self.bijection,
                                list(self.param_names))
        return base.scaled(s)

    def as_samples(self) -> SamplePredictive:
        """The stored draws alone (what ``predictions.h5`` keeps)."""
        return SamplePredictive(self.samples, self.sample_log_prob, self.truth_log_prob, self.bijection,
                                list(self.param_names))


def component_moments(samples: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(G, N, P)`` and covariance ``(G, N, P, P)`` (population, ddof 0) of ``G`` equal,
    consecutive groups of the draws ``samples (N, S, P)`` (``S`` divisible by ``G``)."""
    n, s, p = samples.shape
    x = samples.reshape(n, n_groups, s // n_groups, p)
    mean = x.mean(axis=2)
    d = x - mean[:, :, None]
    cov = np.einsum("ngsi,ngsj->ngij", d, d) / (s // n_groups)
    return np.swapaxes(mean, 0, 1), np.swapaxes(cov, 0, 1)
