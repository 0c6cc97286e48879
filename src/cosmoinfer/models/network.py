"""A network = backbone (maps -> features) + head (features -> raw likelihood outputs).

:func:`build_network` is the one entry point used by training (``conf/model/*.yaml``)::

    net = build_network(in_channels=C, grid=H, n_outputs=likelihood.n_outputs, **cfg.model)

Shapes: input ``(B, C, H, W)`` normalised maps (per channel optional ``log10``, then
``(x - mean) / std``); ``backbone(x)`` -> ``(B, F)``; ``head`` -> ``(B, n_outputs)`` raw outputs
whose meaning (mean, scale, Cholesky entries, logits) the likelihood defines.

The split matters for MC dropout: when :attr:`Network.dropout_in_head_only` is true the backbone
is deterministic in eval mode, so it can run once and the head ``T`` times.

Architectures (``arch``) and their options (defaults in brackets):

* ``cmd_cnn``: ``hidden`` [16], ``dropout`` [0.2], ``max_channels`` [512], ``pool`` [conv | avg],
  ``norm`` [batch | none], ``activation`` [leaky_relu | gelu | silu]
  (:class:`~cosmoinfer.models.backbones.CMDBackbone`; head: dropout, FC(F -> F/2), LeakyReLU,
  dropout, FC(F/2 -> n_outputs), as in CMD).
* ``resnet``: ``depth`` [[2, 2, 2, 2]], ``width`` [16], ``max_channels`` [512], ``dropout`` [0.2],
  ``dropout_in_blocks`` [false], ``head_hidden`` [F]
  (:class:`~cosmoinfer.models.backbones.ResNetBackbone`; head as for cmd_cnn with ``head_hidden``).
* ``ps_mlp``: ``n_bins`` [16], ``overdensity`` [true], ``k_max`` [nyquist | corner], ``include_mean`` [false],
  ``hidden`` [128], ``n_layers`` [2], ``dropout`` [0.2]
  (:class:`~cosmoinfer.models.power_spectrum_net.PowerSpectrumBackbone`; head: ``n_layers`` x
  (FC, LeakyReLU, dropout), FC -> n_outputs).

Bayesian head (every architecture): ``bayesian_head`` [false] makes the head's linear layers
mean-field variational (:mod:`cosmoinfer.models.bayesian`), with prior ``N(0, bayes_prior_std^2)``
[1.0] and initial posterior standard deviation ``bayes_init_std`` [1e-3]; trained on the ELBO,
evaluated with ``evaluator=bnn``. Absent in older checkpoints, which load as plain heads.

Common options: ``init`` [kaiming_normal | xavier | lecun | pytorch] (see
:mod:`cosmoinfer.models.init`), ``init_out_scale`` [0.1] (factor on the head's last layer
weights after init, so raw outputs start near 0), ``channels_last`` [false] (store conv weights,
and convert inputs, in ``torch.channels_last`` memory format: faster convolutions on recent GPUs
with AMP), ``view_average`` [false] (the backbone's features averaged over the 8 rotations and
flips of the map: an invariant network at 8x the backbone's cost, whose head sees one feature vector
per map, the same in training and evaluation; test-time augmentation adds nothing to it),
``head_activation`` [leaky_relu | gelu | silu] (the head's hidden layers; absent in older checkpoints:
leaky_relu). On grf power spectra a flow head with silu was 0.070 nats (expected KL) from the exact
posterior, with leaky_relu 0.096 (same seed, features and fit; benchmarks/RESULTS.md).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from cosmoinfer.data.transforms import dihedral
from cosmoinfer.errors import InputError
from cosmoinfer.models.backbones import (
    CMDBackbone,
    ResNetBackbone,
    activation_module,
    check_activation,
    has_dropout,
)
from cosmoinfer.models.bayesian import BayesLinear, bayes_layers, network_kl
from cosmoinfer.models.init import init_weights
from cosmoinfer.models.power_spectrum_net import PowerSpectrumBackbone


class MLPHead(nn.Module):
    """Fully connected head ``(B, in_features) -> (B, n_outputs)``.

    ``[Dropout] -> (Linear -> activation -> Dropout) x len(hidden) -> Linear``; the leading
    dropout on the features is applied when ``input_dropout`` (CMD drops the flattened features).
    The last layer has no activation: its outputs are the likelihood's raw outputs. ``activation``:
    ``"leaky_relu"`` (slope 0.2, CMD), ``"gelu"`` or ``"silu"``; a flow head's parameters are smooth
    functions of the features with a smooth one.
    ``bayesian``: every linear layer is a mean-field :class:`~cosmoinfer.models.bayesian.BayesLinear`
    with prior ``N(0, prior_std^2)`` and initial posterior standard deviation ``init_std``.
    """

    def __init__(self, in_features: int, hidden: Sequence[int], n_outputs: int, dropout: float = 0.0,
                 input_dropout: bool = False, bayesian: bool = False, prior_std: float = 1.0,
                 init_std: float = 1e-3, activation: str = "leaky_relu"):
        super().__init__()

        def linear(i: int, o: int) -> nn.Linear:
            return BayesLinear(i, o, prior_std=prior_std, init_std=init_std) if bayesian else nn.Linear(i, o)

        if not 0.0 <= dropout < 1.0:
            raise InputError(None, f"model.dropout must be in [0, 1), got {dropout}")
        check_activation(activation, "model.head_activation")
        layers: list[nn.Module] = []
        if input_dropout and dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = in_features
        for h in hidden:
            layers += [linear(width, int(h)), activation_module(activation)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = int(h)
        layers.append(linear(width, n_outputs))
        self.n_outputs = int(n_outputs)
        self.net = nn.Sequential(*layers)

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features)


class Network(nn.Module):
    """``backbone: (B,C,H,W) -> (B,F)`` features; ``head: (B,F) -> (B,n_outputs)`` raw outputs.

    Attributes: ``arch`` (name), ``hparams`` (the resolved options of :func:`build_network`),
    ``n_features`` (F), ``n_outputs``, ``channels_last``.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, arch: str = "custom", hparams: dict | None = None,
                 channels_last: bool = False, view_average: bool = False):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.arch = arch
        self.hparams = dict(hparams or {})
        self.n_features = getattr(backbone, "n_features", None)
        self.n_outputs = getattr(head, "n_outputs", None)
        self.channels_last = bool(channels_last)
        self.view_average = bool(view_average)
        self.backbone_frozen = False
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    def freeze_backbone(self) -> None:
        """Fix the backbone: no gradients, and eval mode even when the network is put in train mode.

        BatchNorm then normalises with its running statistics and dropout is off in the backbone, so a
        head trained on top sees the features of evaluation (``transfer.freeze``).
        """
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.backbone_frozen = True
        self.backbone.eval()

    def train(self, mode: bool = True) -> "Network":
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.train(False)
        return self

    def forward(self, x: Tensor) -> Tensor:
        """Normalised maps ``(B, C, H, W)`` -> raw likelihood outputs ``(B, n_outputs)``."""
        return self.head(self.features(x))

    def features(self, x: Tensor) -> Tensor:
        """Backbone features ``(B, F)``; with ``view_average`` the mean over the map's 8 dihedral views."""
        if self.view_average:
            b = x.shape[0]
            x = torch.cat([dihedral(x, k) for k in range(8)])  # (8B, C, H, W): view-major
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        h = self.backbone(x)
        return h.reshape(8, b, -1).mean(0) if self.view_average else h

    @property
    def is_bayesian(self) -> bool:
        """True if the network has mean-field variational layers (``model.bayesian_head=true``)."""
        return bool(bayes_layers(self))

    def kl(self) -> Tensor:
        """KL divergence (nats) of the variational weights from their prior; 0 for a plain network."""
        return network_kl(self)

    @property
    def dropout_in_head_only(self) -> bool:
        """True if the backbone holds no dropout layer (MC dropout may run it once, the head T times)."""
        return not has_dropout(self.backbone)

    def set_input_stats(self, mean, std, log) -> None:
        """Pass the input normalisation (``mean``, ``std``, ``log``, each ``(C,)``) to the backbone if it uses it."""
        if hasattr(self.backbone, "set_input_stats"):
            self.backbone.set_input_stats(mean, std, log)


