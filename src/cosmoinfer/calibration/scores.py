"""Statistics of a whole predictive distribution at the true parameters.

Every function takes a predictive (:class:`~cosmoinfer.posterior.mixture.MixturePredictive`,
:class:`~cosmoinfer.posterior.samples.SamplePredictive`, or any object with the same methods) and
the truths ``truth (N, P)`` in physical units, and never replaces the predictive by a Gaussian
with its moments:

* :func:`log_score`: joint log-density at the truth, ``(N,)`` nats (the joint NLL is its negative);
* :func:`marginal_nll`: ``-ln`` marginal density per parameter, ``(N, P)`` nats;
* :func:`pit`: marginal CDFs at the truth, ``(N, P)`` (U(0,1) when calibrated);
* :func:`crps`: CRPS per parameter, ``(N, P)`` in parameter units (scoringrules' closed forms for
  normal mixtures and lognormals; quadrature for mixtures of lognormals; the ensemble estimator
  for draws);
* :func:`hpd_credibility`: mass of the smallest highest-density region holding the truth, ``(N,)``;
* :func:`width_scale_terms`: ``z_u² = ((u_true - mean_u) / std_u)²`` in unit coordinates, whose
  mean is 1 for any calibrated predictive (the width scale is its square root);
* :func:`s8_draws`: draws of the derived S8 = sigma_8 (Omega_m / 0.3)^0.5 and its true value.
"""

from __future__ import annotations

import numpy as np
import scoringrules as sr
from scipy.special import ndtr

#: Names of the parameters S8 is derived from, and its pivot.
S8_INPUTS = ("Omega_m", "sigma_8")
S8_PIVOT = 0.3


