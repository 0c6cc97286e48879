"""The base of every likelihood head: :class:`Likelihood`, the diagonal-Gaussian base and the tensor
helpers the heads share (packed Cholesky factors, Gaussian log-densities, draws on any device).

Conventions (units, ``nll``/``loss``/``predict``/``sample``) are those of
:mod:`cosmoinfer.models.likelihoods`, which also builds heads by name.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cosmoinfer.errors import InputError

LOG_2PI = math.log(2.0 * math.pi)


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


def mvn_logpdf(y: Tensor, mean: Tensor, L: Tensor) -> Tensor:
    """Log-density of ``N(mean, L L^T)`` at ``y``; ``y, mean (..., P)``, ``L (..., P, P)`` -> ``(...)``."""
    diff = (y - mean).unsqueeze(-1)
    z = torch.linalg.solve_triangular(L, diff, upper=False).squeeze(-1)
    log_det = torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
    p = y.shape[-1]
    return -0.5 * (z * z).sum(-1) - log_det - 0.5 * p * LOG_2PI


def standard_normal(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
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


def check_raw(raw: Tensor, n_outputs: int, name: str) -> None:
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
    scalable: bool = False   # set_width_scale applies (Gaussian heads with widths of their own)
    has_cov: bool = False
    task: str = "regression"

    def __init__(self, n_params: int):
        super().__init__()
        if int(n_params) < 1:
            raise InputError(None, f"loss: n_params must be >= 1, got {n_params}")
        self.n_params = int(n_params)
        self.n_outputs = self._n_outputs()
        #: ``(P,)`` factors on the predicted widths, or None (see :meth:`set_width_scale`)
        self.width_scale: Tensor | None = None

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

    def set_width_scale(self, scale) -> None:
        """Multiply every predicted width of parameter ``p`` by ``scale[p]`` (``(P,)``, > 0; None: off).

        A Gaussian's standard deviations become ``s * sigma`` (a full covariance ``D C D`` with
        ``D = diag(s)``, its Cholesky factor ``D L``) in :meth:`nll`, :meth:`predict` and
        :meth:`sample`; the means are unchanged. It is the per-parameter width scale fitted on
        validation maps after training (``callbacks.refit_widths.val_scale``) and stored in the
        checkpoint (``meta["width_scale"]``). Gaussian heads with widths of their own only.
        """
        if scale is None:
            self.width_scale = None
            return
        if not self.scalable:
            raise InputError(None, f"loss={self.name}: its widths cannot be scaled per parameter (Gaussian heads only)")
        s = torch.as_tensor(scale, dtype=torch.float64).reshape(-1)
        if s.shape != (self.n_params,) or not bool(torch.all(torch.isfinite(s) & (s > 0))):
            raise InputError(None, f"width_scale must be {self.n_params} finite numbers > 0, got {s.tolist()}")
        self.width_scale = s

    def _scale(self, like: Tensor) -> Tensor | None:
        """The width scale as ``like``'s dtype and device, or None."""
        return None if self.width_scale is None else self.width_scale.to(like)

    def _prep_xy(self, raw: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        if y.shape != (raw.shape[0], self.n_params):
            raise ValueError(f"{self.name}: expected targets of shape (B, {self.n_params}) = "
                             f"({raw.shape[0]}, {self.n_params}), got {tuple(y.shape)}")
        return _prep(raw, y)

    def extra_repr(self) -> str:
        return f"n_params={self.n_params}, n_outputs={self.n_outputs}"


def average_gaussian_views(means: Tensor, covs: Tensor) -> tuple[Tensor, Tensor]:
    """Test-time augmentation of a Gaussian head: ``means (V,B,P)`` and ``covs (V,B,P,P)`` of the
    ``V`` views of each map averaged into one Gaussian, ``loc (B,P)`` and ``cov (B,P,P)``.

    The covariance is the views' average, not a mixture's (the spread of the views' means is left
    out: the views are copies of one map, and their average is the better estimate; CMD's TTA).
    """
    return means.mean(0), covs.mean(0)


class DiagonalGaussian(Likelihood):
    """Shared code for heads whose prediction is an independent Gaussian per parameter."""

    scalable = True

    def _mean_std(self, raw: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _scaled_mean_std(self, raw: Tensor) -> tuple[Tensor, Tensor]:
        """``_mean_std`` with the width scale applied (:meth:`Likelihood.set_width_scale`)."""
        mu, sigma = self._mean_std(raw)
        s = self._scale(sigma)
        return (mu, sigma) if s is None else (mu, sigma * s)

    def _nll(self, raw: Tensor, y: Tensor) -> Tensor:
        mu, sigma = self._scaled_mean_std(raw)
        z = (y - mu) / sigma
        return (0.5 * z * z + torch.log(sigma) + 0.5 * LOG_2PI).sum(-1)

    def _predict(self, raw: Tensor) -> dict[str, Tensor]:
        mu, sigma = self._scaled_mean_std(raw)
        return {"mean": mu, "var": sigma * sigma, "std": sigma}

    def _sample(self, raw: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
        mu, sigma = self._scaled_mean_std(raw)
        z = standard_normal((n, *mu.shape), mu, generator)
        return mu + sigma * z
