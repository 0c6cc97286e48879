"""Map normalisation, dihedral augmentation and parameter scaling.

Maps: per channel, optionally ``log10(x + offset)``, then ``(x - mean) / std`` with ``mean`` and
``std`` computed over the *training* maps only, streamed block by block. Maps are never
standardised one by one: that would throw away their amplitude, i.e. sigma_8.

Parameters: scaled to ``[0, 1]`` by the prior (log space for log-uniform ones), see
:mod:`cosmoinfer.data.priors`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from cosmoinfer.errors import InputError


@dataclass
class Normalizer:
    """Per-channel input transform. Arrays have shape ``(C,)``."""

    log: np.ndarray
    offset: np.ndarray
    mean: np.ndarray
    std: np.ndarray

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """``(..., C, H, W)`` physical maps -> normalised float32."""
        c = (slice(None),) + (None, None)
        x = np.asarray(x, dtype=np.float32)
        x = np.where(self.log[c], np.log10(np.maximum(x + self.offset[c], 1e-30)), x)
        return ((x - self.mean[c]) / self.std[c]).astype(np.float32)

    def to_dict(self) -> dict:
        return {k: np.asarray(getattr(self, k)).tolist() for k in ("log", "offset", "mean", "std")}

    @classmethod
    def from_dict(cls, d: dict) -> "Normalizer":
        return cls(np.asarray(d["log"], dtype=bool), np.asarray(d["offset"], dtype=np.float32),
                   np.asarray(d["mean"], dtype=np.float32), np.asarray(d["std"], dtype=np.float32))


def fit_normalizer(source, train_indices: np.ndarray, log: Sequence[bool], offset: Sequence[float],
                   block: int = 256, check_indices: np.ndarray | None = None) -> Normalizer:
    """Stream over the maps once: validate them and fit mean/std on ``train_indices`` only.

    Every map in ``check_indices`` (default: all maps) is checked for NaN/inf and, in log
    channels, for values ``x + offset <= 0``; a bad map raises :class:`InputError` naming the
    file, the map index and the problem. Memory stays at one block of maps: at most ``block`` maps
    and at most about 32 MB of float64 per block (64 maps of 256^2 with one channel), since the
    float64 copies and their temporaries are several times the block's size.
    """
    log = np.asarray(log, dtype=bool)
    offset = np.asarray(offset, dtype=np.float64)
    n_ch = len(log)
    block = max(1, min(int(block), (32 << 20) // (8 * n_ch * int(source.grid) ** 2)))
    is_train = np.zeros(source.n_maps, dtype=bool)
    is_train[np.asarray(train_indices, dtype=np.int64)] = True
    check = np.zeros(source.n_maps, dtype=bool)
    check[np.arange(source.n_maps) if check_indices is None else np.asarray(check_indices)] = True
    check |= is_train
    count = np.zeros(n_ch)
    mean = np.zeros(n_ch)
    m2 = np.zeros(n_ch)
    for i0 in range(0, source.n_maps, block):
        i1 = min(i0 + block, source.n_maps)
        rows = np.flatnonzero(check[i0:i1])
        if rows.size == 0:
            continue
        x = source.read(i0, i1)[rows].astype(np.float64)  # (n, C, H, W)
        for c in range(n_ch):
            xc = x[:, c]
            finite = np.isfinite(xc).all(axis=(1, 2))
            if not finite.all():
                i = i0 + rows[np.flatnonzero(~finite)[0]]
                raise InputError(source.file_of(c), f"map {i} (field {source.fields[c]}) holds NaN or inf")
            if log[c]:
                low = (xc + offset[c]).min(axis=(1, 2))
                if (low <= 0).any():
                    k = np.flatnonzero(low <= 0)[0]
                    raise InputError(source.file_of(c), f"map {i0 + rows[k]} (field {source.fields[c]}) has "
                                     f"non-positive values (min {low[k] - offset[c]:.3g}) but the field is "
                                     f"log10-transformed; set data.log_offset or data.log_fields")
                x[:, c] = np.log10(xc + offset[c])
        train_rows = is_train[i0:i1][rows]
        if train_rows.any():
            xt = x[train_rows]
            n_b = xt.shape[0] * xt.shape[2] * xt.shape[3]
            mean_b = xt.mean(axis=(0, 2, 3))
            m2_b = ((xt - mean_b[None, :, None, None]) ** 2).sum(axis=(0, 2, 3))
            delta = mean_b - mean
            tot = count + n_b
            mean = mean + delta * n_b / tot
            m2 = m2 + m2_b + delta**2 * count * n_b / tot
            count = tot
    if count[0] == 0:
        raise InputError(getattr(source, "root", getattr(source, "path", None)), "no training maps to fit the normalisation")
    std = np.sqrt(m2 / count)
    std = np.where(std > 0, std, 1.0)
    return Normalizer(log, offset.astype(np.float32), mean.astype(np.float32), std.astype(np.float32))


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """Element ``k`` (0..7) of the dihedral group D4 applied to the last two axes of ``x``.

    ``k % 4`` quarter turns, then a transpose when ``k >= 4``. All 8 are symmetries of a periodic
    square map, so the label (the parameters) is unchanged.
    """
    x = torch.rot90(x, k % 4, dims=(-2, -1))
    return x.transpose(-2, -1) if k >= 4 else x
