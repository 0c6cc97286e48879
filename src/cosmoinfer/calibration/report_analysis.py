"""The report's analysis of each predictions file: metrics, recalibration, verdicts and figures.

:func:`analyse_method` turns one ``predictions.h5`` (and its validation predictions, if any) into a
:class:`MethodAnalysis`: the ``metrics.json`` block, the verdicts and the figures (PNG bytes, in
memory); :func:`comparison_figures` draws all methods together. Nothing here writes a file or
renders HTML (:mod:`~cosmoinfer.calibration.report_html`, :mod:`~cosmoinfer.calibration.report`).
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from cosmoinfer.calibration import by_simulation as bysim
from cosmoinfer.calibration import figures as figs
from cosmoinfer.calibration.accuracy import classification_metrics
from cosmoinfer.calibration.coverage import coverage_error, coverage_from_pit
from cosmoinfer.calibration.levels import DEFAULT_LEVELS, REPORTED_LEVELS, level_key
from cosmoinfer.calibration.metrics import compute_metrics
from cosmoinfer.calibration.recalibration import IsotonicCalibrator, pava
from cosmoinfer.calibration.scores import pit as predictive_pit
from cosmoinfer.calibration.scores import width_scale_terms
from cosmoinfer.calibration.verdict import Verdict, assess, verdict
from cosmoinfer.posterior.predictions import Predictions


@dataclass
class Figure:
    """One report figure: PNG bytes with its key, title, caption and file name under ``figures/``."""

    key: str
    title: str
    caption: str
    png: bytes
    file: str = ""
    dpi: int = figs.DPI

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")

    @property
    def css_width(self) -> int:
        """Width in CSS px at the figure's design size (inches x 96), so fonts keep their point sizes."""
        px = int.from_bytes(self.png[16:20], "big")  # PNG IHDR width
        return max(1, round(px * figs.CSS_PX_PER_INCH / self.dpi))

    @property
    def anchor(self) -> str:
        return "fig-" + _slug(self.file.rsplit("/", 1)[-1].removesuffix(".png") or self.key)


