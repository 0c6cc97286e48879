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

Heads (``build_likelihood(name, n_params, **kwargs)``):

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

import contextlib
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cosmoinfer.errors import InputError

LOG_2PI = math.log(2.0 * math.pi)

__all__ = [
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


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def n_tril(p: int) -> int:
    """Number of lower-triangular entries (diagonal included) of a ``p x p`` matrix."""
    return p * (p + 1) // 2


def cholesky_from_flat(flat: Tensor, p: int, min_std: float) -> Tensor:
    """Lower-triangular factor ``L (..., p, p)`` from packed raw entries ``flat (..., p(p+1)/2)``.

    Entries fill the lower triangle row by row (``torch.tril_indices(p, p)`` order). Diagonal
    entries become ``softplus(raw) + min_std`` (strictly positive, so ``L L^T`` is positive
    definite); off-diagonal entries are used as they are.
    """
    rows, cols = torch.tril_indices(p, p, device=flat.device)
    is_diag = rows == cols
    vals = torch.where(is_diag, F.softplus(flat) + min_std, flat)
    L = flat.new_zeros(*flat.shape[:-1], p, p)
    L[..., rows, cols] = vals
    return L


def _mvn_logpdf(y: Tensor, mean: Tensor, L: Tensor) -> Tensor:
    """Log-density of ``N(mean, L L^T)`` at ``y``; ``y, mean (..., P)``, ``L (..., P, P)`` -> ``(...)``."""
    diff = (y - mean).unsqueeze(-1)
    z = torch.linalg.solve_triangular(L, diff, upper=False).squeeze(-1)
    log_det = torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
    p = y.shape[-1]
    return -0.5 * (z * z).sum(-1) - log_det - 0.5 * p * LOG_2PI


def _randn(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal draws on ``like``'s device/dtype, using ``generator`` on its own device."""
    device = generator.device if generator is not None else like.device
    z = torch.randn(shape, generator=generator, device=device, dtype=like.dtype)
    return z.to(like.device)


def _prep(raw: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Upcast half-precision raw outputs to float32; give ``y`` the dtype of ``raw``."""
    if raw.dtype in (torch.float16, torch.bfloat16):
        raw = raw.float()
    return raw, (None if y is None else y.to(raw.dtype))


def _full_precision(raw: Tensor):
    """Context that disables autocast on ``raw``'s device (a no-op where autocast does not exist)."""
    try:
        return torch.autocast(device_type=raw.device.type, enabled=False)
    except RuntimeError:
        return contextlib.nullcontext()


def _check_raw(raw: Tensor, n_outputs: int, name: str) -> None:
    if raw.dim() != 2 or raw.shape[-1] != n_outputs:
        raise ValueError(f"{name}: expected raw outputs of shape (B, {n_outputs}), got {tuple(raw.shape)}")


# ----------------------------------------------------------------------------------------------
# base class
# ----------------------------------------------------------------------------------------------


class Likelihood(nn.Module):
    """Base class: maps raw outputs ``(B, n_outputs)`` to a distribution over ``P`` parameters.

    Attributes: ``name`` (config name), ``n_params`` (P), ``n_outputs``, ``has_width`` (predicts
    its own width), ``has_cov`` (predicts a full covariance), ``task`` (``"regression"`` or
    ``"classification"``). No trainable parameters: ``forward(raw, y)`` is ``loss(raw, y)``.
    """

    name: str = "likelihood"
    has_width: bool = True
    has_cov: bool = False
    task: str = "regression"

    def __init__(self, n_params: int):
        super().__init__()
        if int(n_params) < 1:
            raise InputError(None, f"loss: n_params must be >= 1, got {n_params}")
        self.n_params = int(n_params)
        self.n_outputs = self._n_outputs()

    # subclasses implement these (raw and y already in float32/float64, autocast off) ---------
    def _n_outputs(self) -> int:
        raise NotImplementedError

    def _nll(self, raw: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError

    def _predict(self, raw: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def _sample(self, raw: Tensor, n: int, generator: torch.Generator | None) -> Tensor:
        raise NotImplementedError

    def _loss(self, raw: Tensor, y: Tensor) -> Tensor:
        return self._nll(raw, y).mean()

    # public API: half-precision raw outputs are upcast to float32 and autocast is switched off,
    # so Cholesky solves and log-sum-exps never run in bf16/fp16 under AMP -------------------
    def loss(self, raw: Tensor, y: Tensor) -> Tensor:
        """Training objective, a scalar (see the module docstring; usually the batch mean of :meth:`nll`)."""
        raw, y = self._prep_xy(raw, y)
        with _full_precision(raw):
            return self._loss(raw, y)

    def nll(self, raw: Tensor, y: Tensor) -> Tensor:
        """Per-sample negative log-likelihood ``(B,)`` in nats, summed over parameters."""
        raw, y = self._prep_xy(raw, y)
        with _full_precision(raw):
            return self._nll(raw, y)

    def predict(self, raw: Tensor) -> dict[str, Tensor]:
        """Predictive summaries: ``mean (B,P)``, ``var (B,P)``, ``std (B,P)`` (+ ``cov`` etc.)."""
        raw, _ = _prep(raw, None)
        with _full_precision(raw):
            return self._predict(raw)

    def sample(self, raw: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` draws from the predictive distribution, shape ``(n, B, P)``."""
        raw, _ = _prep(raw, None)
        with _full_precision(raw):
            return self._sample(raw, int(n), generator)

    def forward(self, raw: Tensor, y: Tensor) -> Tensor:
        return self.loss(raw, y)

    def _prep_xy(self, raw: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        if y.shape != (raw.shape[0], self.n_params):
            raise ValueError(f"{self.name}: expected targets of shape (B, {self.n_params}) = "
                             f"({raw.shape[0]}, {self.n_params}), got {tuple(y.shape)}")
        return _prep(raw, y)

    def extra_repr(self) -> str:
        return f"n_params={self.n_params}, n_outputs={self.n_outputs}"


class _DiagonalGaussian(Likelihood):
    """Shared code for heads whose prediction is an independent Gaussian per parameter."""

    def _mean_std(self, raw: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _nll(self, raw: Tensor, y: Tensor) -> Tensor:
        mu, sigma = self._mean_std(raw)
        z = (y - mu) / sigma
        return (0.5 * z * z + torch.log(sigma) + 0.5 * LOG_2PI).sum(-1)

    def _predict(self, raw: Tensor) -> dict[str, Tensor]:
        mu, sigma = self._mean_std(raw)
        return {"mean": mu, "var": sigma * sigma, "std": sigma}

    def _sample(self, raw: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
        mu, sigma = self._mean_std(raw)
        z = _randn((n, *mu.shape), mu, generator)
        return mu + sigma * z


# ----------------------------------------------------------------------------------------------
# heads
# ----------------------------------------------------------------------------------------------


class GaussianNLL(_DiagonalGaussian):
    """Heteroscedastic diagonal Gaussian. Raw outputs ``[mu (P) | s (P)]``.

    ``parameterisation="softplus"`` (default): ``sigma = softplus(s) + min_std``.
    ``parameterisation="log_var"``: ``log sigma^2 = clamp(s, 2 ln(min_std), log_var_max)``
    (the clamp stops the gradient outside the range; raw outputs start near 0, i.e. sigma ~ 1).

    ``beta`` (default 0: the plain NLL) switches to the beta-NLL of Seitzer et al. (2022): each
    parameter's NLL term is weighted by ``sigma^(2 beta)`` with the gradient stopped through the
    weight, which keeps badly fitted points from being "explained away" by a large sigma early in
    training (``beta = 0.5`` is their recommendation; ``beta = 1`` gives the mean an MSE gradient).
    ``nll`` is always the true NLL.
    """

    name = "gaussian_nll"

    def __init__(self, n_params: int, parameterisation: str = "softplus", min_std: float = 1e-3,
                 log_var_max: float = 4.0, beta: float = 0.0):
        if parameterisation not in ("softplus", "log_var"):
            raise InputError(None, f"loss.parameterisation: {parameterisation!r} is not softplus or log_var")
        if not min_std > 0:
            raise InputError(None, f"loss.min_std must be > 0, got {min_std}")
        self.parameterisation = parameterisation
        self.min_std = float(min_std)
        self.log_var_min = 2.0 * math.log(self.min_std)
        self.log_var_max = float(log_var_max)
        self.beta = float(beta)
        if not 0.0 <= self.beta <= 1.0:
            raise InputError(None, f"loss.beta must be in [0, 1], got {beta}")
        if not self.log_var_max > self.log_var_min:
            raise InputError(None, f"loss.log_var_max ({log_var_max}) must exceed 2 ln(min_std) = {self.log_var_min:.3g}")
        super().__init__(n_params)

    def _n_outputs(self) -> int:
        return 2 * self.n_params

    def _mean_std(self, raw: Tensor) -> tuple[Tensor, Tensor]:
        _check_raw(raw, self.n_outputs, self.name)
        mu, s = raw[:, : self.n_params], raw[:, self.n_params:]
        if self.parameterisation == "softplus":
            sigma = F.softplus(s) + self.min_std
        else:
            sigma = torch.exp(0.5 * s.clamp(self.log_var_min, self.log_var_max))
        return mu, sigma

    def _loss(self, raw: Tensor, y: Tensor) -> Tensor:
        if self.beta == 0.0:
            return self._nll(raw, y).mean()
        mu, sigma = self._mean_std(raw)
        z = (y - mu) / sigma
        per_param = 0.5 * z * z + torch.log(sigma) + 0.5 * LOG_2PI
        weight = (sigma.detach() ** 2) ** self.beta
        return (weight * per_param).sum(-1).mean()

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, parameterisation={self.parameterisation}, min_std={self.min_std}, "
                f"beta={self.beta}")


class MSE(_DiagonalGaussian):
    """Point estimate. Raw outputs ``mu (P)``; read as a Gaussian with sigma = 1.

    ``loss = mean_batch ½ Σ_i (mu_i - y_i)²``, i.e. the Gaussian NLL without its constant
    (``nll - P/2 ln 2π``); the sum runs over parameters, like every other head's loss. ``predict``
    returns ``var = 1`` (no width is learnt: ``has_width`` is False).
    """

    name = "mse"
    has_width = False

    def _n_outputs(self) -> int:
        return self.n_params

    def _mean_std(self, raw: Tensor) -> tuple[Tensor, Tensor]:
        _check_raw(raw, self.n_outputs, self.name)
        return raw, torch.ones_like(raw)

    def _loss(self, raw: Tensor, y: Tensor) -> Tensor:
        _check_raw(raw, self.n_outputs, self.name)
        return 0.5 * ((raw - y) ** 2).sum(-1).mean()


class MomentNetwork(_DiagonalGaussian):
    """CMD moment network (Jeffrey & Wandelt 2020; Villaescusa-Navarro+22). Raw ``[mu (P) | s (P)]``.

    ``loss = Σ_i [ ln E_b (mu_i - θ_i)² + ln E_b ((mu_i - θ_i)² - sigma_i²)² ]``, the expectations
    taken over the batch, so mu estimates the posterior mean and sigma² the posterior variance.
    (CMD averages over parameters instead of summing; this only rescales the gradient by P.)

    ``sigma`` from ``s``: ``sigma_transform="softplus"`` (default, smooth, ``softplus(s)``),
    ``"abs"`` (``|s|``) or ``"square"`` (``s²``, the CMD code), plus ``min_std`` in every case so
    the Gaussian ``nll`` used for metrics stays finite. ``eps`` guards the logarithms.
    """

    name = "moment"

    def __init__(self, n_params: int, sigma_transform: str = "softplus", min_std: float = 1e-3,
                 eps: float = 1e-12):
        if sigma_transform not in ("softplus", "abs", "square"):
            raise InputError(None, f"loss.sigma_transform: {sigma_transform!r} is not softplus, abs or square")
        self.sigma_transform = sigma_transform
        self.min_std = float(min_std)
        self.eps = float(eps)
        super().__init__(n_params)

    def _n_outputs(self) -> int:
        return 2 * self.n_params

    def _mean_std(self, raw: Tensor) -> tuple[Tensor, Tensor]:
        _check_raw(raw, self.n_outputs, self.name)
        mu, s = raw[:, : self.n_params], raw[:, self.n_params:]
        if self.sigma_transform == "softplus":
            sigma = F.softplus(s)
        elif self.sigma_transform == "abs":
            sigma = s.abs()
        else:
            sigma = s * s
        return mu, sigma + self.min_std

    def _loss(self, raw: Tensor, y: Tensor) -> Tensor:
        mu, sigma = self._mean_std(raw)
        sq = (mu - y) ** 2
        term1 = torch.log(sq.mean(0) + self.eps)
        term2 = torch.log(((sq - sigma**2) ** 2).mean(0) + self.eps)
        return (term1 + term2).sum()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, sigma_transform={self.sigma_transform}, min_std={self.min_std}"


class GaussianFullCov(Likelihood):
    """Full-covariance Gaussian. Raw outputs ``[mu (P) | Cholesky entries (P(P+1)/2)]``.

    ``cov = L L^T`` with ``L`` lower triangular, diagonal ``softplus(.) + min_std`` (see
    :func:`cholesky_from_flat`). NLL in closed form via a triangular solve.
    """

    name = "gaussian_fullcov"
    has_cov = True

    def __init__(self, n_params: int, min_std: float = 1e-3):
        if not min_std > 0:
            raise InputError(None, f"loss.min_std must be > 0, got {min_std}")
        self.min_std = float(min_std)
        super().__init__(n_params)

    def _n_outputs(self) -> int:
        return self.n_params + n_tril(self.n_params)

    def mean_tril(self, raw: Tensor) -> tuple[Tensor, Tensor]:
        """``mu (B,P)`` and Cholesky factor ``L (B,P,P)``."""
        _check_raw(raw, self.n_outputs, self.name)
        p = self.n_params
        return raw[:, :p], cholesky_from_flat(raw[:, p:], p, self.min_std)

    def _nll(self, raw: Tensor, y: Tensor) -> Tensor:
        mu, L = self.mean_tril(raw)
        return -_mvn_logpdf(y, mu, L)

    def _predict(self, raw: Tensor) -> dict[str, Tensor]:
        mu, L = self.mean_tril(raw)
        cov = L @ L.transpose(-1, -2)
        var = torch.diagonal(cov, dim1=-2, dim2=-1)
        return {"mean": mu, "var": var, "std": var.sqrt(), "cov": cov, "scale_tril": L}

    def _sample(self, raw: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
        mu, L = self.mean_tril(raw)
        z = _randn((n, *mu.shape), mu, generator)
        return mu + torch.einsum("bij,nbj->nbi", L, z)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, min_std={self.min_std}"


class MixtureDensity(Likelihood):
    """Mixture of ``K`` Gaussians (mixture density network).

    Raw outputs ``[logits (K) | means (K*P) | scales (K*T)]`` with ``T = P(P+1)/2`` packed
    Cholesky entries per component for ``covariance="full"`` and ``T = P`` for ``"diag"``
    (``std = softplus(.) + min_std``). Means are laid out component by component.
    ``nll = -logsumexp_k [ln w_k + ln N(y; mu_k, Σ_k)]``. ``predict`` gives the mixture's mean
    ``Σ_k w_k mu_k`` and covariance (law of total covariance)
    ``Σ_k w_k (Σ_k + mu_k mu_k^T) - mean mean^T``, plus ``weights``, ``means`` and ``covs``.
    """

    name = "mdn"
    has_cov = True

    def __init__(self, n_params: int, n_components: int = 3, covariance: str = "full", min_std: float = 1e-3):
        if int(n_components) < 1:
            raise InputError(None, f"loss.n_components must be >= 1, got {n_components}")
        if covariance not in ("full", "diag"):
            raise InputError(None, f"loss.covariance: {covariance!r} is not full or diag")
        self.n_components = int(n_components)
        self.covariance = covariance
        self.min_std = float(min_std)
        super().__init__(n_params)

    def _n_scale(self) -> int:
        return n_tril(self.n_params) if self.covariance == "full" else self.n_params

    def _n_outputs(self) -> int:
        k, p = self.n_components, self.n_params
        return k + k * p + k * self._n_scale()

    def components(self, raw: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``log_weights (B,K)``, ``means (B,K,P)``, Cholesky factors ``L (B,K,P,P)``."""
        _check_raw(raw, self.n_outputs, self.name)
        b, k, p = raw.shape[0], self.n_components, self.n_params
        logits = raw[:, :k]
        means = raw[:, k: k + k * p].reshape(b, k, p)
        scale = raw[:, k + k * p:].reshape(b, k, self._n_scale())
        if self.covariance == "full":
            L = cholesky_from_flat(scale, p, self.min_std)
        else:
            L = torch.diag_embed(F.softplus(scale) + self.min_std)
        return torch.log_softmax(logits, dim=-1), means, L

    def _nll(self, raw: Tensor, y: Tensor) -> Tensor:
        log_w, means, L = self.components(raw)
        comp = _mvn_logpdf(y.unsqueeze(1), means, L)  # (B,K)
        return -torch.logsumexp(log_w + comp, dim=-1)

    def _predict(self, raw: Tensor) -> dict[str, Tensor]:
        log_w, means, L = self.components(raw)
        w = log_w.exp()
        covs = L @ L.transpose(-1, -2)
        mean = torch.einsum("bk,bkp->bp", w, means)
        second = torch.einsum("bk,bkij->bij", w, covs + means.unsqueeze(-1) * means.unsqueeze(-2))
        cov = second - mean.unsqueeze(-1) * mean.unsqueeze(-2)
        cov = 0.5 * (cov + cov.transpose(-1, -2))
        var = torch.diagonal(cov, dim1=-2, dim2=-1).clamp_min(0.0)
        return {"mean": mean, "var": var, "std": var.sqrt(), "cov": cov,
                "weights": w, "means": means, "covs": covs}

    def _sample(self, raw: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
        log_w, means, L = self.components(raw)
        b, k, p = means.shape
        device = generator.device if generator is not None else raw.device
        idx = torch.multinomial(log_w.detach().exp().to(device), n, replacement=True, generator=generator)
        idx = idx.to(raw.device)  # (B,n)
        mu = torch.gather(means, 1, idx.unsqueeze(-1).expand(b, n, p))  # (B,n,P)
        Lk = torch.gather(L, 1, idx[..., None, None].expand(b, n, p, p))  # (B,n,P,P)
        z = _randn((b, n, p), means, generator)
        x = mu + (Lk @ z.unsqueeze(-1)).squeeze(-1)
        return x.transpose(0, 1)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, n_components={self.n_components}, "
                f"covariance={self.covariance}, min_std={self.min_std}")


class Bernoulli(Likelihood):
    """Binary classifier (``P = 1``). Raw output: one logit. Targets ``y (B,1)`` in ``{0, 1}``.

    ``loss`` = binary cross-entropy with logits; ``predict``: ``mean = p = sigmoid(logit)``,
    ``var = p (1 - p)``; ``sample`` draws 0/1 values.
    """

    name = "bernoulli"
    has_width = False
    task = "classification"

    def __init__(self, n_params: int = 1):
        if int(n_params) != 1:
            raise InputError(None, f"loss: bernoulli classifies one binary label, so n_params must be 1, got {n_params}")
        super().__init__(n_params)

    def _n_outputs(self) -> int:
        return 1

    def _nll(self, raw: Tensor, y: Tensor) -> Tensor:
        _check_raw(raw, 1, self.name)
        return F.binary_cross_entropy_with_logits(raw, y.to(raw.dtype), reduction="none").sum(-1)

    def _predict(self, raw: Tensor) -> dict[str, Tensor]:
        _check_raw(raw, 1, self.name)
        p = torch.sigmoid(raw)
        var = p * (1 - p)
        return {"mean": p, "var": var, "std": var.sqrt(), "logit": raw}

    def _sample(self, raw: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
        p = self._predict(raw)["mean"]
        device = generator.device if generator is not None else raw.device
        u = torch.rand((n, *p.shape), generator=generator, device=device, dtype=p.dtype).to(raw.device)
        return (u < p).to(p.dtype)


# ----------------------------------------------------------------------------------------------
# factory
# ----------------------------------------------------------------------------------------------

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
    "gaussian_fullcov": ("min_std",),
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