def evaluation_views(network: nn.Module, x: Tensor, tta: bool) -> list[Tensor]:
    """The inputs a map's prediction is formed from: ``x (B, C, H, W)``'s 8 dihedral views with test-time
    augmentation (``tta``), unless the network averages its features over them itself
    (``model.view_average``: invariant already, its 8 views would be one), else ``[x]``.

    The evaluator (:class:`~cosmoinfer.uncertainty.predictor.Predictor`) and the width scale fitted on
    the validation maps (:func:`~cosmoinfer.training.width_refit.fit_val_scale`) both use it, so the
    scale is fitted on the predictive the evaluator forms.
    """
    n = n_evaluation_views(network, tta)
    return [dihedral(x, k) for k in range(n)] if n > 1 else [x]


def n_evaluation_views(network: nn.Module, tta: bool) -> int:
    """How many views :func:`evaluation_views` forms a prediction from: 8 or 1."""
    return 8 if tta and not getattr(network, "view_average", False) else 1


def _as_list(v: Any) -> Any:
    """OmegaConf ``ListConfig`` / tuples -> plain list; scalars unchanged."""
    if isinstance(v, (str, bytes)) or not hasattr(v, "__iter__"):
        return v
    return [x for x in v]


#: Options each architecture accepts, with their defaults.
ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "cmd_cnn": {"hidden": 16, "dropout": 0.2, "max_channels": 512, "pool": "conv", "norm": "batch",
                "activation": "leaky_relu"},
    "resnet": {"depth": [2, 2, 2, 2], "width": 16, "max_channels": 512, "dropout": 0.2,
               "dropout_in_blocks": False, "head_hidden": None},
    "ps_mlp": {"n_bins": 16, "overdensity": True, "k_max": "nyquist", "include_mean": False, "hidden": 128,
               "n_layers": 2, "dropout": 0.2},
}


