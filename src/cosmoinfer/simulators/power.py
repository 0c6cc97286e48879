"""Linear matter power spectrum and the projected 2D spectrum of a slab.

Units throughout: wavenumbers ``k`` in h/Mpc, lengths in Mpc/h, 3D power in (Mpc/h)^3, 2D power in
(Mpc/h)^2, redshift zero. The fixed cosmological parameters default to the CAMELS values
(``Omega_b = 0.049``, ``h = 0.6711``, ``n_s = 0.9624``).

The 3D spectrum is the Eisenstein & Hu (1998) "no-wiggle" (zero-baryon shape with the baryon
suppression of the shape parameter) transfer function, eqs. 26 and 28-31 of EH98,

    P(k) = A k^{n_s} T(k)^2,

with ``A`` fixed so that the rms of the linear density in top-hat spheres of radius 8 Mpc/h is
``sigma_8``. It agrees with colossus' ``eisenstein98_zb`` model.

All functions broadcast: ``k`` and the parameters may be arrays of any mutually broadcastable
shapes, and the result has the broadcast shape.
"""

from __future__ import annotations

import numpy as np

OMEGA_B = 0.049
HUBBLE = 0.6711
N_S = 0.9624
T_CMB = 2.7255

# ln k grid for the sigma_8 normalisation integral (h/Mpc); the integrand is negligible outside.
_LNK_NORM = np.linspace(np.log(1e-5), np.log(1e3), 4000)


def eh_nowiggle_transfer(k, Omega_m, Omega_b=OMEGA_B, h=HUBBLE, T_cmb=T_CMB) -> np.ndarray:
    """Eisenstein & Hu (1998) no-wiggle transfer function ``T(k)`` (dimensionless, ``T(0) = 1``).

    ``k`` in h/Mpc. Implements EH98 eqs. 26 (sound horizon ``s`` in Mpc), 28 (``q``), 29
    (``L0``, ``C0``, ``T0``), 30 (``Gamma_eff``) and 31 (``alpha_Gamma``).
    """
    k = np.asarray(k, dtype=np.float64)
    Om = np.asarray(Omega_m, dtype=np.float64)
    Ob = np.asarray(Omega_b, dtype=np.float64)
    h = np.asarray(h, dtype=np.float64)
    om_h2 = Om * h**2
    ob_h2 = Ob * h**2
    fb = Ob / Om
    theta2 = (T_cmb / 2.7) ** 2
    s = 44.5 * np.log(9.83 / om_h2) / np.sqrt(1.0 + 10.0 * ob_h2**0.75)  # eq. 26, Mpc
    alpha = 1.0 - 0.328 * np.log(431.0 * om_h2) * fb + 0.38 * np.log(22.3 * om_h2) * fb**2  # eq. 31
    gamma = Om * h * (alpha + (1.0 - alpha) / (1.0 + (0.43 * k * h * s) ** 4))  # eq. 30
    q = k * theta2 / gamma  # eq. 28 (k in h/Mpc)
    L0 = np.log(2.0 * np.e + 1.8 * q)  # eq. 29
    C0 = 14.2 + 731.0 / (1.0 + 62.5 * q)
    return L0 / (L0 + C0 * q * q)


def tophat_window(x) -> np.ndarray:
    """Fourier transform of a unit-volume 3D top-hat, ``W(x) = 3 (sin x - x cos x) / x^3``."""
    x = np.asarray(x, dtype=np.float64)
    small = np.abs(x) < 1e-3
    xs = np.where(small, 1.0, x)
    w = 3.0 * (np.sin(xs) - xs * np.cos(xs)) / xs**3
    return np.where(small, 1.0 - x * x / 10.0, w)


def _amplitude(Omega_m, sigma_8, Omega_b, h, n_s, T_cmb, R=8.0) -> np.ndarray:
    """``A`` such that ``sigma(R) = sigma_8`` for ``P = A k^{n_s} T^2``; shape: broadcast of params."""
    Om, s8, Ob, hh, ns = np.broadcast_arrays(
        *(np.asarray(v, dtype=np.float64) for v in (Omega_m, sigma_8, Omega_b, h, n_s))
    )
    k = np.exp(_LNK_NORM)
    e = (...,) + (None,)
    t = eh_nowiggle_transfer(k, Om[e], Ob[e], hh[e], T_cmb)
    integrand = k**3 * k ** ns[e] * t**2 * tophat_window(k * R) ** 2 / (2.0 * np.pi**2)
    sigma2_unit = np.trapezoid(integrand, _LNK_NORM, axis=-1)
    return s8**2 / sigma2_unit


