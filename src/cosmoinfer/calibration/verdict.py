"""One-line verdicts on how honest each parameter's widths are.

The verdict rests on two numbers from the evaluated set, both computed from the whole
predictive and both judged by simulation (the 15 maps of a simulation are correlated): the
coverage error (max |empirical − nominal| over the levels) against what a calibrated predictor
on the same simulations reaches (:func:`~cosmoinfer.calibration.by_simulation.coverage_tolerance`
at ``ALPHA_COVERAGE``), and the set's own width scale ``s = sqrt(mean z_u²)`` (``s > 1``: too
narrow, ``s < 1``: too wide) against its bootstrap standard error times a Student-t critical
value at ``ALPHA_SCALE``. The two rates add up to the verdict's family-wise false-alarm rate
(5%). The set's own scale is called the **width ratio on test**, ``s_test``; the fix the verdict
reports is the **fitted scale** ``s_fit`` (fitted on the validation set), which on a foreign
suite can differ from what that suite needs. When a recalibration leaves coverage further from
nominal than it was, the verdict says that it makes coverage worse.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from cosmoinfer.calibration import by_simulation as bysim


@dataclass
class Verdict:
    """``status`` is ``well calibrated``, ``too narrow``, ``too wide`` or ``miscalibrated``.

    ``text`` is the full sentence, ``summary`` its short form for the report's headline
    ("too narrow by 23% (s_test = 1.23)"); ``s_test`` the width ratio of the evaluated maps,
    ``s_fit`` the fitted scale that recalibration applied; ``worsened`` names the recalibrations
    ("width scaling", "isotonic") that leave coverage further from nominal than it was.
    """

    param: str
    status: str
    text: str
    summary: str = ""
    s_test: float | None = None
    s_fit: float | None = None
    worsened: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _pct(x: float) -> str:
    x = 100 * abs(float(x))
    return f"{x:.0f}%" if x >= 10 else f"{x:.1f}%"


def _by(factor: float) -> str:
    """How far a width is off: ``"23%"`` up to 10 times, then ``"a factor of 3.2e+05"``."""
    if not np.isfinite(factor) or factor > 1e6:
        return "a factor of more than a million"
    if factor >= 10:
        return f"a factor of {factor:.3g}"
    return _pct(factor - 1)


#: Two coverage errors closer than this are "the same" (printed with one decimal in percent).
_SAME = 5e-4


def verdict(param: str, scale: float, err_before: float, err_after: float, tolerance: float, *,
            err_isotonic: float | None = None, mean_z: float = 0.0, n: int = 0,
            n_fit: int | None = None, scale_se: float | None = None, fit_scale: float | None = None,
            fit_on: str | None = None, scale_crit: float = 2.0, n_sims: int | None = None) -> Verdict:
    """Verdict for one parameter.

    Two width numbers with distinct names, used the same way in every text of the report:

    * ``s_test`` (``scale``): the **width ratio on test**, ``sqrt(mean z²)`` of the evaluated maps
      themselves: > 1 their intervals are too narrow by that factor, < 1 too wide. The status
      ("too narrow by 23%") rests on it.
    * ``s_fit`` (``fit_scale``): the **fitted scale**, ``sqrt(mean z²)`` of the fitting set
      (``fit_on``: the validation predictions, or the other half of the test simulations), the
      factor recalibration stretches the predictive by. On a foreign suite it can differ from
      ``s_test``, and then it fixes nothing.

    Args:
        param: parameter name.
        scale: ``s_test``, the width ratio the evaluation set itself asks for.
        err_before: coverage error of the original widths on the evaluation set.
        err_after: coverage error on the same set after rescaling by ``s_fit``.
        tolerance: coverage-error tolerance for the evaluation set's size.
        err_isotonic: coverage error after isotonic recalibration, if computed.
        mean_z: mean standardised residual (truth − mean)/std on the evaluation set.
        n: evaluation-set size (for the bias test).
        n_fit: fitting-set size; scale_se: standard error of ``s_test`` (default, for Gaussian
            residuals, ``sqrt(1/(2 n_fit))``).
        fit_scale: ``s_fit``, the recalibration scale actually applied (default ``scale``).
        fit_on: where ``s_fit`` was fitted (``"val"``, ``"the other half"``), named in the text.
        scale_crit: ``s_test`` is significantly different from 1 beyond ``scale_crit`` standard errors.
        n_sims: number of simulations behind the evaluation set (tolerances count these).

    Well calibrated needs both: coverage error within tolerance and ``s_test`` compatible with 1.
    A recalibration that leaves coverage further from nominal than before is said to make it worse.
    """
    n_fit = n if n_fit is None else n_fit
    fit_scale = scale if fit_scale is None else fit_scale
    where = f" (fitted on {fit_on})" if fit_on else ""
    s_fit_txt = f"{fit_scale:.2f}" if 0.01 <= fit_scale < 100 else f"{fit_scale:.3g}"
    fitted = f"rescaling by s_fit = {s_fit_txt}{where}"
    if scale_se is None:
        scale_se = np.sqrt(1.0 / (2 * max(n_fit, 1)))
    scale_ok = abs(scale - 1) <= scale_crit * scale_se
    cov_ok = err_before <= tolerance
    scaling_worse = err_after > err_before + _SAME
    iso_worse = err_isotonic is not None and err_isotonic > err_before + _SAME
    worsened = (["width scaling"] if scaling_worse else []) + (["isotonic"] if iso_worse else [])
    bias = ""
    n_ind = n_sims if n_sims else n
    if n_ind > 0 and abs(mean_z) > max(0.1, 3.0 / np.sqrt(n_ind)):
        direction = "low" if mean_z > 0 else "high"  # truth above the mean: predictions too low
        bias = f"; means biased {direction} by {abs(mean_z):.2f}σ"
    size = f"{n} maps of {n_sims} simulations" if n_sims else f"n={n}"
    tol_txt = f"tolerance {_pct(tolerance)} for {size}" if n else f"tolerance {_pct(tolerance)}"
    s_txt = f"s_test = {scale:.2f}" if 0.01 <= scale < 100 else f"s_test = {scale:.3g}"
    was = f"was {_pct(err_before)}"

    def iso_tail(also: bool = False) -> str:
        if err_isotonic is None:
            return ""
        if iso_worse:
            return (f"; isotonic recalibration{where} {'also ' if also else ''}makes it worse: "
                    f"off by {_pct(err_isotonic)} ({was})")
        return f"; isotonic recalibration{where} brings it to {_pct(err_isotonic)}"

    def make(status: str, text: str, summary: str) -> Verdict:
        return Verdict(param, status, text, summary, float(scale), float(fit_scale), worsened)

    if cov_ok and scale_ok:
        text = (f"{param} well calibrated: coverage within {_pct(err_before)} of nominal ({tol_txt}); "
                f"{s_txt}{bias}")
        if scaling_worse:
            text += f"; {fitted} would make coverage worse: off by {_pct(err_after)} ({was})"
        if iso_worse:
            text += iso_tail(also=scaling_worse)
        return make("well calibrated", text, f"calibrated ({s_txt})")
    if not cov_ok and scale_ok:
        text = (f"{param} miscalibrated: coverage off by {_pct(err_before)} ({tol_txt}) although the "
                f"overall width is right ({s_txt}), so the errors are not Gaussian-shaped{bias}{iso_tail()}")
        return make("miscalibrated", text, f"miscalibrated: coverage off by {_pct(err_before)}, width right "
                                           f"({s_txt})")
    slightly = "slightly " if cov_ok else ""
    if scale > 1:
        status, short = "too narrow", f"{slightly}too narrow by {_by(scale)}"
    else:
        status, short = "too wide", f"{slightly}too wide by {_by(1 / scale if scale > 0 else np.inf)}"
    head = f"{param} intervals {short} ({s_txt})"
    if cov_ok:
        head += f" (coverage within {_pct(err_before)}, inside the {tol_txt}, but the width ratio is significant)"
    if scaling_worse:
        within = "still within tolerance" if err_after <= tolerance else tol_txt
        tail = f"; {fitted} makes coverage worse: off by {_pct(err_after)} ({was}; {within})"
        tail += iso_tail(also=True)
    elif err_after <= tolerance:
        verb = "keeps coverage within" if cov_ok else "fixes coverage to within"
        tail = f"; {fitted} {verb} {_pct(err_after)}"
    else:
        tail = f"; {fitted} leaves coverage off by {_pct(err_after)} ({tol_txt}){iso_tail()}"
    return make(status, head + tail + bias, f"{short} ({s_txt})")


@dataclass
class Assessment:
    """What a verdict rests on, per parameter ``(P,)`` arrays, from one evaluation set."""

    coverage_error: np.ndarray
    tolerance: np.ndarray
    scale: np.ndarray
    scale_se: np.ndarray
    scale_crit: float
    mean_z: np.ndarray
    n: int
    n_sims: int

    @property
    def flagged(self) -> np.ndarray:
        """``(P,)`` True where the verdict is anything but "well calibrated"."""
        cov_bad = self.coverage_error > self.tolerance
        scale_bad = np.abs(self.scale - 1) > self.scale_crit * self.scale_se
        return cov_bad | scale_bad


def assess(predictive, truth, sim_id, rng: np.random.Generator, levels, n_boot: int = 1000) -> Assessment:
    """The numbers behind the verdicts of one evaluation set, all from the whole predictive.

    Coverage error of the equal-tailed intervals (marginal CDFs at the truth) against the
    bootstrap-over-simulations tolerance at ``ALPHA_COVERAGE``; width scale ``sqrt(mean z_u²)``
    against ``t_(G-1)`` critical value at ``ALPHA_SCALE`` times its bootstrap standard error.
    A calibrated predictive is flagged with probability at most ``ALPHA_VERDICT`` per parameter.
    """
    from cosmoinfer.calibration.metrics import (
        ALPHA_COVERAGE,
        ALPHA_SCALE,
        coverage_error,
        coverage_from_pit,
        width_scale,
    )
    from cosmoinfer.calibration.scores import pit

    lv = np.asarray(levels, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    pit_v = pit(predictive, truth)
    err = coverage_error(coverage_from_pit(pit_v, lv), lv)
    tol = bysim.coverage_tolerance(pit_v, sim_id, lv, rng, ALPHA_COVERAGE, n_boot)
    s, se = width_scale(predictive, truth, sim_id, rng, n_boot)
    mean, cov = predictive.moments()
    mean_z = np.mean((truth - mean) / np.sqrt(np.diagonal(cov, axis1=1, axis2=2)), axis=0)
    return Assessment(err, tol, s, se, bysim.critical_t(sim_id, ALPHA_SCALE), mean_z, int(truth.shape[0]),
                      bysim.n_sims(sim_id))
