"""MC-dropout masks that depend on the map, not on the batch it happens to sit in.

Torch's dropout draws its mask from a random stream that runs through the whole batch, so a map's
MC-dropout prediction would change with ``data.eval_batch_size``. :class:`MapKeyedDropout` swaps the
mask of every dropout layer of a network for one computed from a counter-based hash
(splitmix64) of ``(seed, member, pass, layer, map index, element)``: the same map gets the same
masks in any batch, on any device, and the views of one pass (test-time augmentation) share them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

_GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB


def _signed(c: int) -> int:
    return c - (1 << 64) if c >= 1 << 63 else c


def _srl(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's ``>>`` is arithmetic)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def splitmix64(z: torch.Tensor) -> torch.Tensor:
    """The splitmix64 finaliser on int64 tensors (wrapping arithmetic), elementwise."""
    z = z + _signed(_GOLDEN)
    z = (z ^ _srl(z, 30)) * _signed(_M1)
    z = (z ^ _srl(z, 27)) * _signed(_M2)
    return z ^ _srl(z, 31)


_ELEMENT_HASH: dict[tuple, torch.Tensor] = {}


def _element_hash(n: int, device: torch.device) -> torch.Tensor:
    key = (n, str(device))
    if key not in _ELEMENT_HASH:
        _ELEMENT_HASH[key] = splitmix64(torch.arange(n, dtype=torch.int64, device=device))
    return _ELEMENT_HASH[key]


def hashed_keep(key: int, maps: torch.Tensor, n_elements: int, p: float) -> torch.Tensor:
    """``(B, n_elements)`` bool mask, each entry kept with probability ``1 - p``.

    Entry ``(b, e)`` is a function of ``key``, the map index ``maps[b]`` and ``e`` only: the
    splitmix64 hashes of the map and of the element, combined and mixed once more
    (multiply-xorshift-multiply), compared on their top 24 bits.
    """
    base = splitmix64(splitmix64(maps.long()) ^ key)
    z = base[:, None] ^ _element_hash(n_elements, maps.device)[None, :]
    z.mul_(_signed(_M1))
    z.bitwise_xor_(_srl(z, 29))
    z.mul_(_signed(_M2))
    return _srl(z, 40) >= int(round(p * (1 << 24)))


def _key(*parts: int) -> int:
    """One int64 key from non-negative integers (numpy's SeedSequence mixing)."""
    v = int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1, np.uint64)[0])
    return _signed(v)


class MapKeyedDropout:
    """While active, the dropout layers of ``network`` (in train mode) use masks keyed by the map.

    Use as a context manager; before each forward call :meth:`set` with the pass number ``t``, the
    maps' indices ``(B,)`` in evaluation order, and, where the views of a pass should not share
    masks, a ``view`` number. ``nn.Dropout`` masks every element, ``nn.Dropout2d`` whole channels;
    kept units are scaled by ``1 / (1 - p)`` as torch does.
    """

    def __init__(self, network: nn.Module, seed: int, member: int):
        self.layers = [m for m in network.modules() if isinstance(m, (nn.Dropout, nn.Dropout1d, nn.Dropout2d,
                                                                      nn.Dropout3d))]
        self.seed, self.member = int(seed), int(member)
        self.handles: list = []
        self.t, self.view, self.maps = 0, 0, None

    def set(self, t: int, maps: torch.Tensor, view: int = 0) -> None:
        self.t, self.maps, self.view = int(t), maps, int(view)

    def _hook(self, index: int):
        def hook(mod, inputs, output):
            if not mod.training or mod.p == 0:
                return output
            x = inputs[0]
            channel = not isinstance(mod, nn.Dropout)
            shape = (x.shape[0], x.shape[1]) + (1,) * (x.dim() - 2) if channel else tuple(x.shape)
            n = 1
            for s in shape[1:]:
                n *= s
            keep = hashed_keep(_key(self.seed, self.member, self.t, index, self.view), self.maps.to(x.device), n,
                               float(mod.p)).reshape(shape).to(x.dtype)
            return x * keep / (1.0 - mod.p) if mod.p < 1 else x * 0
        return hook

    def __enter__(self):
        self.handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(self.layers)]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles = []
