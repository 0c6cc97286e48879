"""Gaussian random field maps with the projected spectrum of a slab: the case with an exact likelihood.

Each map is the mean density contrast of a slab of thickness ``Ls`` in a periodic box of side ``L``
(Mpc/h), drawn as a 2D Gaussian field whose spectrum is :func:`~cosmoinfer.simulators.power.slab_power_2d`,
plus optional white pixel noise. The field on the N x N pixel grid is *defined* by its pixel-unit
spectrum (no pixel window, no aliasing):

    X = fft2(x),   E|X_k|^2 = N^2 P_k,   P_k = P2D(|k|) / dx^2 + noise_std^2,   dx = L / N,

so white noise of variance ``s^2`` has ``P_k = s^2``. The signal has no ``k = 0`` mode (zero-mean
maps); likelihoods leave ``k = 0`` out. The 15 maps of one simulation are independent draws (the
CMD layout has 15 maps per simulation; here they share only the parameters).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.sparse

from cosmoinfer.simulators.power import slab_power_2d

MAPS_PER_SIM = 15


@dataclass(frozen=True, eq=False)
class Rings:
    """The modes of an N x N FFT grid grouped by ``|k|^2`` (in units of the fundamental, squared).

    Attributes (``R`` rings, ``k = 0`` excluded):
        k2: (R,) int, distinct ``kx^2 + ky^2`` (integer mode numbers), ascending.
        count: (R,) int, how many modes of the *full* grid lie on each ring (sums to N^2 - 1).
        index_full: (N, N) int, ring of each full-grid mode, -1 at ``k = 0``.
        index_half: (N, N//2+1) int, ring of each ``rfft2`` mode, -1 at ``k = 0``.
        weight_half: (N, N//2+1) float, how many full-grid modes each ``rfft2`` mode stands for
            (2, except 1 for the self-conjugate columns ``ky = 0`` and ``ky = N/2``).
    """

    n: int
    k2: np.ndarray
    count: np.ndarray
    index_full: np.ndarray
    index_half: np.ndarray
    weight_half: np.ndarray

    @classmethod
    def for_grid(cls, n: int) -> "Rings":
        m = np.fft.fftfreq(n) * n
        k2_full = np.rint(m[:, None] ** 2 + m[None, :] ** 2).astype(np.int64)
        k2, inv = np.unique(k2_full, return_inverse=True)
        inv = inv.reshape(n, n) - 1  # ring 0 of np.unique is k2 = 0
        count = np.bincount(inv[inv >= 0].ravel(), minlength=len(k2) - 1)
        half = inv[:, : n // 2 + 1]
        weight = np.full(half.shape, 2.0)
        weight[:, 0] = 1.0
        if n % 2 == 0:
            weight[:, n // 2] = 1.0
        return cls(n, k2[1:], count, inv, half.copy(), weight)

    @cached_property
    def _scatter(self):
        """Sparse (R, N*(N//2+1)) matrix summing weighted ``rfft2`` powers into rings."""
        idx = self.index_half.ravel()
        keep = np.flatnonzero(idx >= 0)
        return scipy.sparse.csr_matrix(
            (self.weight_half.ravel()[keep], (idx[keep], keep)), shape=(len(self.k2), idx.size)
        )

    def ring_sums(self, maps: np.ndarray) -> np.ndarray:
        """``Q_r = sum_{k in ring r} |X_k|^2`` over the full grid; maps ``(..., N, N)`` -> ``(..., R)``.

        Computed from ``rfft2`` with the half-plane weights (each non-self-conjugate mode stands
        for itself and its conjugate partner).
        """
        maps = np.asarray(maps)
        lead = maps.shape[:-2]
        flat = maps.reshape(-1, *maps.shape[-2:])
        out = np.empty((flat.shape[0], len(self.k2)))
        for i in range(0, flat.shape[0], 1024):  # chunks keep the complex FFT small
            x = np.fft.rfft2(flat[i : i + 1024].astype(np.float64))
            p = (x.real**2 + x.imag**2).reshape(x.shape[0], -1)
            out[i : i + 1024] = (self._scatter @ p.T).T
        return out.reshape(*lead, len(self.k2))


class GRFSimulator:
    """2D Gaussian random fields with the projected slab spectrum of a CAMELS-like box.

    Args:
        grid: pixels per side N.
        box_size: box side L in Mpc/h (CAMELS: 25).
        slab_thickness: slab thickness Ls in Mpc/h (CAMELS: 5).
        noise_std: standard deviation of white noise added to each pixel (units of the contrast).
    """

    name = "grf"
    suites = ("GRF",)
    fields = ("delta",)
    positive = {"delta": False}
    maps_per_sim = MAPS_PER_SIM

    def __init__(
        self,
        grid: int = 64,
        box_size: float = 25.0,
        slab_thickness: float = 5.0,
        noise_std: float = 0.0,
        suite: str = "GRF",
    ):
        if grid < 4:
            raise ValueError(f"grid must be >= 4, got {grid}")
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        if suite not in self.suites:
            raise ValueError(f"unknown suite {suite!r} for grf; known: {list(self.suites)}")
        self.grid = int(grid)
        self.box_size = float(box_size)
        self.slab_thickness = float(slab_thickness)
        self.noise_std = float(noise_std)
        self.suite = suite
        self.pixel_size = self.box_size / self.grid
        self.rings = Rings.for_grid(self.grid)
        slab_power_2d(1.0, 0.3, 0.8, self.box_size, self.slab_thickness)  # validates the geometry

    def config(self) -> dict:
        """The constructor arguments, for manifests."""
        return dict(
            name=self.name,
            grid=self.grid,
            box_size=self.box_size,
            slab_thickness=self.slab_thickness,
            noise_std=self.noise_std,
        )

    @cached_property
    def ring_k(self) -> np.ndarray:
        """(R,) wavenumber of each ring in h/Mpc."""
        return 2 * np.pi / self.box_size * np.sqrt(self.rings.k2)

    def signal_ring_power(self, Omega_m) -> np.ndarray:
        """Pixel-unit signal spectrum per ring at ``sigma_8 = 1``: ``(...) -> (..., R)``.

        The signal spectrum scales as ``sigma_8^2``, so ``P_r = sigma_8^2 B_r(Omega_m) + noise_std^2``.
        """
        Om = np.asarray(Omega_m, dtype=np.float64)[..., None]
        p2d = slab_power_2d(self.ring_k, Om, 1.0, self.box_size, self.slab_thickness)
        return p2d / self.pixel_size**2

    def ring_power(self, Omega_m, sigma_8) -> np.ndarray:
        """Pixel-unit spectrum per ring, noise included: broadcast(``Omega_m``, ``sigma_8``) -> (..., R)."""
        s8 = np.asarray(sigma_8, dtype=np.float64)[..., None]
        return s8**2 * self.signal_ring_power(Omega_m) + self.noise_std**2

    def power_spectrum(self, Omega_m, sigma_8) -> np.ndarray:
        """Pixel-unit spectrum ``P_k`` on the full FFT grid, shape ``(..., N, N)`` (``np.fft`` order).

        ``E|fft2(x)_k|^2 = N^2 P_k``; noise included. At ``k = 0`` it holds only the noise power
        (maps have no mean signal; likelihoods exclude that mode).
        """
        pr = self.ring_power(Omega_m, sigma_8)
        idx = self.rings.index_full
        out = pr[..., np.maximum(idx, 0)]
        out[..., idx < 0] = self.noise_std**2
        return out

    def _signal_amplitude_half(self, Omega_m, sigma_8) -> np.ndarray:
        b = self.signal_ring_power(Omega_m) * float(sigma_8) ** 2
        idx = self.rings.index_half
        return np.where(idx >= 0, np.sqrt(b[np.maximum(idx, 0)]), 0.0)

    def simulate(self, theta, rng: np.random.Generator, n_maps: int = MAPS_PER_SIM) -> np.ndarray:
        """Maps of one simulation: float32 ``(n_maps, N, N)``, contrast units, independent draws.

        ``theta`` holds ``(Omega_m, sigma_8, ...)`` (the six CMD parameters or just the first two;
        the rest are ignored).
        """
        Om, s8 = float(theta[0]), float(theta[1])
        amp = self._signal_amplitude_half(Om, s8)
        w = rng.standard_normal((n_maps, self.grid, self.grid))
        x = np.fft.irfft2(np.fft.rfft2(w) * amp, s=(self.grid, self.grid))
        if self.noise_std > 0:
            x += self.noise_std * rng.standard_normal(x.shape)
        return x.astype(np.float32)

    def simulate_fields(self, theta, rng: np.random.Generator, fields=("delta",)) -> dict[str, np.ndarray]:
        """Uniform interface with the multifield simulators: ``{"delta": (15, N, N) float32}``."""
        for f in fields:
            if f not in self.fields:
                raise ValueError(f"unknown field {f!r} for grf; known: {list(self.fields)}")
        return {"delta": self.simulate(theta, rng)}