#: Options of every architecture for a Bayesian head (absent in older checkpoints: a plain head).
BAYES_DEFAULTS: dict[str, Any] = {"bayesian_head": False, "bayes_prior_std": 1.0, "bayes_init_std": 1e-3}
#: options added after the first checkpoints were written: absent in a stored config means this value
LATER_DEFAULTS: dict[str, Any] = {**BAYES_DEFAULTS, "view_average": False, "head_activation": "leaky_relu"}


def build_network(arch: str, in_channels: int, grid: int, n_outputs: int, init: str = "kaiming_normal",
                  channels_last: bool = False, init_out_scale: float = 0.1, bayesian_head: bool = False,
                  bayes_prior_std: float = 1.0, bayes_init_std: float = 1e-3, view_average: bool = False,
                  head_activation: str = "leaky_relu", **kwargs: Any) -> Network:
    """Build ``arch`` (``cmd_cnn`` | ``resnet`` | ``ps_mlp``) for ``(B, in_channels, grid, grid)`` inputs.

    ``n_outputs``: raw outputs the likelihood needs (``likelihood.n_outputs``). ``kwargs``: the
    architecture's options (module docstring); an unknown option raises
    :class:`~cosmoinfer.errors.InputError` naming the valid ones. Weights are initialised with
    ``init``, then the head's output layer is multiplied by ``init_out_scale`` so that raw outputs
    start small (mean ~ 0, scale ~ softplus(0)): the Gaussian NLL then trains the mean instead of
    first inflating sigma (1.0 keeps the plain scheme). The modules are converted to channels-last
    memory format if ``channels_last``.
    """
    if arch not in ARCH_DEFAULTS:
        raise InputError(None, f"model.arch: unknown architecture {arch!r}; choose one of {', '.join(ARCH_DEFAULTS)}")
    unknown = sorted(set(kwargs) - set(ARCH_DEFAULTS[arch]))
    if unknown:
        valid = ", ".join([*ARCH_DEFAULTS[arch], "init", "init_out_scale", "channels_last", *LATER_DEFAULTS])
        raise InputError(None, f"model: unknown option(s) {', '.join(unknown)} for arch {arch}; valid options: {valid}")
    if int(in_channels) < 1 or int(n_outputs) < 1:
        raise InputError(None, f"model: need in_channels >= 1 and n_outputs >= 1, got {in_channels}, {n_outputs}")
    o = {**ARCH_DEFAULTS[arch], **{k: _as_list(v) for k, v in kwargs.items()}}
    c, g, n = int(in_channels), int(grid), int(n_outputs)
    bayes = {"bayesian": bool(bayesian_head), "prior_std": float(bayes_prior_std), "init_std": float(bayes_init_std),
             "activation": str(head_activation)}

    if arch == "cmd_cnn":
        backbone = CMDBackbone(c, g, hidden=int(o["hidden"]), max_channels=o["max_channels"], pool=o["pool"],
                               norm=str(o["norm"]), activation=str(o["activation"]))
        f = backbone.n_features
        head = MLPHead(f, [max(f // 2, 1)], n, dropout=float(o["dropout"]), input_dropout=True, **bayes)
    elif arch == "resnet":
        backbone = ResNetBackbone(c, g, depth=o["depth"], width=int(o["width"]), max_channels=o["max_channels"],
                                  dropout=float(o["dropout"]), dropout_in_blocks=bool(o["dropout_in_blocks"]))
        f = backbone.n_features
        hh = f if o["head_hidden"] is None else int(o["head_hidden"])
        head = MLPHead(f, [hh], n, dropout=float(o["dropout"]), input_dropout=True, **bayes)
    else:
        backbone = PowerSpectrumBackbone(c, g, n_bins=int(o["n_bins"]), overdensity=o["overdensity"],
                                         k_max=str(o["k_max"]), include_mean=bool(o["include_mean"]))
        head = MLPHead(backbone.n_features, [int(o["hidden"])] * int(o["n_layers"]), n,
                       dropout=float(o["dropout"]), input_dropout=False, **bayes)
    init_weights(backbone, init)
    init_weights(head, init)
    with torch.no_grad():
        head.net[-1].weight.mul_(float(init_out_scale))
    hparams = {"arch": arch, "in_channels": c, "grid": g, "n_outputs": n, "init": init,
               "channels_last": bool(channels_last), "init_out_scale": float(init_out_scale), **o}
    if bayesian_head:
        hparams.update(bayesian_head=True, bayes_prior_std=float(bayes_prior_std), bayes_init_std=float(bayes_init_std))
    if view_average:
        hparams["view_average"] = True
    if head_activation != LATER_DEFAULTS["head_activation"]:
        hparams["head_activation"] = str(head_activation)
    return Network(backbone, head, arch=arch, hparams=hparams, channels_last=bool(channels_last),
                   view_average=bool(view_average))


__all__ = ["Network", "MLPHead", "build_network", "evaluation_views", "ARCH_DEFAULTS", "BAYES_DEFAULTS", "LATER_DEFAULTS"]
