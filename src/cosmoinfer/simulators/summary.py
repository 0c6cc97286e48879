"""The power-spectrum summary statistic: binned auto and cross spectra of map overdensities.

For each map and channel the field is turned into a contrast, ``delta = M / mean(M) - 1`` for a
positive field (``overdensity=True``) or ``delta = M - mean(M)`` otherwise (e.g. GRF maps), with the
mean taken over that map. With ``D_c = fft2(delta_c)`` on an ``H x W`` map the pixel-unit spectra

    P_ab(k) = < Re(D_a(k) conj(D_b(k))) > / (H W)

are averaged over the modes of each ``|k|`` bin (white noise of variance ``s^2`` gives ``P = s^2``;
multiply by the pixel area ``(L / N)^2`` for (Mpc/h)^2). ``|k|`` is in units of the fundamental
mode ``2 pi / L``, and the ``n_bins`` bins are linear from the fundamental (1) to ``k_max``, both
included: the Nyquist frequency ``min(H, W) / 2`` (``k_max="nyquist"``, the usual choice; the
corner modes beyond it are left out) or the grid corner ``sqrt((H/2)^2 + (W/2)^2)``
(``k_max="corner"``: every mode of the FFT grid, about 21% more than Nyquist on a square map; for
fields defined on the grid, such as the ``grf`` maps, these modes carry information). The sum over
modes uses the ``rfft2`` half plane with each mode weighted by the number of full-plane modes it
stands for, so it equals the full-plane average.

Channel pairs are ordered as ``torch.triu_indices(C, C)``: ``(0,0), (0,1), ..., (0,C-1), (1,1), ...``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np
import torch

K_MAX = ("nyquist", "corner")


def _k_top(h: int, w: int, k_max: str) -> float:
    """Upper bin edge in units of the fundamental for an ``h x w`` map."""
    if k_max == "nyquist":
        return min(h, w) / 2
    if k_max == "corner":
        return float(np.hypot(h // 2, w // 2))
    raise ValueError(f"k_max must be one of {', '.join(K_MAX)}, got {k_max!r}")


def power_bin_edges(size: int, n_bins: int, k_max: str = "nyquist") -> np.ndarray:
    """Bin edges in units of the fundamental, ``(n_bins + 1,)``, linear from 1 to Nyquist (``size / 2``) or the corner."""
    return np.linspace(1.0, _k_top(size, size, k_max), n_bins + 1)


def power_bin_centers(size: int, n_bins: int, k_max: str = "nyquist") -> np.ndarray:
    """Bin centres in units of the fundamental, ``(n_bins,)``; times ``2 pi / L`` gives h/Mpc."""
    e = power_bin_edges(size, n_bins, k_max)
    return 0.5 * (e[1:] + e[:-1])


@lru_cache(maxsize=32)
def _binning(h: int, w: int, n_bins: int, k_max: str = "nyquist") -> tuple[torch.Tensor, np.ndarray]:
    """``(H * (W//2+1), n_bins)`` matrix averaging weighted half-plane powers into bins, and counts."""
    ky = np.fft.fftfreq(h) * h
    kx = np.fft.rfftfreq(w) * w
    k = np.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)
    weight = np.full(k.shape, 2.0)
    weight[:, 0] = 1.0
    if w % 2 == 0:
        weight[:, -1] = 1.0
    edges = np.linspace(1.0, _k_top(h, w, k_max), n_bins + 1)
    idx = np.digitize(k, edges[1:-1])  # 0 .. n_bins-1 for k in range
    inside = (k >= edges[0]) & (k <= edges[-1])
    counts = np.bincount(idx[inside], weights=weight[inside], minlength=n_bins)
    if np.any(counts == 0):
        raise ValueError(
            f"n_bins={n_bins} leaves empty |k| bins for a {h}x{w} map; use fewer bins "
            f"(at most about {max(1, int(_k_top(h, w, k_max)) - 1)})"
        )
    m = np.zeros((k.size, n_bins))
    flat = np.flatnonzero(inside.ravel())
    m[flat, idx.ravel()[flat]] = weight.ravel()[flat] / counts[idx.ravel()[flat]]
    return torch.from_numpy(m), counts


def binned_power_spectrum(
    maps: torch.Tensor, n_bins: int, overdensity: bool | Sequence[bool] = True, k_max: str = "nyquist"
) -> torch.Tensor:
    """Binned auto and cross power spectra of each map's channels.

    Args:
        maps: ``(B, C, H, W)`` tensor (any float dtype, any device).
        n_bins: number of linear ``|k|`` bins from the fundamental to ``k_max``.
        overdensity: per channel (or one for all), ``True`` for ``M / mean(M) - 1`` (positive fields),
            ``False`` for ``M - mean(M)``.
        k_max: ``"nyquist"`` (bins up to ``min(H, W) / 2``) or ``"corner"`` (every mode of the grid).

    Returns:
        ``(B, C (C + 1) / 2, n_bins)`` float32 tensor of pixel-unit spectra, pairs in
        ``triu_indices`` order. No gradient is tracked.
    """
    if maps.ndim != 4:
        raise ValueError(f"maps must be (B, C, H, W), got shape {tuple(maps.shape)}")
    B, C, H, W = maps.shape
    if isinstance(overdensity, bool):
        overdensity = [overdensity] * C
    if len(overdensity) != C:
        raise ValueError(f"overdensity has {len(overdensity)} entries for {C} channels")
    with torch.no_grad():
        x = maps.to(torch.float64)
        mean = x.mean(dim=(-2, -1), keepdim=True)
        od = torch.tensor(list(overdensity), dtype=torch.bool, device=x.device).view(1, C, 1, 1)
        delta = torch.where(od, x / mean - 1.0, x - mean)
        f = torch.fft.rfft2(delta)  # (B, C, H, W//2+1)
        f = f.reshape(B, C, -1)
        i, j = torch.triu_indices(C, C)
        cross = (f[:, i] * f[:, j].conj()).real / (H * W)  # (B, pairs, modes)
        m, _ = _binning(H, W, n_bins, k_max)
        out = cross @ m.to(x.device)
    return out.to(torch.float32)


def binned_power_spectrum_np(
    maps: np.ndarray, n_bins: int, overdensity: bool | Sequence[bool] = True, k_max: str = "nyquist"
) -> np.ndarray:
    """NumPy wrapper of :func:`binned_power_spectrum`: ``(B, C, H, W)`` -> ``(B, C(C+1)/2, n_bins)``."""
    return binned_power_spectrum(torch.from_numpy(np.ascontiguousarray(maps)), n_bins, overdensity, k_max).numpy()