def _slug(s: str) -> str:
    """A file- and anchor-safe form of a label."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_") or "method"


@dataclass
class MethodAnalysis:
    """One predictions file analysed: its ``metrics.json`` block, verdicts, figures and arrays."""

    label: str
    slug: str
    pred: Predictions
    val: Predictions | None
    metrics: dict
    figures: list[Figure]
    verdicts: list[Verdict] = field(default_factory=list)
    arrays: dict = field(default_factory=dict)


def analyse_method(i: int, label: str, pred: Predictions, val: Predictions | None, levels: Sequence[float],
                   rng: np.random.Generator, opts: dict, dpi: int) -> MethodAnalysis:
    """Metrics, recalibration, verdicts and figures of the ``i``-th predictions file (0-based)."""
    slug = f"{i + 1}_{_slug(label)}"
    if pred.task == "classification":
        m, fig_list = analyse_classification(label, pred, val, rng, dpi)
        verdicts, arrays = [], {}
    else:
        m, fig_list, verdicts, arrays, _ = analyse_regression(label, pred, val, levels, rng, opts, dpi)
    for fg in fig_list:
        fg.file = f"figures/{slug}_{fg.key}.png"
        fg.dpi = dpi
    return MethodAnalysis(label, slug, pred, val, m, fig_list, verdicts, arrays)


def comparison_figures(analyses: Sequence[MethodAnalysis], levels: Sequence[float], dpi: int) -> list[Figure]:
    """Figures of all methods together (calibration and TARP, or reliability); none for one method."""
    if len(analyses) < 2:
        return []
    preds = [a.pred for a in analyses]
    regression = [a for a in analyses if a.pred.task == "regression"]
    out: list[Figure] = []
    if regression:
        common = [nm for nm in preds[0].param_names if all(nm in p.param_names for p in preds)]
        curves = {a.label: a.arrays["coverage_curve"][:, [a.pred.param_names.index(nm) for nm in common]]
                  for a in regression}
        g_min = min(bysim.n_sims(p.sim_id) for p in preds)
        out.append(Figure(
            "comparison_calibration", "Calibration of all methods",
            "Empirical vs nominal coverage on the test maps, before recalibration; grey: 95% band of a "
            f"calibrated predictor for {g_min} independent simulations.",
            figs.calibration_curves(levels, curves, g_min, common, dpi=dpi)))
        out.append(Figure("comparison_tarp", "TARP of all methods", "",
                          figs.tarp_curve({a.label: a.arrays["tarp"] for a in regression}, dpi=dpi)))
    else:
        out.append(Figure(
            "comparison_reliability", "Reliability of all methods", "",
            figs.reliability_diagram({a.metrics["label"]: next(iter(a.metrics["params"].values()))["reliability"]
                                      for a in analyses}, dpi=dpi)))
    for fg in out:
        fg.file = f"figures/0_{fg.key}.png"
        fg.dpi = dpi
    return out


def _split_fit_eval(pred: Predictions, val: Predictions | None, rng: np.random.Generator):
    if val is not None:
        return val, pred, (f"fitted on the validation predictions ({val.path}, n={val.n}) and judged on all "
                           f"{pred.n} test items")
    sims = np.unique(pred.sim_id)
    half = rng.permutation(sims)[: len(sims) // 2]
    in_fit = np.isin(pred.sim_id, half)
    fit, ev = pred.subset(np.flatnonzero(in_fit)), pred.subset(np.flatnonzero(~in_fit))
    return fit, ev, (f"fitted on a random half of the test simulations ({len(half)} simulations, n={fit.n}) and "
                     f"judged on the other half ({len(sims) - len(half)} simulations, n={ev.n}), because no "
                     f"validation predictions were given")


def recalibrate(pred: Predictions, val: Predictions | None, levels, rng, opts: dict):
    """Width scaling and isotonic recalibration: fitted on ``val`` (or half the simulations), judged on the rest.

    Both act on the whole predictive: the width scale stretches it about its mean in unit
    coordinates (:meth:`MixturePredictive.scaled`), the isotonic map recalibrates its marginal CDFs.
    """
    fit, ev, fit_on = _split_fit_eval(pred, val, rng)
    names = pred.param_names
    lv = np.asarray(levels, dtype=np.float64)
    s = np.sqrt(np.mean(width_scale_terms(fit.predictive, fit.truth), axis=0))
    iso = IsotonicCalibrator.from_pit(predictive_pit(fit.predictive, fit.truth))
    pit_ev = predictive_pit(ev.predictive, ev.truth)
    before = coverage_from_pit(pit_ev, lv)
    before_rep = coverage_from_pit(pit_ev, REPORTED_LEVELS)
    after_m, after_a = compute_metrics(ev.scaled(s), lv, rng, return_arrays=True, **opts)
    iso_cov = iso.recalibrated_coverage_from_pit(pit_ev, lv)
    iso_rep = iso.recalibrated_coverage_from_pit(pit_ev, REPORTED_LEVELS)
    err_iso = coverage_error(iso_cov, lv)
    # what the verdict rests on: the evaluated set's coverage error against its tolerance, and the
    # scale it asks for itself (on a foreign suite it can be far from the one fitted on val, which
    # is what recalibration applies) against its standard error, both by simulation
    a = assess(ev.predictive, ev.truth, ev.sim_id, rng, lv)
    err_before, tol, s_ev, s_ev_se, mean_z, g_ev, crit = (a.coverage_error, a.tolerance, a.scale, a.scale_se,
                                                          a.mean_z, a.n_sims, a.scale_crit)
    block = {
        "method": "width scaling",
        "fit_on": fit_on,
        "n_fit": fit.n,
        "n": ev.n,
        "n_sims": g_ev,
        "coverage_tolerance": {nm: float(tol[j]) for j, nm in enumerate(names)},
        "scale": {nm: float(s[j]) for j, nm in enumerate(names)},
        "scale_eval": {nm: float(s_ev[j]) for j, nm in enumerate(names)},
        "scale_eval_se": {nm: float(s_ev_se[j]) for j, nm in enumerate(names)},
        "params": after_m["params"],
        "joint": after_m["joint"],
        "before": {nm: {"coverage": {level_key(lvl): float(before_rep[i, j]) for i, lvl in enumerate(REPORTED_LEVELS)},
                        "coverage_error": float(err_before[j])} for j, nm in enumerate(names)},
        "isotonic": {nm: {"coverage": {level_key(lvl): float(iso_rep[i, j]) for i, lvl in enumerate(REPORTED_LEVELS)},
                          "coverage_error": float(err_iso[j])} for j, nm in enumerate(names)},
    }
    verdicts = [
        verdict(nm, float(s_ev[j]), float(err_before[j]), float(after_m["params"][nm]["coverage_error"]),
                float(tol[j]), err_isotonic=float(err_iso[j]), mean_z=float(mean_z[j]), n=ev.n,
                scale_se=float(s_ev_se[j]), fit_scale=float(s[j]), fit_on="val" if val is not None else "a half",
                scale_crit=crit, n_sims=g_ev)
        for j, nm in enumerate(names)
    ]
    curves = {"original": before, f"width scaling (s_fit from {'val' if val is not None else 'the other half'})":
              after_a["coverage_curve"], "isotonic": iso_cov}
    band = bysim.coverage_band(pit_ev, ev.sim_id, lv, rng)
    return block, verdicts, curves, band, g_ev


def exact_block(pred: Predictions) -> dict | None:
    if not ("exact_mean" in pred.extra and "exact_std" in pred.extra):
        return None
    from cosmoinfer.calibration import exact as ex

    em, es = pred.extra["exact_mean"], pred.extra["exact_std"]
    eff = ex.efficiency(pred.truth, pred.mean, em)
    ratio = ex.std_ratio_median(pred.std, es)
    shift = ex.mean_shift(pred.mean, em, es)
    out = {}
    for j, nm in enumerate(pred.param_names):
        out[nm] = {
            "mse_network": float(np.mean((pred.mean[:, j] - pred.truth[:, j]) ** 2)),
            "mse_exact": float(np.mean((em[:, j] - pred.truth[:, j]) ** 2)),
            "efficiency": float(eff[j]),
            "median_std_ratio": float(ratio[j]),
            "rms_mean_offset_in_exact_std": float(shift[j]),
        }
        if "exact_pit" in pred.extra:
            cov = coverage_from_pit(pred.extra["exact_pit"][:, j:j + 1], DEFAULT_LEVELS)
            out[nm]["exact_coverage_error"] = float(coverage_error(cov, DEFAULT_LEVELS)[0])
    return out


def analyse_regression(label: str, pred: Predictions, val: Predictions | None, levels, rng, opts, dpi):
    names = pred.param_names
    metrics, arrays = compute_metrics(pred, levels, rng, return_arrays=True, **opts)
    recal, verdicts, curves, band, g_eval = recalibrate(pred, val, levels, rng, opts)
    metrics["label"] = label
    metrics["split"] = pred.split
    if pred.path:
        metrics["path"] = pred.path
    for k in ("n_members", "n_samples"):
        if getattr(pred, k) is not None:
            metrics[k] = getattr(pred, k)
    metrics["recalibrated"] = recal
    metrics["verdicts"] = {v.param: v.to_dict() for v in verdicts}
    if pred.run is not None:
        metrics["run"] = pred.run
    exact = exact_block(pred)
    if exact is not None:
        metrics["exact"] = exact

    f: list[Figure] = [
        Figure("truth_vs_pred", "Truth vs prediction",
                "Predicted mean ± 1σ against the true value (subsample of at most 400 items)"
                + ("; dashed: the prior range (outside shaded), dotted: the prior mean, where an uninformative "
                   "map's prediction lands." if pred.priors is not None else "."),
                figs.truth_vs_prediction(pred.truth, pred.mean, pred.std, names, rng=rng, priors=pred.priors,
                                         dpi=dpi)),
        Figure("calibration", "Calibration curve",
                f"Empirical vs nominal coverage of the equal-tailed intervals of the predictive on the held-out "
                f"maps of {g_eval} simulations, before and after recalibration; grey: 95% band of a calibrated "
                "predictor (bootstrap over simulations).",
                figs.calibration_curves(levels, curves, g_eval, names, band=band, dpi=dpi)),
        Figure("pit", "PIT histogram",
                "Flat if calibrated; ∪-shaped when intervals are too narrow, ∩-shaped when too wide, tilted when biased.",
                figs.pit_histogram(arrays["pit"], names, dpi=dpi)),
        Figure("zscore", "z-scores", "Histogram of (truth − mean)/std against N(0, 1).",
                figs.zscore_histogram(arrays["z"], names, dpi=dpi)),
        Figure("tarp", "TARP", "Expected coverage of random-reference balls (Lemos et al. 2023) with 95% "
                "bootstrap band; below the diagonal at high α: overconfident, above: underconfident.",
                figs.tarp_curve({label: arrays["tarp"]}, dpi=dpi)),
        Figure("std_vs_error", "Predicted std vs |error|",
                "Each dot one item; red: RMSE in bins of predicted std against the RMS std (honest widths follow "
                "the dashed line).", figs.std_vs_error(pred.truth, pred.mean, pred.std, names, dpi=dpi)),
    ]
    if np.any(pred.std_epistemic > 0):
        f.append(Figure("aleatoric_epistemic", "Aleatoric vs epistemic",
                         "Per-item split of the predictive std into aleatoric (mean member variance) and epistemic "
                         "(spread of member means) parts.",
                         figs.aleatoric_epistemic(pred.std_aleatoric, pred.std_epistemic, names, dpi=dpi)))
    if pred.p >= 2:
        f.append(_corner_figure(pred, rng, dpi))
    if exact is not None:
        f.append(Figure("exact", "Network vs exact posterior",
                         "Network mean and std against the exact GRF posterior of each map.",
                         figs.exact_comparison(pred.truth, pred.mean, pred.std, pred.extra["exact_mean"],
                                               pred.extra["exact_std"], names, dpi=dpi)))
    return metrics, f, verdicts, arrays, curves


def _corner_figure(pred: Predictions, rng, dpi) -> Figure:
    """Corner plot of a few maps' whole predictive (draws), truth marked, exact posterior where stored."""
    grid = pred.extra.get("exact_grid")
    if isinstance(grid, dict) and "index" in grid:
        pick = np.asarray(grid["index"], dtype=int)[:3]
    else:
        pick = np.sort(rng.choice(pred.n, min(3, pred.n), replace=False))
        grid = None
    draws = pred.predictive.subset(pick).sample(3000, rng, truncate=True)  # (S, n, P)
    names = list(pred.param_names)
    with_s8 = "S8" if all(nm in names for nm in ("Omega_m", "sigma_8")) else None
    caption = (f"Predictive of {len(pick)} test maps (draws inside the prior box; contours hold 68% and 95% of "
               "them); ★ the truth")
    if grid is not None:
        caption += "; black: the exact posterior of the same maps (68% and 95% highest-density contours)"
    return Figure("corner", "Posterior of a few maps",
                   caption + ".", figs.corner_draws(draws, pred.truth[pick], names, exact=grid, s8=with_s8,
                                                    priors=pred.priors, dpi=dpi))


