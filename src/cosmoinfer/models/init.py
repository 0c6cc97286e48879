"""Weight initialisation schemes for the backbones and heads.

:func:`init_weights` walks a module and sets, for every ``nn.Conv*`` and ``nn.Linear``,

=================  =====================================================  ==============================
scheme             weight distribution                                     variance
=================  =====================================================  ==============================
``kaiming_normal`` He normal for LeakyReLU(0.2), fan-in mode               ``2 / ((1 + 0.2**2) fan_in)``
``xavier``         Glorot normal                                           ``2 / (fan_in + fan_out)``
``lecun``          LeCun normal                                            ``1 / fan_in``
``pytorch``        leave PyTorch's default initialisation untouched        (uniform, ``1 / (3 fan_in)``)
=================  =====================================================  ==============================

with ``fan_in = in_channels * kernel_area`` and ``fan_out = out_channels * kernel_area``. Biases
are set to zero (``pytorch`` keeps its default uniform biases); BatchNorm / GroupNorm / LayerNorm
weights are set to one and biases to zero under every scheme.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cosmoinfer.errors import InputError

#: Negative slope of the LeakyReLU used throughout the networks (CMD reference value).
LEAKY_SLOPE = 0.2

INIT_SCHEMES = ("kaiming_normal", "xavier", "lecun", "pytorch")

_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm)


def fans(weight: torch.Tensor) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a Linear ``(out, in)`` or conv ``(out, in, *kernel)`` weight."""
    if weight.dim() < 2:
        raise ValueError(f"fan-in/out need a weight with >= 2 dimensions, got shape {tuple(weight.shape)}")
    receptive = math.prod(weight.shape[2:]) if weight.dim() > 2 else 1
    return weight.shape[1] * receptive, weight.shape[0] * receptive


def expected_std(weight: torch.Tensor, scheme: str) -> float:
    """Standard deviation that ``scheme`` gives the entries of ``weight`` (see the module table)."""
    fan_in, fan_out = fans(weight)
    if scheme == "kaiming_normal":
        return math.sqrt(2.0 / ((1.0 + LEAKY_SLOPE**2) * fan_in))
    if scheme == "xavier":
        return math.sqrt(2.0 / (fan_in + fan_out))
    if scheme == "lecun":
        return math.sqrt(1.0 / fan_in)
    if scheme == "pytorch":
        return math.sqrt(1.0 / (3.0 * fan_in))  # kaiming_uniform(a=sqrt(5)) default of torch
    raise InputError(None, f"model.init: unknown scheme {scheme!r}; choose one of {', '.join(INIT_SCHEMES)}")


@torch.no_grad()
def init_weights(module: nn.Module, scheme: str = "kaiming_normal") -> nn.Module:
    """Initialise every conv / linear / norm layer inside ``module`` in place; return ``module``.

    ``scheme``: one of ``kaiming_normal`` (default), ``xavier``, ``lecun``, ``pytorch``.
    """
    if scheme not in INIT_SCHEMES:
        raise InputError(None, f"model.init: unknown scheme {scheme!r}; choose one of {', '.join(INIT_SCHEMES)}")
    for m in module.modules():
        if isinstance(m, _WEIGHTED):
            if scheme != "pytorch":
                m.weight.normal_(0.0, expected_std(m.weight, scheme))
                if m.bias is not None:
                    m.bias.zero_()
        elif isinstance(m, _NORMS):
            if getattr(m, "weight", None) is not None:
                m.weight.fill_(1.0)
            if getattr(m, "bias", None) is not None:
                m.bias.zero_()
    return module
