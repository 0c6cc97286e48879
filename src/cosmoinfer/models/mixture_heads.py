"""Mixture and classification heads: a mixture density network of ``K`` Gaussians (``mdn``) and a
binary classifier (``bernoulli``).

Units and conventions: :mod:`cosmoinfer.models.likelihoods`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cosmoinfer.errors import InputError
from cosmoinfer.models.likelihood_base import (
    Likelihood,
    check_raw,
    cholesky_from_flat,
    mvn_logpdf,
    n_tril,
    standard_normal,
)


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
        check_raw(raw, self.n_outputs, self.name)
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
        comp = mvn_logpdf(y.unsqueeze(1), means, L)  # (B,K)
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
        z = standard_normal((b, n, p), means, generator)
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
        check_raw(raw, 1, self.name)
        return F.binary_cross_entropy_with_logits(raw, y.to(raw.dtype), reduction="none").sum(-1)

    def _predict(self, raw: Tensor) -> dict[str, Tensor]:
        check_raw(raw, 1, self.name)
        p = torch.sigmoid(raw)
        var = p * (1 - p)
        return {"mean": p, "var": var, "std": var.sqrt(), "logit": raw}

    def _sample(self, raw: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
        p = self._predict(raw)["mean"]
        device = generator.device if generator is not None else raw.device
        u = torch.rand((n, *p.shape), generator=generator, device=device, dtype=p.dtype).to(raw.device)
        return (u < p).to(p.dtype)
