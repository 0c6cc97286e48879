"""CAMELS-like multifield maps: a 3D lognormal box, feedback in Fourier space, projected in slabs.

One simulation is one periodic box of side ``L`` (Mpc/h) on an ``N^3`` grid:

1. A Gaussian linear density field with the EH98 no-wiggle spectrum ``P3D(k; Omega_m, sigma_8)``
   (:func:`~cosmoinfer.simulators.power.linear_power`), drawn as white noise filtered in Fourier
   space (so the box is exactly periodic and the ``k = 0`` mode is zero).
2. The lognormal field ``g = a * (W_R * delta_L)``: the linear field smoothed with a Gaussian of
   radius ``R = lognormal_smoothing`` (Mpc/h) and scaled by ``a = lognormal_amplitude``; these two
   knobs set how non-Gaussian the matter is (``var(g)`` ranges over about 0.7 to 5 for the
   CAMELS prior at the defaults). Dark matter is ``rho_dm = exp(g - var(g)/2)`` (mean one).
3. Gas: the same Gaussian field with the feedback suppression applied in Fourier space,
   ``g_gas_k = g_k sqrt(S(k; A_SN1, A_AGN1, A_SN2, A_AGN2))`` (``S`` suppresses *power*), then
   ``rho_gas = exp(g_gas - var(g_gas)/2)``.
4. Total matter ``rho_m = (1 - f_b) rho_dm + f_b rho_gas`` with ``f_b = Omega_b / Omega_m``;
   temperature ``T = T0 rho_gas^alpha`` (3D, kelvin); stars ``rho_star = eps rho_gas u^2 / (1 + u^2)``
   with ``u = rho_gas / rho_th`` (a soft star-formation threshold, positive everywhere).
5. Projection: the box is cut into ``n_slabs`` slabs of thickness ``L / n_slabs`` along each of the
   three axes (cells straddling a slab boundary are shared in proportion), giving ``3 n_slabs`` maps
   of the slab means, axis-major: maps ``0..n_slabs-1`` project along axis 0 (map axes: 1, 2),
   the next ``n_slabs`` along axis 1 (map axes: 0, 2), the last along axis 2 (map axes: 0, 1).

Map units (CMD-like, positive): ``Mtot``, ``Mgas``, ``Mstar`` are surface densities in
(Msun/h)/(Mpc/h)^2, ``rho_crit Omega_x Ls * slab-mean(rho)`` with ``Omega_x`` = ``Omega_m``,
``Omega_b``, ``Omega_b``; ``T`` is the gas-mass-weighted slab temperature in kelvin.

The feedback suppression has a Schneider & Teyssier-like shape,

    S(k) = 1 - D x^beta / (1 + x^beta),   x = k / k_s,

equal to 1 on large scales and ``1 - D`` on small ones, whose scale ``k_s`` and depth ``D`` follow
``ln A_AGN1`` and ``ln A_SN1`` (and, more weakly, ``ln A_AGN2``, ``ln A_SN2``) with coefficients
that differ between the suites ``SynthTNG`` and ``SynthSIMBA``. **These mappings are our own
modelling choice, not fitted to CAMELS**; their only purpose is that the parameters leave
distinct, suite-dependent imprints, so cross-suite robustness can be tested.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cached_property

import numpy as np

from cosmoinfer.simulators.power import OMEGA_B, linear_power

RHO_CRIT = 2.775e11  # critical density, (Msun/h) / (Mpc/h)^3


@dataclass(frozen=True)
class FeedbackModel:
    """One suite's mapping from ``(A_SN1, A_AGN1, A_SN2, A_AGN2)`` to the gas, T and star fields.

    ``ln k_s = ln ks0 + ks_agn ln A_AGN1 + ks_sn ln A_SN1`` (k_s in h/Mpc);
    ``D = logistic(d0 + d_agn ln A_AGN1 + d_sn ln A_SN1 + d_agn2 ln A_AGN2 + d_sn2 ln A_SN2)``;
    ``T0 = 10^logT0 A_SN2^t_sn2 A_AGN2^t_agn2 A_AGN1^t_agn``, ``T = T0 rho_gas^alpha``;
    ``eps = eps0 A_SN1^e_sn A_AGN1^e_agn``, threshold ``rho_th`` (units of the mean gas density).
    """

    ks0: float
    ks_agn: float
    ks_sn: float
    beta: float
    d0: float
    d_agn: float
    d_sn: float
    d_agn2: float
    d_sn2: float
    logT0: float
    alpha: float
    t_sn2: float
    t_agn2: float
    t_agn: float
    eps0: float
    e_sn: float
    e_agn: float
    rho_th: float

    def scale_depth(self, A_SN1, A_AGN1, A_SN2, A_AGN2) -> tuple[float, float]:
        """``(k_s in h/Mpc, D in (0, 1))`` of the suppression."""
        ks = self.ks0 * A_AGN1**self.ks_agn * A_SN1**self.ks_sn
        z = (
            self.d0
            + self.d_agn * np.log(A_AGN1)
            + self.d_sn * np.log(A_SN1)
            + self.d_agn2 * np.log(A_AGN2)
            + self.d_sn2 * np.log(A_SN2)
        )
        return float(ks), float(1.0 / (1.0 + np.exp(-z)))

    def suppression(self, k, A_SN1, A_AGN1, A_SN2, A_AGN2) -> np.ndarray:
        """Power suppression ``S(k)`` of the gas, ``k`` in h/Mpc, same shape as ``k``, values in (0, 1]."""
        ks, D = self.scale_depth(A_SN1, A_AGN1, A_SN2, A_AGN2)
        xb = (np.asarray(k, dtype=np.float64) / ks) ** self.beta
        return 1.0 - D * xb / (1.0 + xb)


#: Our own (not fitted) suite mappings. SynthTNG: kinetic-mode AGN acting at ~1 h/Mpc, SN winds
#: add to the gas loss. SynthSIMBA: jets reach larger scales and respond more steeply to A_AGN1,
#: and stronger SN winds *weaken* the AGN suppression (they starve the black holes).
SUITES: dict[str, FeedbackModel] = {
    "SynthTNG": FeedbackModel(
        ks0=1.0,
        ks_agn=-0.5,
        ks_sn=0.15,
        beta=2.0,
        d0=-0.8,
        d_agn=0.5,
        d_sn=0.25,
        d_agn2=0.2,
        d_sn2=0.1,
        logT0=4.3,
        alpha=0.6,
        t_sn2=0.2,
        t_agn2=0.25,
        t_agn=0.05,
        eps0=0.02,
        e_sn=-0.5,
        e_agn=-0.2,
        rho_th=5.0,
    ),
    "SynthSIMBA": FeedbackModel(
        ks0=0.5,
        ks_agn=-0.6,
        ks_sn=-0.1,
        beta=1.5,
        d0=-0.5,
        d_agn=0.7,
        d_sn=-0.3,
        d_agn2=0.4,
        d_sn2=0.1,
        logT0=4.5,
        alpha=0.5,
        t_sn2=0.1,
        t_agn2=0.4,
        t_agn=0.15,
        eps0=0.015,
        e_sn=-0.3,
        e_agn=-0.4,
        rho_th=3.0,
    ),
}


def slab_matrix(grid: int, n_slabs: int) -> np.ndarray:
    """``(n_slabs, grid)`` weights averaging cells into slabs: row ``s`` is the overlap of each cell
    with ``[s grid/n_slabs, (s+1) grid/n_slabs)`` divided by the slab width (rows sum to one)."""
    edges = np.arange(n_slabs + 1) * grid / n_slabs
    cells = np.arange(grid + 1)
    lo = np.maximum(cells[None, :-1], edges[:-1, None])
    hi = np.minimum(cells[None, 1:], edges[1:, None])
    return np.clip(hi - lo, 0.0, None) / (grid / n_slabs)


class CamelsLikeSimulator:
    """CAMELS-like multifield simulator (see the module docstring for the model).

    Args:
        grid: cells per side N of the 3D box and pixels per side of the maps.
        box_size: box side L in Mpc/h (CAMELS: 25).
        n_slabs: slabs per axis (CAMELS: 5, so 15 maps per simulation).
        suite: ``SynthTNG`` or ``SynthSIMBA`` (feedback mapping).
        lognormal_amplitude: ``a``, scales the Gaussian field before the exponential.
        lognormal_smoothing: ``R`` in Mpc/h, Gaussian smoothing of the field before the exponential.
    """

    name = "camels_like"
    suites = tuple(SUITES)
    fields = ("Mtot", "Mgas", "T", "Mstar")
    positive = {"Mtot": True, "Mgas": True, "T": True, "Mstar": True}

    def __init__(
        self,
        grid: int = 64,
        box_size: float = 25.0,
        n_slabs: int = 5,
        suite: str = "SynthTNG",
        lognormal_amplitude: float = 1.0,
        lognormal_smoothing: float = 1.0,
    ):
        if suite not in SUITES:
            raise ValueError(f"unknown suite {suite!r} for camels_like; known: {list(SUITES)}")
        if grid < 4 or n_slabs < 1 or n_slabs > grid:
            raise ValueError(f"need grid >= 4 and 1 <= n_slabs <= grid, got {grid}, {n_slabs}")
        if not (box_size > 0 and lognormal_amplitude >= 0 and lognormal_smoothing >= 0):
            raise ValueError("box_size must be > 0, lognormal_amplitude and lognormal_smoothing >= 0")
        self.grid = int(grid)
        self.box_size = float(box_size)
        self.n_slabs = int(n_slabs)
        self.suite = suite
        self.feedback = SUITES[suite]
        self.lognormal_amplitude = float(lognormal_amplitude)
        self.lognormal_smoothing = float(lognormal_smoothing)
        self.cell = self.box_size / self.grid
        self.maps_per_sim = 3 * self.n_slabs
        self.slab_thickness = self.box_size / self.n_slabs

    def config(self) -> dict:
        """The constructor arguments and the suite's feedback coefficients, for manifests."""
        return dict(
            name=self.name,
            grid=self.grid,
            box_size=self.box_size,
            n_slabs=self.n_slabs,
            suite=self.suite,
            lognormal_amplitude=self.lognormal_amplitude,
            lognormal_smoothing=self.lognormal_smoothing,
            feedback=asdict(self.feedback),
        )

    # -- cached Fourier grids (rfftn layout, shape (N, N, N//2+1)) --------------------------------
    @cached_property
    def k(self) -> np.ndarray:
        """|k| in h/Mpc on the ``rfftn`` grid, ``(N, N, N//2+1)``."""
        f = np.fft.fftfreq(self.grid, d=self.cell) * 2 * np.pi
        fz = np.fft.rfftfreq(self.grid, d=self.cell) * 2 * np.pi
        return np.sqrt(f[:, None, None] ** 2 + f[None, :, None] ** 2 + fz[None, None, :] ** 2)

    @cached_property
    def _k_unique(self) -> tuple[np.ndarray, np.ndarray]:
        """Distinct |k| of the rfftn grid and the inverse index (linear_power runs on the distinct ones)."""
        m = np.fft.fftfreq(self.grid) * self.grid
        mz = np.fft.rfftfreq(self.grid) * self.grid
        k2 = np.rint(m[:, None, None] ** 2 + m[None, :, None] ** 2 + mz[None, None, :] ** 2).astype(np.int64)
        u, inv = np.unique(k2, return_inverse=True)
        return np.sqrt(u) * 2 * np.pi / self.box_size, inv.reshape(k2.shape)

    @cached_property
    def _mode_weight(self) -> np.ndarray:
        """How many full-grid modes each ``rfftn`` mode stands for (1 on the kz = 0, N/2 planes)."""
        w = np.full(self.grid // 2 + 1, 2.0)
        w[0] = 1.0
        if self.grid % 2 == 0:
            w[-1] = 1.0
        return w

    @cached_property
    def _smoothing(self) -> np.ndarray:
        return self.lognormal_amplitude * np.exp(-0.5 * (self.k * self.lognormal_smoothing) ** 2)

    @cached_property
    def _unique_weight(self) -> np.ndarray:
        """Full-grid modes per distinct |k| divided by N^3: ``var = sum_u w_u amp_u^2`` (see :meth:`_variance`)."""
        ku, inv = self._k_unique
        w = np.broadcast_to(self._mode_weight, inv.shape)
        return np.bincount(inv.ravel(), weights=w.ravel(), minlength=len(ku)) / self.grid**3

    def _amplitude_unique(self, Omega_m: float, sigma_8: float) -> np.ndarray:
        """:meth:`gaussian_amplitude` on the distinct |k| of the grid (it depends on |k| only)."""
        ku, _ = self._k_unique
        with np.errstate(divide="ignore"):
            p = linear_power(ku, Omega_m, sigma_8) / self.cell**3
        p[ku == 0] = 0.0
        return np.sqrt(p) * (self.lognormal_amplitude * np.exp(-0.5 * (ku * self.lognormal_smoothing) ** 2))

    @cached_property
    def _slabs(self) -> np.ndarray:
        return slab_matrix(self.grid, self.n_slabs)

    def gaussian_amplitude(self, Omega_m: float, sigma_8: float) -> np.ndarray:
        """Fourier filter turning unit white noise into ``g``: ``a W_R(k) sqrt(P3D / dx^3)``, rfftn grid."""
        ku, inv = self._k_unique
        with np.errstate(divide="ignore"):
            p = linear_power(ku, Omega_m, sigma_8) / self.cell**3
        p[ku == 0] = 0.0
        return np.sqrt(p)[inv] * self._smoothing

    def _variance(self, amp: np.ndarray) -> float:
        """Variance of ``irfftn(rfftn(w) * amp)`` for unit white noise ``w``: ``sum_full amp^2 / N^3``."""
        return float(np.sum(amp**2 * self._mode_weight) / self.grid**3)

    def project(self, rho: np.ndarray) -> np.ndarray:
        """Slab means of a 3D field ``(N, N, N)`` -> ``(3 n_slabs, N, N)`` (axis-major layout)."""
        n, s = self.grid, self._slabs
        along0 = (s @ rho.reshape(n, n * n)).reshape(-1, n, n)
        along1 = np.matmul(s, rho).transpose(1, 0, 2)  # batched over axis 0: (N, S, N) -> (S, N, N)
        along2 = (rho @ s.T).transpose(2, 0, 1)  # (N, N, S) -> (S, N, N)
        return np.concatenate([along0, along1, along2])

    def boxes(self, theta, rng: np.random.Generator, fields=fields) -> dict[str, np.ndarray]:
        """The 3D fields of one simulation, float64 ``(N, N, N)``: ``rho_dm``, ``rho_gas``, ``rho_m``
        (units of their means), and where ``fields`` asks for them ``T`` (kelvin) and ``rho_star``
        (units of the mean baryon density)."""
        Om, s8, A_SN1, A_AGN1, A_SN2, A_AGN2 = (float(v) for v in theta[:6])
        n = self.grid
        # the filters depend on |k| only: evaluate them on the distinct |k| and gather once
        ku, inv = self._k_unique
        amp = self._amplitude_unique(Om, s8)
        amp_gas = amp * np.sqrt(self.feedback.suppression(ku, A_SN1, A_AGN1, A_SN2, A_AGN2))
        wk = np.fft.rfftn(rng.standard_normal((n, n, n)))
        g = np.fft.irfftn(wk * amp[inv], s=(n, n, n), axes=(0, 1, 2))
        g -= 0.5 * float(amp**2 @ self._unique_weight)
        rho_dm = np.exp(g, out=g)
        wk *= amp_gas[inv]
        g = np.fft.irfftn(wk, s=(n, n, n), axes=(0, 1, 2))
        g -= 0.5 * float(amp_gas**2 @ self._unique_weight)
        rho_gas = np.exp(g, out=g)
        fb = OMEGA_B / Om
        rho_m = rho_dm * (1 - fb)
        rho_m += fb * rho_gas
        out = dict(rho_dm=rho_dm, rho_gas=rho_gas, rho_m=rho_m)
        fm = self.feedback
        if "T" in fields:
            T0 = 10**fm.logT0 * A_SN2**fm.t_sn2 * A_AGN2**fm.t_agn2 * A_AGN1**fm.t_agn
            out["T"] = T0 * rho_gas**fm.alpha
        if "Mstar" in fields:
            eps = fm.eps0 * A_SN1**fm.e_sn * A_AGN1**fm.e_agn
            u2 = (rho_gas / fm.rho_th) ** 2
            out["rho_star"] = eps * rho_gas * u2 / (1.0 + u2)
        return out

    def simulate(self, theta, rng: np.random.Generator, fields=("Mtot",)) -> dict[str, np.ndarray]:
        """Maps of one simulation: ``{field: float32 (3 n_slabs, N, N)}``.

        ``theta`` holds the six CMD parameters ``(Omega_m, sigma_8, A_SN1, A_AGN1, A_SN2, A_AGN2)``.
        All requested fields are projections of the same box (same random numbers).
        """
        for f in fields:
            if f not in self.fields:
                raise ValueError(f"unknown field {f!r} for camels_like; known: {list(self.fields)}")
        if len(theta) < 6:
            raise ValueError(f"camels_like needs the six CMD parameters, got {len(theta)}")
        b = self.boxes(theta, rng, fields)
        Om = float(theta[0])
        sigma_slab = RHO_CRIT * self.slab_thickness  # (Msun/h)/(Mpc/h)^2 per unit Omega
        out = {}
        for f in fields:
            if f == "Mtot":
                m = sigma_slab * Om * self.project(b["rho_m"])
            elif f == "Mgas":
                m = sigma_slab * OMEGA_B * self.project(b["rho_gas"])
            elif f == "T":
                m = self.project(b["rho_gas"] * b["T"]) / self.project(b["rho_gas"])
            else:  # Mstar
                m = sigma_slab * OMEGA_B * self.project(b["rho_star"])
            out[f] = m.astype(np.float32)
        return out

    def simulate_fields(self, theta, rng: np.random.Generator, fields=("Mtot",)) -> dict[str, np.ndarray]:
        """Same as :meth:`simulate` (the interface shared with the GRF simulator)."""
        return self.simulate(theta, rng, fields)