def linear_power(k, Omega_m, sigma_8, Omega_b=OMEGA_B, h=HUBBLE, n_s=N_S, T_cmb=T_CMB) -> np.ndarray:
    """Linear matter power spectrum ``P(k)`` at z = 0 in (Mpc/h)^3, ``k`` in h/Mpc.

    EH98 no-wiggle shape normalised to ``sigma_8`` (top-hat, R = 8 Mpc/h). Broadcasts over ``k`` and
    the parameters, e.g. ``k`` of shape ``(K,)`` and ``Omega_m`` of shape ``(M, 1)`` give ``(M, K)``.
    """
    A = _amplitude(Omega_m, sigma_8, Omega_b, h, n_s, T_cmb)
    k = np.asarray(k, dtype=np.float64)
    t = eh_nowiggle_transfer(k, Omega_m, Omega_b, h, T_cmb)
    with np.errstate(divide="ignore"):
        return A * k ** np.asarray(n_s, dtype=np.float64) * t**2


def sigma_R(R, Omega_m, sigma_8, Omega_b=OMEGA_B, h=HUBBLE, n_s=N_S) -> np.ndarray:
    """rms linear density in top-hat spheres of radius ``R`` (Mpc/h); ``sigma_R(8, ...) = sigma_8``."""
    R = np.asarray(R, dtype=np.float64)
    k = np.exp(_LNK_NORM)
    e = (...,) + (None,)
    p = linear_power(
        k,
        np.asarray(Omega_m)[e],
        np.asarray(sigma_8)[e],
        np.asarray(Omega_b)[e],
        np.asarray(h)[e],
        np.asarray(n_s)[e],
    )
    integrand = k**3 * p * tophat_window(k * R[e]) ** 2 / (2.0 * np.pi**2)
    return np.sqrt(np.trapezoid(integrand, _LNK_NORM, axis=-1))


def slab_weights(box_size: float, slab_thickness: float, n_max: int | None = None):
    """Line-of-sight modes ``k_z = 2 pi n / L`` and weights of the slab-mean projection.

    Returns ``(kz, w)`` over ``n = 0, 1, ..., n_max`` with ``w_n = c_n sinc^2(pi n Ls / L) / L``
    (``c_0 = 1``, ``c_n = 2`` folds in ``-n``); terms with zero weight are dropped. ``n_max``
    defaults to the first ``n`` with ``k_z > 100`` h/Mpc; the terms beyond change ``P2D`` by less than
    1e-5 of it for ``k < 10`` h/Mpc (the sum converges like ``n^-3``).
    """
    L, Ls = float(box_size), float(slab_thickness)
    if not (L > 0 and 0 < Ls <= L):
        raise ValueError(f"need 0 < slab_thickness <= box_size, got {Ls} and {L}")
    if n_max is None:
        n_max = int(np.ceil(100.0 * L / (2 * np.pi)))
    n = np.arange(n_max + 1, dtype=np.float64)
    w = np.sinc(n * Ls / L) ** 2 * np.where(n == 0, 1.0, 2.0) / L
    keep = w > 1e-14 * w[0]
    return 2 * np.pi * n[keep] / L, w[keep]


def slab_power_2d(
    k,
    Omega_m,
    sigma_8,
    box_size: float = 25.0,
    slab_thickness: float = 5.0,
    Omega_b=OMEGA_B,
    h=HUBBLE,
    n_s=N_S,
    n_max: int | None = None,
) -> np.ndarray:
    """2D power spectrum (Mpc/h)^2 of the mean density contrast of a slab in a periodic box.

    ``P2D(k) = (1/L) sum_n P3D(sqrt(k^2 + (2 pi n / L)^2)) sinc^2(pi n Ls / L)`` over all integers
    ``n``, with ``L = box_size`` and ``Ls = slab_thickness`` in Mpc/h and ``k`` (h/Mpc) the
    wavenumber in the plane of the map. Broadcasts like :func:`linear_power`. The line-of-sight sum
    is evaluated once per distinct parameter set and distinct ``|k|``, so a full FFT grid costs
    about as much as its rings.
    """
    kz, w = slab_weights(box_size, slab_thickness, n_max)
    k = np.asarray(k, dtype=np.float64)
    params = [np.asarray(v, dtype=np.float64) for v in (Omega_m, Omega_b, h, n_s)]
    out_shape = np.broadcast_shapes(k.shape, np.shape(sigma_8), *(p.shape for p in params))
    A = np.broadcast_to(_amplitude(Omega_m, sigma_8, Omega_b, h, n_s, T_CMB), out_shape).ravel()
    kb = np.broadcast_to(k, out_shape).ravel()
    table = np.stack([np.broadcast_to(p, out_shape).ravel() for p in params], axis=1)
    uniq, inverse = np.unique(table, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    out = np.empty(kb.size)
    order = np.argsort(inverse, kind="stable")
    starts = np.searchsorted(inverse[order], np.arange(len(uniq) + 1))
    for j, (Om, Ob, hh, ns) in enumerate(uniq):
        idx = order[starts[j] : starts[j + 1]]
        ku, kinv = np.unique(kb[idx], return_inverse=True)
        k3 = np.sqrt(ku[:, None] ** 2 + kz[None, :] ** 2)
        t = eh_nowiggle_transfer(k3, Om, Ob, hh)
        with np.errstate(divide="ignore", invalid="ignore"):
            p = np.where(k3 > 0, k3**ns * t**2, 0.0)
        out[idx] = (p @ w)[kinv.ravel()]
    return (A * out).reshape(out_shape)
