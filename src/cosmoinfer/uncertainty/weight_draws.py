"""BNN weight draws keyed by ``(seed, member, pass, layer)``, the twin of the MC-dropout masks.

One pass of the ``bnn`` evaluator is one network: a single draw of every variational weight
(:class:`~cosmoinfer.models.bayesian.BayesLinear`) shared by every map of the pass and by its TTA
views. The standard-normal noise of a layer comes from a CPU ``torch.Generator`` seeded by a hash
of ``(seed, member, pass, layer)``, so the draws depend on neither the batch size nor the device,
and the caller's random state is untouched.
"""

from __future__ import annotations

import torch
from torch import nn

from cosmoinfer.models.bayesian import bayes_layers
from cosmoinfer.uncertainty.dropout_masks import _key


class KeyedWeightDraws:
    """While active, the Bayesian layers of ``network`` (in eval mode) use draw ``t`` after :meth:`set`.

    Use as a context manager; on exit the layers are back on their means.
    """

    def __init__(self, network: nn.Module, seed: int, member: int):
        self.layers = bayes_layers(network)
        self.seed, self.member = int(seed), int(member)
        self.t: int | None = None

    def set(self, t: int) -> None:
        """Draw ``t``'s weights in every layer (a no-op when ``t`` is already set)."""
        if self.t == int(t):
            return
        self.t = int(t)
        for i, layer in enumerate(self.layers):
            gen = torch.Generator().manual_seed(_key(self.seed, self.member, self.t, i) & 0x7FFFFFFFFFFFFFFF)
            ew = torch.randn(layer.weight.shape, generator=gen, dtype=torch.float64)
            eb = None if layer.bias is None else torch.randn(layer.bias.shape, generator=gen, dtype=torch.float64)
            dev = layer.weight.device
            layer.set_noise(ew.to(dev, layer.weight.dtype), None if eb is None else eb.to(dev, layer.weight.dtype))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for layer in self.layers:
            layer.set_noise(None)
        self.t = None
