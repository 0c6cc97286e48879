"""Networks (backbones + heads) and likelihood heads.

* :func:`build_network` (``conf/model``): ``cmd_cnn``, ``resnet``, ``ps_mlp`` -> :class:`Network`.
* :func:`build_likelihood` (``conf/loss``): ``gaussian_nll``, ``mse``, ``moment``,
  ``gaussian_fullcov``, ``mdn``, ``bernoulli``, ``flow`` (:mod:`cosmoinfer.models.flow`) -> :class:`Likelihood`.
* :func:`init_weights`: ``kaiming_normal``, ``xavier``, ``lecun`` (``pytorch`` keeps the default).

All parameters (targets, predicted means and widths) are in normalised units: scaled to [0, 1]
by the prior.
"""

from cosmoinfer.models.backbones import CMDBackbone, ResNetBackbone, has_dropout
from cosmoinfer.models.flow import ConditionalFlow  # registers loss=flow in LIKELIHOODS
from cosmoinfer.models.init import INIT_SCHEMES, init_weights
from cosmoinfer.models.likelihoods import LIKELIHOODS, Likelihood, build_likelihood
from cosmoinfer.models.network import ARCH_DEFAULTS, MLPHead, Network, build_network
from cosmoinfer.models.power_spectrum_net import PowerSpectrumBackbone

__all__ = [
    "ARCH_DEFAULTS",
    "CMDBackbone",
    "ConditionalFlow",
    "INIT_SCHEMES",
    "LIKELIHOODS",
    "Likelihood",
    "MLPHead",
    "Network",
    "PowerSpectrumBackbone",
    "ResNetBackbone",
    "build_likelihood",
    "build_network",
    "has_dropout",
    "init_weights",
]
