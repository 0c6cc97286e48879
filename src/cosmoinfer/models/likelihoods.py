"""Likelihood heads: how raw network outputs become a predictive distribution and a loss.

A :class:`Likelihood` holds no trainable parameters. The network emits ``raw`` of shape
``(B, n_outputs)``; the likelihood turns it into a distribution over the ``P`` parameters and
scores targets ``y`` of shape ``(B, P)``.

Units: everything here is in *normalised* parameter units, i.e. parameters scaled to ``[0, 1]``
by their prior (in log space for log-uniform priors). The data layer maps them back to
physical units. Widths (``std``, ``var``, ``cov``) are in the same normalised units.

Conventions shared by every head:

* ``nll(raw, y)`` is the per-sample negative log-likelihood in nats, shape ``(B,)``, summed over
  the ``P`` parameters and including all normalising constants (``½ ln 2π`` per dimension), so
  it can be compared across heads and against closed forms.
* ``loss(raw, y)`` is the training objective, a scalar. For the likelihood-based heads it is
  ``nll(raw, y).mean()`` (mean over the batch of the joint NLL; ``mse`` drops the constant, see
  :class:`MSE`; ``gaussian_nll`` with ``beta > 0`` reweights it, see :class:`GaussianNLL`). The
  moment network's loss is a batch statistic, not a per-sample NLL.
* ``predict(raw)`` returns a dict with ``mean (B,P)``, ``var (B,P)`` and ``std (B,P)``; heads with
  ``has_cov`` add ``cov (B,P,P)``; mixtures add ``weights (B,K)``, ``means (B,K,P)`` and
  ``covs (B,K,P,P)``; ``gaussian_fullcov`` adds ``scale_tril (B,P,P)``, ``bernoulli`` ``logit (B,1)``.
* ``sample(raw, n, generator)`` draws ``(n, B, P)`` samples from the predictive distribution; the
  generator may live on another device than ``raw`` (draws are moved over).
* Half-precision ``raw`` (AMP) is upcast to float32 and autocast is switched off inside these
  methods, so results are float32 (float64 in, float64 out).

Heads (``build_likelihood(name, n_params, **kwargs)``), each in the module named for its family
(:mod:`~cosmoinfer.models.gaussian_heads`, :mod:`~cosmoinfer.models.mixture_heads`; the base class
and shared helpers in :mod:`~cosmoinfer.models.likelihood_base`):

================  ======================================================  =========================
name              distribution                                            n_outputs
================  ======================================================  =========================
gaussian_nll      diagonal Gaussian, sigma = softplus(s) + min_std         2P
                  (or ``parameterisation: log_var`` with a clamp)
mse               Gaussian with sigma = 1 (point estimate)                 P
moment            CMD moment network (mean and std, moment loss)           2P
gaussian_fullcov  full-covariance Gaussian via a Cholesky factor           P + P(P+1)/2
mdn               mixture of K Gaussians (full or diagonal covariances)    K + K P + K T (T below)
bernoulli         binary classifier (P = 1), one logit                      1
flow              conditional normalizing flow on the prior box            see ``models/flow.py``
                  (:class:`~cosmoinfer.models.flow.ConditionalFlow`)
================  ======================================================  =========================

Cholesky factors are packed row by row over the lower triangle (``torch.tril_indices`` order,
``T = P(P+1)/2`` entries): diagonal entries pass through ``softplus(.) + min_std`` (positive),
off-diagonal entries are free.
"""

from __future__ import annotations

from typing import Any

from cosmoinfer.errors import InputError
from cosmoinfer.models.gaussian_heads import MSE, GaussianFullCov, GaussianNLL, MomentNetwork
from cosmoinfer.models.likelihood_base import LOG_2PI, Likelihood, cholesky_from_flat, n_tril
from cosmoinfer.models.mixture_heads import Bernoulli, MixtureDensity

__all__ = [
    "LOG_2PI",
    "Likelihood",
    "GaussianNLL",
    "MSE",
    "MomentNetwork",
    "GaussianFullCov",
    "MixtureDensity",
    "Bernoulli",
    "LIKELIHOODS",
    "build_likelihood",
    "register_likelihood",
    "cholesky_from_flat",
    "n_tril",
]


LIKELIHOODS: dict[str, type[Likelihood]] = {
    "gaussian_nll": GaussianNLL,
    "mse": MSE,
    "moment": MomentNetwork,
    "gaussian_fullcov": GaussianFullCov,
    "mdn": MixtureDensity,
    "bernoulli": Bernoulli,
}

_KWARGS: dict[str, tuple[str, ...]] = {
    "gaussian_nll": ("parameterisation", "min_std", "log_var_max", "beta"),
    "mse": (),
    "moment": ("sigma_transform", "min_std", "eps"),
    "gaussian_fullcov": ("min_std", "beta"),
    "mdn": ("n_components", "covariance", "min_std"),
    "bernoulli": (),
}


def register_likelihood(cls: type[Likelihood], options: tuple[str, ...]) -> None:
    """Add a head defined in its own module (``flow``: :mod:`cosmoinfer.models.flow`, imported by
    ``cosmoinfer.models``, so it is registered before any ``cosmoinfer.models.*`` import returns)."""
    LIKELIHOODS[cls.name] = cls
    _KWARGS[cls.name] = tuple(options)


def build_likelihood(name: str, n_params: int, **kwargs: Any) -> Likelihood:
    """Build the likelihood head ``name`` for ``n_params`` parameters (config group ``conf/loss``).

    ``kwargs`` are the head's options (see each class); an unknown name or option raises
    :class:`~cosmoinfer.errors.InputError` naming the valid ones.
    """
    if name not in LIKELIHOODS:
        raise InputError(None, f"loss.name: unknown likelihood {name!r}; choose one of {', '.join(LIKELIHOODS)}")
    unknown = sorted(set(kwargs) - set(_KWARGS[name]))
    if unknown:
        valid = ", ".join(_KWARGS[name]) or "none"
        raise InputError(None, f"loss: unknown option(s) {', '.join(unknown)} for {name}; valid options: {valid}")
    return LIKELIHOODS[name](int(n_params), **kwargs)
