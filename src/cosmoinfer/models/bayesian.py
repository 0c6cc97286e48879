"""Mean-field variational (Bayesian) linear layers for the network's head (``model.bayesian_head``).

Why our own small layer rather than a library (bayesian-torch, blitz, torchbnn): the head is a
plain :class:`~cosmoinfer.models.network.MLPHead` of ``nn.Linear`` layers, and everything around it
(weight initialisation, ``init_out_scale``, the width refit, TTA, checkpoints loaded with
``weights_only=True``) looks for ``nn.Linear`` and its ``weight``/``bias``. :class:`BayesLinear`
*is* an ``nn.Linear`` whose ``weight``/``bias`` are the posterior means, plus two parameters for the
standard deviations, so all of that keeps working and a checkpoint stays plain tensors. The
evaluator needs one more thing a library does not give: weight draws keyed by ``(seed, member,
pass, layer)`` instead of the global random stream, so a map's predictive does not depend on the
batch size (:class:`~cosmoinfer.uncertainty.weight_draws.KeyedWeightDraws`), which is a two-line
hook here (:meth:`BayesLinear.set_noise`). The whole layer is ~60 lines with a closed-form KL;
a dependency for it would be larger than the code it replaces.

Model (Blundell et al. 2015, "Bayes by Backprop"): every weight and bias ``w ~ N(mu, s^2)``
independently, ``s = softplus(rho)``; prior ``N(0, prior_std^2)``. Per layer,

    KL(q || p) = sum [ ln(prior_std / s) + (s^2 + mu^2) / (2 prior_std^2) - 1/2 ]   (nats, exact)

Training minimises the negative ELBO per map, ``mean NLL + KL / N_train`` (``N_train`` = number
of training maps; :class:`~cosmoinfer.training.module.PosteriorModule`). In train mode the layer
samples with the local reparameterisation trick (Kingma et al. 2015): the pre-activations
``N(x mu^T + b, x^2 (s^2)^T + s_b^2)`` are drawn per map, which is in distribution a fresh weight
draw per map at the cost of two matmuls and with lower gradient variance. In eval mode the layer
uses the means (``single``/``ensemble`` evaluators, validation), unless noise was set with
:meth:`set_noise` (the ``bnn`` evaluator: one weight draw shared by every map of a pass).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cosmoinfer.errors import InputError


def _inv_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


def gaussian_kl(mu: Tensor, std: Tensor, prior_std: float) -> Tensor:
    """``sum KL(N(mu, std^2) || N(0, prior_std^2))`` over all entries, in nats (a scalar)."""
    p = float(prior_std)
    return (math.log(p) - torch.log(std) + (std**2 + mu**2) / (2 * p * p) - 0.5).sum()


class BayesLinear(nn.Linear):
    """``nn.Linear`` with mean-field Gaussian weights: ``weight``/``bias`` are the means,
    ``weight_rho``/``bias_rho`` give the standard deviations ``softplus(rho)``.

    ``prior_std``: the prior's standard deviation (> 0); ``init_std``: the initial posterior
    standard deviation of every weight (> 0). Input ``(B, in_features)``, output ``(B, out_features)``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, prior_std: float = 1.0,
                 init_std: float = 1e-3):
        super().__init__(in_features, out_features, bias=bias)
        if not (prior_std > 0 and init_std > 0):
            raise InputError(None, f"model.bayes_prior_std and model.bayes_init_std must be > 0, got {prior_std}, "
                             f"{init_std}")
        self.prior_std = float(prior_std)
        rho = _inv_softplus(float(init_std))
        self.weight_rho = nn.Parameter(torch.full((out_features, in_features), rho))
        self.bias_rho = nn.Parameter(torch.full((out_features,), rho)) if bias else None
        self._noise: tuple[Tensor, Tensor | None] | None = None

    @property
    def weight_std(self) -> Tensor:
        return F.softplus(self.weight_rho)

    @property
    def bias_std(self) -> Tensor | None:
        return None if self.bias_rho is None else F.softplus(self.bias_rho)

    def kl(self) -> Tensor:
        """``KL(q || prior)`` of this layer's weights and biases, in nats."""
        kl = gaussian_kl(self.weight, self.weight_std, self.prior_std)
        if self.bias is not None:
            kl = kl + gaussian_kl(self.bias, self.bias_std, self.prior_std)
        return kl

    def set_noise(self, eps_weight: Tensor | None, eps_bias: Tensor | None = None) -> None:
        """Eval-mode weight draw ``mu + s * eps`` (``eps`` standard normal, weight/bias shapes); None: the means."""
        self._noise = None if eps_weight is None else (eps_weight, eps_bias)

    def forward(self, x: Tensor) -> Tensor:
        if self.training:  # local reparameterisation: a fresh weight draw per map, in distribution
            mean = F.linear(x, self.weight, self.bias)
            var = F.linear(x * x, self.weight_std**2, None if self.bias is None else self.bias_std**2)
            return mean + var.sqrt() * torch.randn_like(mean)
        if self._noise is not None:
            ew, eb = self._noise
            w = self.weight + self.weight_std * ew.to(self.weight)
            b = None if self.bias is None else self.bias + self.bias_std * eb.to(self.bias)
            return F.linear(x, w, b)
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, prior_std={self.prior_std}"


def bayes_layers(module: nn.Module) -> list[BayesLinear]:
    """The :class:`BayesLinear` layers of ``module``, in module order."""
    return [m for m in module.modules() if isinstance(m, BayesLinear)]


def network_kl(module: nn.Module) -> Tensor:
    """Total KL (nats) of every Bayesian layer of ``module`` (0 without any)."""
    layers = bayes_layers(module)
    if not layers:
        return torch.zeros(())
    return torch.stack([m.kl() for m in layers]).sum()


def rho_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The ``rho`` (standard deviation) parameters: no weight decay for them (the KL is their regulariser)."""
    out: list[nn.Parameter] = []
    for m in bayes_layers(module):
        out += [m.weight_rho] + ([m.bias_rho] if m.bias_rho is not None else [])
    return out


__all__ = ["BayesLinear", "bayes_layers", "gaussian_kl", "network_kl", "rho_parameters"]
