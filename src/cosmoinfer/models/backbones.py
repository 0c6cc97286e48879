"""Convolutional backbones: normalised maps ``(B, C, H, W)`` -> feature vectors ``(B, F)``.

Both backbones treat maps as periodic (``padding_mode="circular"`` everywhere), use BatchNorm
and LeakyReLU(0.2), and accept any number of input channels (one per field).

* :class:`CMDBackbone` -- the CAMELS Multifield Dataset reference family (Villaescusa-Navarro
  et al. 2022, ``model_o3_err``): per stage two 3x3 convs and one 2x2 stride-2 conv, widths
  ``hidden * 2**(stage+1)`` (capped at ``max_channels``), down to a 4x4 map, then either a 4x4
  valid conv to a 1x1 map (``pool="conv"``, the CMD choice) or a 3x3 conv and a global average
  (``pool="avg"``, exactly invariant to circular shifts by the total stride). No dropout: in CMD
  dropout lives only in the two fully connected layers of the head.
* :class:`ResNetBackbone` -- a post-activation "basic block" ResNet (He et al. 2016) (two 3x3 convs +
  BatchNorm + skip, 1x1 projection where the shape changes), stride-2 at the start of every stage
  after the first, global average pool. ``dropout_in_blocks`` adds ``nn.Dropout2d`` between the
  two convs of each block (MC dropout then needs the whole network per sample).

Every stride-2 layer in both backbones is circularly equivariant: a circular shift of the input
by the total stride ``S`` shifts the last feature map by one pixel (:meth:`feature_map`).
"""

from __future__ import annotations

import math
from typing import Sequence

from torch import Tensor, nn

from cosmoinfer.errors import InputError
from cosmoinfer.models.init import LEAKY_SLOPE


def _conv3(cin: int, cout: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, padding_mode="circular", bias=bias)


#: Activations of the CMD backbone (``model.activation``) and of the heads (``model.head_activation``).
ACTIVATIONS = ("leaky_relu", "gelu", "silu")


def check_activation(name: str, key: str) -> str:
    """``name`` if it is one of :data:`ACTIVATIONS`, else an InputError naming the config ``key``."""
    if name not in ACTIVATIONS:
        raise InputError(None, f"{key}: {name!r} is not one of {', '.join(ACTIVATIONS)}")
    return name


def activation_module(name: str = "leaky_relu") -> nn.Module:
    if name == "gelu":
        return nn.GELU()
    if name == "silu":
        return nn.SiLU()
    return nn.LeakyReLU(LEAKY_SLOPE)


def _is_power_of_two(n: int) -> bool:
    return n >= 1 and (n & (n - 1)) == 0


