"""``loss=flow``: a conditional normalizing flow over the unit-cube coordinates, support = the prior box.

The network's head emits, for every map, all the parameters of a small flow (zuko transforms):
the head is the flow's hyper-network, conditioned on the backbone's features. The likelihood
itself stays parameter-free like every other head, so a checkpoint's ``network.*`` weights are
the whole model (checkpoints, ensembles, MC dropout in the head and TTA need nothing new).

Density, read from the parameters ``u`` in unit coordinates (each prior scaled to [0, 1], in log
space for a log-uniform prior) to the base variable ``z ~ N(0, I_P)``:

    u  --logit-->  v = ln u - ln(1 - u)                      the fixed box bijection, (0,1)^P -> R^P
       --affine--> v * exp(a) + b                            per map, elementwise (sets location/scale)
       --[ AR affine: x_i * exp(s_i) + t_i, (t_i, s_i) = c_i + sum_{j<i} A_ij . phi(x_j)
           RQ spline per coordinate (``n_bins`` bins on [-bound, bound], identity outside)
           reverse the coordinates ] x ``n_layers``      -->  z

``phi(x) = [x, exp(-(x - c_m)^2 / 2w^2), m = 1..n_basis]`` (centres ``c_m`` evenly on [-3, 3]), so
each coordinate's shift and log-scale are smooth functions of the preceding ones (curved ridges
such as Omega_m-sigma_8) while inverting stays exact (``P`` passes). All of ``a, b, c, A`` and the
spline knots are raw outputs of the head; at raw = 0 every transform is the identity (u is then
``sigmoid(N(0, 1))`` per coordinate, a broad distribution over the box).

``log q(u) = log N(z; 0, I) + log|dz/du|`` includes the logit's Jacobian ``-sum ln u(1-u)``: the
flow's support is exactly the open box (0, 1)^P, so no mass falls outside the prior, and like
every head :meth:`nll` is in unit coordinates (the physical density subtracts the prior
bijection's ``sum ln |dtheta/du|``, see :class:`cosmoinfer.posterior.flow.FlowPredictive`).
Targets on the box's edge (0 or 1 to float precision) are moved ``eps`` inside.

Shapes: ``raw (N, n_outputs)``; points ``u (N, S, P)`` (S points per map) for
:meth:`ConditionalFlow.log_prob_unit`, draws ``(N, S, P)`` from :meth:`ConditionalFlow.sample_unit`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from zuko.transforms import (
    ComposedTransform,
    MonotonicAffineTransform,
    MonotonicRQSTransform,
    PermutationTransform,
)

from cosmoinfer.errors import InputError
from cosmoinfer.models.likelihood_base import LOG_2PI, Likelihood, check_raw
from cosmoinfer.models.likelihoods import register_likelihood

__all__ = ["ARAffineTransform", "ConditionalFlow", "LogitTransform"]

#: zuko's soft bound on log-scales (``MonotonicAffineTransform``'s ``slope``): |ln scale| < ln 1000.
_LOG_SLOPE = math.log(1e-3)


class LogitTransform(torch.distributions.Transform):
    """``v = ln u - ln(1 - u)`` from the unit box (0, 1) to the real line; inverse ``sigmoid``."""

    domain = torch.distributions.constraints.unit_interval
    codomain = torch.distributions.constraints.real
    bijective = True
    sign = +1

    def _call(self, u: Tensor) -> Tensor:
        return torch.log(u) - torch.log1p(-u)

    def _inverse(self, v: Tensor) -> Tensor:
        return torch.sigmoid(v)

    def log_abs_det_jacobian(self, u: Tensor, v: Tensor) -> Tensor:
        return -torch.log(u) - torch.log1p(-u)


class ARAffineTransform(torch.distributions.Transform):
    """Autoregressive affine ``y_i = x_i exp(s_i) + t_i``, ``(t_i, s_i) = c_i + sum_{j<i} phi(x_j) W_j``.

    ``const (N, 2, P)`` holds ``c``, ``W (N, P_j, F, 2 P_i)`` the weights (zero for ``j >= i``), and
    ``features`` maps ``x (N, S, P)`` to ``phi (N, S, P, F)``. Log-scales are soft-bounded as in
    zuko's ``MonotonicAffineTransform``. The density direction is parallel; the inverse runs one
    coordinate at a time, adding each solved coordinate's contribution, so it costs one forward.
    """

    domain = torch.distributions.constraints.real_vector
    codomain = torch.distributions.constraints.real_vector
    bijective = True

    def __init__(self, const: Tensor, W: Tensor, features):
        super().__init__()
        self.const, self.W, self.features = const, W, features

    def _shift_log_scale(self, out: Tensor) -> tuple[Tensor, Tensor]:
        a = out[..., 1, :]
        return out[..., 0, :], a / (1 + (a / _LOG_SLOPE).abs())

    def _params(self, x: Tensor) -> tuple[Tensor, Tensor]:
        n, s, p = x.shape
        phi = self.features(x[..., :-1]).reshape(n, s, -1)  # (N, S, (P-1)*F): the last x_j conditions nothing
        out = torch.bmm(phi, self.W[:, :-1].reshape(n, -1, 2 * p)).reshape(n, s, 2, p) + self.const[:, None]
        return self._shift_log_scale(out)

    def _call(self, x: Tensor) -> Tensor:
        t, a = self._params(x)
        return x * a.exp() + t

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        t, a = self._params(x)
        return x * a.exp() + t, a.sum(-1)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        return self._params(x)[1].sum(-1)

    def _inverse(self, y: Tensor) -> Tensor:
        n, s, p = y.shape
        out = self.const[:, None].expand(n, s, 2, p).reshape(n, s, 2 * p).clone()
        xs = []
        for i in range(p):
            t, a = self._shift_log_scale(out[..., [i, p + i]].reshape(n, s, 2, 1))
            x_i = (y[..., i: i + 1] - t[..., 0:1]) * torch.exp(-a[..., 0:1])  # (N, S, 1)
            xs.append(x_i)
            if i < p - 1:
                out = out + torch.bmm(self.features(x_i)[..., 0, :], self.W[:, i])
        return torch.cat(xs, dim=-1)


class ConditionalFlow(Likelihood):
    """Conditional flow over the ``P`` unit coordinates whose parameters are the raw outputs.

    Options: ``n_layers`` [3] autoregressive-affine + spline layers, ``n_bins`` [8] spline bins,
    ``n_basis`` [8] Gaussian bumps in the conditioner's features, ``bound`` [5.0] spline range,
    ``eps`` [1e-6] how far edge targets are moved inside the box, ``n_predict`` [256] draws behind
    :meth:`predict`'s moments (a fixed seed, so validation metrics do not jitter or touch the
    global RNG).
    """

    name = "flow"
    has_cov = True

    def __init__(self, n_params: int, n_layers: int = 3, n_bins: int = 8, n_basis: int = 8, bound: float = 5.0,
                 eps: float = 1e-6, n_predict: int = 256):
        for key, v, lo in (("n_layers", n_layers, 1), ("n_bins", n_bins, 2), ("n_basis", n_basis, 0),
                           ("n_predict", n_predict, 2)):
            if int(v) < lo:
                raise InputError(None, f"loss.{key} must be >= {lo}, got {v}")
        if not bound > 0 or not 0 < eps < 0.1:
            raise InputError(None, f"loss.bound must be > 0 and loss.eps in (0, 0.1), got {bound}, {eps}")
        self.n_layers, self.n_bins, self.n_basis = int(n_layers), int(n_bins), int(n_basis)
        self.bound, self.eps, self.n_predict = float(bound), float(eps), int(n_predict)
        super().__init__(n_params)
        p = self.n_params
        self.register_buffer("centres", torch.linspace(-3.0, 3.0, self.n_basis) if self.n_basis > 1
                             else torch.zeros(self.n_basis), persistent=False)
        self.width = 6.0 / max(self.n_basis - 1, 1)
        # packed strictly-lower-triangular (i > j) pairs of the conditioner
        self.register_buffer("pairs", torch.tril_indices(p, p, offset=-1), persistent=False)
        self.register_buffer("reverse", torch.arange(p - 1, -1, -1), persistent=False)

    # ------------------------------------------------------------------ layout of the raw outputs
    @property
    def n_features(self) -> int:
        return self.n_basis + 1

    def _layer_sizes(self) -> tuple[int, int, int]:
        p = self.n_params
        n_pairs = p * (p - 1) // 2
        return 2 * p, 2 * n_pairs * self.n_features, p * (3 * self.n_bins - 1)

    def _n_outputs(self) -> int:
        return 2 * self.n_params + self.n_layers * sum(self._layer_sizes())

    # ------------------------------------------------------------------ the transform u -> z
    def _features(self, x: Tensor) -> Tensor:
        """``phi(x)``: ``(N, S, P)`` -> ``(N, S, P, n_basis + 1)``."""
        c = self.centres.to(x.dtype)
        bumps = torch.exp(-0.5 * ((x[..., None] - c) / self.width) ** 2)
        return torch.cat([x[..., None], bumps], dim=-1)

    def _conditioner(self, const: Tensor, coef: Tensor) -> "ARAffineTransform":
        """The AR-affine transform whose shift/log-scale at ``i`` depend on ``x_{<i}``.

        ``const (N, 2, P)``; ``coef (N, 2, n_pairs, F)`` are the weights ``A_ij`` of the pairs i > j.
        """
        n, p, f = const.shape[0], self.n_params, self.n_features
        rows, cols = self.pairs
        A = const.new_zeros(n, 2, p, p, f)
        A[:, :, rows, cols] = coef
        W = A.permute(0, 3, 4, 1, 2).reshape(n, p, f, 2 * p)  # (N, P_j, F, 2 * P_i)
        return ARAffineTransform(const, W, self._features)

    def transform(self, raw: Tensor) -> ComposedTransform:
        """The bijection ``u (N, S, P)`` in the open unit box -> ``z (N, S, P)``, per map's raw outputs."""
        check_raw(raw, self.n_outputs, self.name)
        n, p, k = raw.shape[0], self.n_params, self.n_bins
        s_const, s_coef, s_spline = self._layer_sizes()
        ts = [LogitTransform(), MonotonicAffineTransform(raw[:, None, p: 2 * p], raw[:, None, :p])]
        i = 2 * p
        for _ in range(self.n_layers):
            const = raw[:, i: i + s_const].reshape(n, 2, p)
            coef = raw[:, i + s_const: i + s_const + s_coef].reshape(n, 2, -1, self.n_features)
            knots = raw[:, i + s_const + s_coef: i + s_const + s_coef + s_spline].reshape(n, 1, p, 3 * k - 1)
            i += s_const + s_coef + s_spline
            ts.append(self._conditioner(const, coef))  # P = 1: a plain affine
            ts.append(MonotonicRQSTransform(knots[..., :k], knots[..., k: 2 * k], knots[..., 2 * k:],
                                            bound=self.bound))
            ts.append(PermutationTransform(self.reverse))  # also makes the whole flow act on vectors
        return ComposedTransform(*ts)

    # ------------------------------------------------------------------ densities and draws
    def log_prob_unit(self, raw: Tensor, u: Tensor) -> Tensor:
        """``log q(u | x)`` in unit coordinates (logit Jacobian included): ``u (N, S, P)`` -> ``(N, S)``.

        ``-inf`` outside the closed box; points on its edge are moved ``eps`` inside.
        """
        u = u.to(raw.dtype)
        inside = ((u >= 0) & (u <= 1)).all(-1)
        u = u.clamp(self.eps, 1 - self.eps)
        z, ladj = self.transform(raw).call_and_ladj(u)
        lp = -0.5 * (z * z).sum(-1) - 0.5 * self.n_params * LOG_2PI + ladj
        return torch.where(inside, lp, torch.full_like(lp, -math.inf))

    def sample_unit(self, raw: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` draws per map, ``(N, n, P)``, all strictly inside the unit box (to float precision)."""
        check_raw(raw, self.n_outputs, self.name)
        device = generator.device if generator is not None else raw.device
        z = torch.randn((raw.shape[0], int(n), self.n_params), generator=generator, device=device,
                        dtype=raw.dtype).to(raw.device)
        return self.transform(raw).inv(z)

    # ------------------------------------------------------------------ the Likelihood interface
    def _nll(self, raw: Tensor, y: Tensor) -> Tensor:
        return -self.log_prob_unit(raw, y[:, None, :])[:, 0]

    def _sample(self, raw: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.sample_unit(raw, n, generator).transpose(0, 1)

    def _predict(self, raw: Tensor) -> dict[str, Tensor]:
        gen = torch.Generator(device=raw.device)
        gen.manual_seed(0)
        with torch.no_grad():
            x = self.sample_unit(raw.detach(), self.n_predict, gen)  # (N, S, P)
        mean = x.mean(1)
        d = x - mean[:, None]
        cov = torch.einsum("nsi,nsj->nij", d, d) / (x.shape[1] - 1)
        var = torch.diagonal(cov, dim1=-2, dim2=-1)
        return {"mean": mean, "var": var, "std": var.sqrt(), "cov": cov}

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, n_layers={self.n_layers}, n_bins={self.n_bins}, "
                f"n_basis={self.n_basis}, bound={self.bound}")


register_likelihood(ConditionalFlow, ("n_layers", "n_bins", "n_basis", "bound", "eps", "n_predict"))