def _f(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def log_score(pred, truth) -> np.ndarray:
    """Joint log-density of the predictive at the truth, physical units, ``(N,)`` nats."""
    if getattr(pred, "kind", None) == "samples":
        return _f(pred.truth_log_prob)
    return pred.log_prob(_f(truth))


def marginal_nll(pred, truth) -> np.ndarray:
    """Marginal negative log-density per parameter at the truth, physical units, ``(N, P)`` nats."""
    return -pred.marginal_log_prob(_f(truth))


def pit(pred, truth) -> np.ndarray:
    """Probability integral transform: the marginal CDFs at the truth, ``(N, P)``."""
    return pred.marginal_cdf(_f(truth))


def hpd_credibility(pred, truth, rng: np.random.Generator, n_samples: int = 1000) -> np.ndarray:
    """Credibility level of the smallest highest-density region containing the truth, ``(N,)``."""
    return pred.hpd_credibility(_f(truth), rng, n_samples)


def coverage_from_credibility(cred, levels) -> np.ndarray:
    """Joint coverage ``(L,)``: fraction of items whose truth lies in the HPD region of each level."""
    lv = _f(levels).ravel()
    return np.mean(_f(cred)[None, :] <= lv[:, None], axis=1)


def width_scale_terms(pred, truth) -> np.ndarray:
    """``z_u² (N, P)``: squared standardised residuals in unit coordinates with the mixture's moments.

    For a calibrated predictive ``E[z_u²] = 1`` whatever its shape, so ``sqrt(mean z_u²)`` says by
    how much its spread must be stretched (> 1: too narrow) along each unit axis, which is what
    :meth:`MixturePredictive.scaled` does.
    """
    mean_u, std_u = pred.moments_unit()
    u = pred.bijection.inverse(_f(truth))
    return ((u - mean_u) / std_u) ** 2


# --------------------------------------------------------------------------- CRPS


def crps(pred, truth, n_quad: int = 2001) -> np.ndarray:
    """CRPS of each parameter's marginal at the truth, ``(N, P)`` in parameter units.

    Affine parameters: a normal mixture (closed form, ``scoringrules.crps_mixnorm``). Exp
    (log-uniform) parameters: a lognormal (closed form, ``scoringrules.crps_lognormal``) for one
    component, otherwise ``∫ (F(θ) − 1[θ ≥ y])² dθ`` by quadrature over unit coordinates. Draws:
    ``scoringrules.crps_ensemble``.
    """
    y = _f(truth)
    if getattr(pred, "kind", None) == "samples":
        return np.stack([sr.crps_ensemble(y[:, j], pred.samples[:, :, j], m_axis=-1)
                         for j in range(pred.p)], axis=1)
    b = pred.bijection
    s = pred.std_unit  # (N, K, P)
    out = np.empty(y.shape)
    for j in range(pred.p):
        loc = b.shift[j] + b.scale[j] * pred.loc[:, :, j]  # (N, K): affine mean or log-space mean
        sd = b.scale[j] * s[:, :, j]
        if not b.log[j]:
            out[:, j] = _crps_mixnorm(y[:, j], loc, sd, pred.weights)
        elif pred.k == 1:
            out[:, j] = sr.crps_lognormal(y[:, j], loc[:, 0], sd[:, 0])
        else:
            out[:, j] = _crps_lognormal_mixture(y[:, j], loc, sd, pred.weights, n_quad)
    return out


def _crps_mixnorm(y, m, s, w, block: int = 512) -> np.ndarray:
    """scoringrules' normal-mixture CRPS in blocks of items (its memory grows as N K²)."""
    k = m.shape[1]
    step = max(1, int(4_000_000 // max(k * k, 1)))
    return np.concatenate([sr.crps_mixnorm(y[a:a + step], m[a:a + step], s[a:a + step], w[a:a + step], m_axis=-1)
                           for a in range(0, y.shape[0], step)])


def _crps_lognormal_mixture(y, m, s, w, n_quad: int) -> np.ndarray:
    """CRPS of ``sum_k w_k LogNormal(m_k, s_k)`` at ``y`` by quadrature in ``x = ln θ``.

    ``CRPS = ∫ (F(x) − 1[x ≥ ln y])² e^x dx`` over ``[min_k m_k − 9 s_k, max_k m_k + 9 s_k]`` (and
    ``ln y``), trapezoid rule on ``n_quad`` points per item.
    """
    out = np.empty(y.shape[0])
    step = max(1, int(2_000_000 // (n_quad * m.shape[1])))
    with np.errstate(divide="ignore"):
        ly = np.log(y)
    for a in range(0, y.shape[0], step):
        sl = slice(a, a + step)
        lo = np.minimum((m[sl] - 9 * s[sl]).min(axis=1), ly[sl] - 1e-9)
        hi = np.maximum((m[sl] + 9 * s[sl]).max(axis=1), ly[sl] + 1e-9)
        x = lo[:, None] + (hi - lo)[:, None] * np.linspace(0, 1, n_quad)[None]  # (n, Q)
        cdf = np.sum(w[sl, None, :] * ndtr((x[:, :, None] - m[sl, None, :]) / s[sl, None, :]), axis=-1)
        step_fn = (x >= ly[sl, None]).astype(np.float64)
        f = (cdf - step_fn) ** 2 * np.exp(x)
        out[sl] = np.trapezoid(f, x, axis=1) if hasattr(np, "trapezoid") else np.trapz(f, x, axis=1)
    # the part beyond the grid: upper tail ∫ (1 − F)² e^x dx is negligible at 9 sigma (< 1e-15 relative)
    return out


# --------------------------------------------------------------------------- derived S8


def has_s8(param_names) -> bool:
    """Whether S8 can be derived (both Omega_m and sigma_8 inferred)."""
    return all(nm in list(param_names) for nm in S8_INPUTS)


def s8(omega_m, sigma_8) -> np.ndarray:
    """``S8 = sigma_8 (Omega_m / 0.3)^0.5``; NaN where Omega_m < 0."""
    om = _f(omega_m)
    with np.errstate(invalid="ignore"):
        return _f(sigma_8) * np.sqrt(np.where(om >= 0, om, np.nan) / S8_PIVOT)


def s8_draws(pred, truth, rng: np.random.Generator, n_samples: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """Draws of S8 from the predictive restricted to the prior box, ``(S, N)``, and the true S8 ``(N,)``."""
    names = list(pred.param_names)
    i, j = names.index(S8_INPUTS[0]), names.index(S8_INPUTS[1])
    x = pred.sample(n_samples, rng, truncate=True)
    t = _f(truth)
    return s8(x[..., i], x[..., j]), s8(t[:, i], t[:, j])