class CMDBackbone(nn.Module):
    """CMD reference CNN trunk. Input ``(B, in_channels, grid, grid)``, output ``(B, n_features)``.

    ``grid`` must be a power of two >= 8 (CMD: 256; tested 32..256). The number of stride-2
    stages is ``log2(grid) - 2`` (down to 4x4), so the total stride is ``grid / 4``.
    ``hidden``: width knob; stage ``s`` has ``min(hidden * 2**(s+1), max_channels)`` channels and
    the output ``n_features = min(hidden * 2**(n_stages+1), max_channels)`` (CMD: 128 * hidden for
    grid 256; ``max_channels=None`` removes the cap). ``pool``: ``"conv"`` (CMD) or ``"avg"``.
    ``norm``: ``"batch"`` (CMD) or ``"none"`` (no normalisation layer: each map's prediction then
    never depends on the other maps of its batch, which keeps the amplitude of a Gaussian field,
    i.e. sigma_8, free of batch-statistics noise; see ``conf/experiment/grf_fisher.yaml``).
    ``activation``: ``"leaky_relu"`` (slope 0.2, CMD), ``"gelu"`` or ``"silu"``. A piecewise-linear
    activation followed by a global average measures a band's amplitude through ``E|y|``, which
    for a Gaussian field wastes ~12% of the information (the efficiency of the mean absolute
    deviation against the variance); smooth activations have a quadratic term and can measure
    the power ``E y^2`` itself.
    """

    def __init__(self, in_channels: int, grid: int, hidden: int = 16, max_channels: int | None = 512,
                 pool: str = "conv", norm: str = "batch", activation: str = "leaky_relu"):
        super().__init__()
        if norm not in ("batch", "none"):
            raise InputError(None, f"model.norm: {norm!r} is not batch or none")
        check_activation(activation, "model.activation")
        if not (_is_power_of_two(grid) and grid >= 8):
            raise InputError(None, f"model: cmd_cnn needs a map size that is a power of two >= 8, got grid={grid}")
        if pool not in ("conv", "avg"):
            raise InputError(None, f"model.pool: {pool!r} is not conv or avg")
        if hidden < 1:
            raise InputError(None, f"model.hidden must be >= 1, got {hidden}")
        cap = max_channels if max_channels is not None else math.inf
        self.n_stages = int(math.log2(grid)) - 2
        self.total_stride = 2**self.n_stages
        self.pool = pool

        def bn(c: int) -> nn.Module:
            return nn.BatchNorm2d(c) if norm == "batch" else nn.Identity()

        def act() -> nn.Module:
            return activation_module(activation)

        layers: list[nn.Module] = []
        cin = in_channels
        for s in range(self.n_stages):
            c = int(min(hidden * 2 ** (s + 1), cap))
            layers += [_conv3(cin, c)]
            if s > 0:  # CMD's very first conv has no BatchNorm
                layers += [bn(c)]
            layers += [act(),
                       _conv3(c, c), bn(c), act(),
                       nn.Conv2d(c, c, kernel_size=2, stride=2, padding=0, bias=True), bn(c), act()]
            cin = c
        self.stages = nn.Sequential(*layers)
        self.n_features = int(min(hidden * 2 ** (self.n_stages + 1), cap))
        if pool == "conv":
            # 4x4 valid convolution -> 1x1 map (CMD's C61 layer)
            self.reduce = nn.Sequential(nn.Conv2d(cin, self.n_features, kernel_size=4, stride=1, padding=0),
                                        bn(self.n_features), act())
        else:
            self.reduce = nn.Sequential(_conv3(cin, self.n_features), bn(self.n_features), act(),
                                        nn.AdaptiveAvgPool2d(1))

    def feature_map(self, x: Tensor) -> Tensor:
        """Last feature map before the reduction: ``(B, C_last, grid/S, grid/S)`` with ``S = total_stride``."""
        return self.stages(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.reduce(self.stages(x)).flatten(1)


class BasicBlock(nn.Module):
    """ResNet basic block: ``act(BN(conv3(act(BN(conv3(x))))) + skip(x))`` with circular padding.

    ``skip`` is the identity, or a 1x1 (strided) conv + BatchNorm when the channels or the
    resolution change. ``dropout2d > 0`` inserts ``nn.Dropout2d`` between the two convs.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1, dropout2d: float = 0.0):
        super().__init__()
        self.conv1 = _conv3(cin, cout, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act = activation_module()
        self.drop = nn.Dropout2d(dropout2d) if dropout2d > 0 else nn.Identity()
        self.conv2 = _conv3(cout, cout, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False),
                                      nn.BatchNorm2d(cout))
        else:
            self.skip = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.drop(self.act(self.bn1(self.conv1(x))))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.skip(x))


class ResNetBackbone(nn.Module):
    """Residual trunk. Input ``(B, in_channels, grid, grid)``, output ``(B, n_features)``.

    ``depth``: blocks per stage (a list, e.g. ``[2, 2, 2, 2]``) or a number of stages with two
    blocks each. Stage ``s`` has ``min(width * 2**s, max_channels)`` channels and (for ``s > 0``)
    halves the resolution, so ``grid`` must be divisible by ``2**(n_stages-1)``. A 3x3 stem conv
    maps the input to ``width`` channels. ``dropout_in_blocks`` with ``dropout > 0`` places
    ``nn.Dropout2d(dropout)`` inside every block. Output: global average of the last map, so
    ``n_features`` is the last stage's width.
    """

    def __init__(self, in_channels: int, grid: int, depth: int | Sequence[int] = (2, 2, 2, 2), width: int = 16,
                 max_channels: int | None = 512, dropout: float = 0.0, dropout_in_blocks: bool = False):
        super().__init__()
        blocks = [2] * int(depth) if isinstance(depth, (int, float)) else [int(d) for d in depth]
        if not blocks or min(blocks) < 1:
            raise InputError(None, f"model.depth: need >= 1 stage with >= 1 block each, got {depth}")
        if grid % 2 ** (len(blocks) - 1) != 0:
            raise InputError(None, f"model.depth: {len(blocks)} stages halve the map {len(blocks) - 1} times, "
                                   f"but grid={grid} is not divisible by {2 ** (len(blocks) - 1)}")
        cap = max_channels if max_channels is not None else math.inf
        p2d = float(dropout) if dropout_in_blocks else 0.0
        self.stem = nn.Sequential(_conv3(in_channels, width, bias=False), nn.BatchNorm2d(width), activation_module())
        stages: list[nn.Module] = []
        cin = width
        for s, n in enumerate(blocks):
            c = int(min(width * 2**s, cap))
            for i in range(n):
                stages.append(BasicBlock(cin, c, stride=2 if (s > 0 and i == 0) else 1, dropout2d=p2d))
                cin = c
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.n_features = cin
        self.total_stride = 2 ** (len(blocks) - 1)

    def feature_map(self, x: Tensor) -> Tensor:
        """Last feature map before the global average: ``(B, n_features, grid/S, grid/S)``."""
        return self.stages(self.stem(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.feature_map(x)).flatten(1)


def has_dropout(module: nn.Module) -> bool:
    """True if ``module`` contains any dropout layer (``nn.Dropout``, ``Dropout1d/2d/3d``, alpha dropout)."""
    kinds = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
    return any(isinstance(m, kinds) for m in module.modules())


__all__ = ["CMDBackbone", "ResNetBackbone", "BasicBlock", "has_dropout"]
