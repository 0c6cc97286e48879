"""Gaussian likelihood heads: diagonal (``gaussian_nll``), point estimate (``mse``), the CMD moment
network (``moment``) and full covariance (``gaussian_fullcov``).

Units and conventions: :mod:`cosmoinfer.models.likelihoods`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from cosmoinfer.errors import InputError
from cosmoinfer.models.likelihood_base import (
    LOG_2PI,
    DiagonalGaussian,
    Likelihood,
    check_raw,
    cholesky_from_flat,
    mvn_logpdf,
    n_tril,
    standard_normal,
)


class _MeanAndScale(DiagonalGaussian):
    """Diagonal Gaussians from raw outputs ``[mu (P) | s (P)]``; subclasses turn ``s`` into ``sigma``."""

    def _n_outputs(self) -> int:
        return 2 * self.n_params

    def _split(self, raw: Tensor) -> tuple[Tensor, Tensor]:
        check_raw(raw, self.n_outputs, self.name)
        return raw[:, : self.n_params], raw[:, self.n_params:]


class GaussianNLL(_MeanAndScale):
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

    def _mean_std(self, raw: Tensor) -> tuple[Tensor, Tensor]:
        mu, s = self._split(raw)
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


class MSE(DiagonalGaussian):
    """Point estimate. Raw outputs ``mu (P)``; read as a Gaussian with sigma = 1.

    ``loss = mean_batch ½ Σ_i (mu_i - y_i)²``, i.e. the Gaussian NLL without its constant
    (``nll - P/2 ln 2π``); the sum runs over parameters, like every other head's loss. ``predict``
    returns ``var = 1`` (no width is learnt: ``has_width`` is False).
    """

    name = "mse"
    has_width = False
    scalable = False

    def _n_outputs(self) -> int:
        return self.n_params

    def _mean_std(self, raw: Tensor) -> tuple[Tensor, Tensor]:
        check_raw(raw, self.n_outputs, self.name)
        return raw, torch.ones_like(raw)

    def _loss(self, raw: Tensor, y: Tensor) -> Tensor:
        check_raw(raw, self.n_outputs, self.name)
        return 0.5 * ((raw - y) ** 2).sum(-1).mean()


class MomentNetwork(_MeanAndScale):
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

    def _mean_std(self, raw: Tensor) -> tuple[Tensor, Tensor]:
        mu, s = self._split(raw)
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

    ``beta`` (default 0: the plain NLL) is the beta-NLL of :class:`GaussianNLL` carried over to a
    full covariance. With ``C = stop_grad(cov)``, the training loss per map is

        ½ r^T C^(beta - 1) r  +  det(C)^(beta / P) * NLL(y; stop_grad(mu), L),     r = y - mu

    so the mean's gradient is ``-C^(beta - 1) r`` (the plain NLL's ``-C^-1 r`` at ``beta = 0``, an
    MSE's ``-r`` at ``beta = 1``, and exactly the diagonal beta-NLL's ``-r / sigma^(2 - 2 beta)`` when
    ``C`` is diagonal), and the covariance gets the NLL's gradient at the mean held fixed, weighted
    by the geometric mean of ``C``'s eigenvalues to the power ``beta`` (the diagonal beta-NLL weights
    each sigma by its own ``sigma^(2 beta)``). ``C^(beta - 1)`` comes from the eigendecomposition of
    ``C``. Why: with strongly correlated parameters (grf maps: correlation ~ -0.98) the plain NLL
    weights the mean's error along the narrow direction by ``1 / lambda_min`` and starves the broad
    direction of gradient. ``nll`` is always the true NLL; the loss value is the weighted one.
    """

    name = "gaussian_fullcov"
    has_cov = True
    scalable = True

    def __init__(self, n_params: int, min_std: float = 1e-3, beta: float = 0.0):
        if not min_std > 0:
            raise InputError(None, f"loss.min_std must be > 0, got {min_std}")
        self.min_std = float(min_std)
        self.beta = float(beta)
        if not 0.0 <= self.beta <= 1.0:
            raise InputError(None, f"loss.beta must be in [0, 1], got {beta}")
        super().__init__(n_params)

    def _n_outputs(self) -> int:
        return self.n_params + n_tril(self.n_params)

    def mean_tril(self, raw: Tensor) -> tuple[Tensor, Tensor]:
        """``mu (B,P)`` and Cholesky factor ``L (B,P,P)`` (``D L`` under a width scale ``D = diag(s)``)."""
        check_raw(raw, self.n_outputs, self.name)
        p = self.n_params
        L = cholesky_from_flat(raw[:, p:], p, self.min_std)
        s = self._scale(L)
        return raw[:, :p], (L if s is None else s[:, None] * L)

    def _nll(self, raw: Tensor, y: Tensor) -> Tensor:
        mu, L = self.mean_tril(raw)
        return -mvn_logpdf(y, mu, L)

    def _loss(self, raw: Tensor, y: Tensor) -> Tensor:
        if self.beta == 0.0:
            return self._nll(raw, y).mean()
        mu, L = self.mean_tril(raw)
        with torch.no_grad():
            c = (L @ L.transpose(-1, -2)).double()
            lam, vec = torch.linalg.eigh(c)
            lam = lam.clamp_min(self.min_std ** 2)
            precond = (vec * lam.unsqueeze(-2) ** (self.beta - 1.0)) @ vec.transpose(-1, -2)
            weight = torch.exp(self.beta * torch.log(lam).mean(-1))   # det(C)^(beta / P)
        r = (y - mu).unsqueeze(-1)
        mean_term = 0.5 * (r.transpose(-1, -2) @ precond.to(r.dtype) @ r).reshape(-1)
        cov_term = weight.to(mu.dtype) * -mvn_logpdf(y, mu.detach(), L)
        return (mean_term + cov_term).mean()

    def _predict(self, raw: Tensor) -> dict[str, Tensor]:
        mu, L = self.mean_tril(raw)
        cov = L @ L.transpose(-1, -2)
        var = torch.diagonal(cov, dim1=-2, dim2=-1)
        return {"mean": mu, "var": var, "std": var.sqrt(), "cov": cov, "scale_tril": L}

    def _sample(self, raw: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
        mu, L = self.mean_tril(raw)
        z = standard_normal((n, *mu.shape), mu, generator)
        return mu + torch.einsum("bij,nbj->nbi", L, z)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, min_std={self.min_std}, beta={self.beta}"