def _fit_prob_isotonic(p_fit: np.ndarray, y_fit: np.ndarray):
    order = np.argsort(p_fit, kind="stable")
    x, y = p_fit[order], pava(y_fit[order])
    ux, last = np.unique(x[::-1], return_index=True)
    uy = y[::-1][last]
    return lambda p: np.interp(p, ux, uy)


def analyse_classification(label: str, pred: Predictions, val: Predictions | None, rng, dpi):
    name = pred.param_names[0]
    before = classification_metrics(pred.truth, pred.mean)
    fit, ev, fit_on = _split_fit_eval(pred, val, rng)
    f = _fit_prob_isotonic(fit.mean[:, 0], fit.truth[:, 0])
    after = classification_metrics(ev.truth[:, 0], f(ev.mean[:, 0]))
    ev_before = classification_metrics(ev.truth[:, 0], ev.mean[:, 0])
    metrics = {
        "method": pred.method, "n": pred.n, "task": "classification", "label": label, "split": pred.split,
        "params": {name: before}, "joint": {},
        "recalibrated": {"method": "isotonic (probability)", "fit_on": fit_on, "n_fit": fit.n, "n": ev.n,
                         "params": {name: after}, "joint": {}, "before": {name: ev_before}},
    }
    if pred.path:
        metrics["path"] = pred.path
    if pred.run is not None:
        metrics["run"] = pred.run
    figures = [Figure("reliability", "Reliability diagram",
                       "Observed frequency of class 1 against predicted probability (held-out items for the "
                       "recalibrated curve).",
                       figs.reliability_diagram({"original": before["reliability"],
                                                 "isotonic": after["reliability"]}, dpi=dpi))]
    return metrics, figures
