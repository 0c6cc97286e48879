"""Build the calibration report: ``metrics.json``, PNG figures and one self-contained ``report.html``.

:func:`build_report` reads one or more ``predictions.h5`` files (e.g. single network, deep
ensemble, MC dropout), computes the metrics of :mod:`~cosmoinfer.calibration.metrics`, fits the
recalibrators of :mod:`~cosmoinfer.calibration.recalibration` on the validation predictions (or, if
none are given, on a random half of the test predictions, judged on the other half, and says so),
writes one verdict per parameter, and renders everything.

Everything is computed and rendered in memory first; the files are then written as one set
(:func:`publish`), so an error never leaves a half-written file, and a ``report.html`` that exists
always belongs to the ``metrics.json`` and figures beside it.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from cosmoinfer.calibration import by_simulation as bysim
from cosmoinfer.calibration import figures as figs
from cosmoinfer.calibration.headline import headline
from cosmoinfer.calibration.metrics import (
    DEFAULT_LEVELS,
    REPORTED_LEVELS,
    _level_key,
    classification_metrics,
    compute_metrics,
    coverage_error,
    coverage_from_pit,
)
from cosmoinfer.calibration.recalibration import IsotonicCalibrator, pava
from cosmoinfer.calibration.scores import pit as predictive_pit
from cosmoinfer.calibration.scores import width_scale_terms
from cosmoinfer.calibration.verdict import assess, verdict
from cosmoinfer.errors import InputError
from cosmoinfer.posterior.predictions import Predictions, read_predictions

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
TEMPLATE_NAME = "report.html.j2"
#: Smallest test set the report accepts (recalibration without validation needs two halves).
MIN_ITEMS = 4


@dataclass
class ReportPaths:
    """What :func:`build_report` wrote: ``html``, ``metrics`` and the PNG ``figures``."""

    html: Path
    metrics: Path
    figures: list[Path] = field(default_factory=list)


@dataclass
class _Figure:
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


# --------------------------------------------------------------------------- helpers


def _as_list(x) -> list | None:
    if x is None:
        return None
    if isinstance(x, (str, os.PathLike)):
        return [x]
    return list(x)


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_") or "method"


def _jsonable(x: Any) -> Any:
    """Plain-JSON copy: numpy scalars/arrays to Python, NaN/inf to ``None``."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else None
    return x


def _fmt(x, digits: int = 4) -> str:
    if x is None:
        return "–"
    if isinstance(x, (int, np.integer)):
        return str(x)
    x = float(x)
    if not math.isfinite(x):
        return "–"
    return f"{x:.{digits}g}"


def _default_labels(preds: Sequence[Predictions]) -> list[str]:
    labels = [p.method for p in preds]
    if len(set(labels)) < len(labels):
        labels = [f"{p.method} ({Path(p.path).parent.name or Path(p.path).stem})" for p in preds]
    if len(set(labels)) < len(labels):
        labels = [f"{lab} #{i + 1}" for i, lab in enumerate(labels)]
    return labels


# --------------------------------------------------------------------------- per-method analysis


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


def _recalibrate(pred: Predictions, val: Predictions | None, levels, rng, opts: dict):
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
        "before": {nm: {"coverage": {_level_key(lvl): float(before_rep[i, j]) for i, lvl in enumerate(REPORTED_LEVELS)},
                        "coverage_error": float(err_before[j])} for j, nm in enumerate(names)},
        "isotonic": {nm: {"coverage": {_level_key(lvl): float(iso_rep[i, j]) for i, lvl in enumerate(REPORTED_LEVELS)},
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


def _exact_block(pred: Predictions) -> dict | None:
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


def _analyse_regression(label: str, pred: Predictions, val: Predictions | None, levels, rng, opts, dpi):
    names = pred.param_names
    metrics, arrays = compute_metrics(pred, levels, rng, return_arrays=True, **opts)
    recal, verdicts, curves, band, g_eval = _recalibrate(pred, val, levels, rng, opts)
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
    exact = _exact_block(pred)
    if exact is not None:
        metrics["exact"] = exact

    f: list[_Figure] = [
        _Figure("truth_vs_pred", "Truth vs prediction",
                "Predicted mean ± 1σ against the true value (subsample of at most 400 items)"
                + ("; dashed: the prior range (outside shaded), dotted: the prior mean, where an uninformative "
                   "map's prediction lands." if pred.priors is not None else "."),
                figs.truth_vs_prediction(pred.truth, pred.mean, pred.std, names, rng=rng, priors=pred.priors,
                                         dpi=dpi)),
        _Figure("calibration", "Calibration curve",
                f"Empirical vs nominal coverage of the equal-tailed intervals of the predictive on the held-out "
                f"maps of {g_eval} simulations, before and after recalibration; grey: 95% band of a calibrated "
                "predictor (bootstrap over simulations).",
                figs.calibration_curves(levels, curves, g_eval, names, band=band, dpi=dpi)),
        _Figure("pit", "PIT histogram",
                "Flat if calibrated; ∪-shaped when intervals are too narrow, ∩-shaped when too wide, tilted when biased.",
                figs.pit_histogram(arrays["pit"], names, dpi=dpi)),
        _Figure("zscore", "z-scores", "Histogram of (truth − mean)/std against N(0, 1).",
                figs.zscore_histogram(arrays["z"], names, dpi=dpi)),
        _Figure("tarp", "TARP", "Expected coverage of random-reference balls (Lemos et al. 2023) with 95% "
                "bootstrap band; below the diagonal at high α: overconfident, above: underconfident.",
                figs.tarp_curve({label: arrays["tarp"]}, dpi=dpi)),
        _Figure("std_vs_error", "Predicted std vs |error|",
                "Each dot one item; red: RMSE in bins of predicted std against the RMS std (honest widths follow "
                "the dashed line).", figs.std_vs_error(pred.truth, pred.mean, pred.std, names, dpi=dpi)),
    ]
    if np.any(pred.std_epistemic > 0):
        f.append(_Figure("aleatoric_epistemic", "Aleatoric vs epistemic",
                         "Per-item split of the predictive std into aleatoric (mean member variance) and epistemic "
                         "(spread of member means) parts.",
                         figs.aleatoric_epistemic(pred.std_aleatoric, pred.std_epistemic, names, dpi=dpi)))
    if pred.p >= 2:
        f.append(_corner_figure(pred, rng, dpi))
    if exact is not None:
        f.append(_Figure("exact", "Network vs exact posterior",
                         "Network mean and std against the exact GRF posterior of each map.",
                         figs.exact_comparison(pred.truth, pred.mean, pred.std, pred.extra["exact_mean"],
                                               pred.extra["exact_std"], names, dpi=dpi)))
    return metrics, f, verdicts, arrays, curves


def _corner_figure(pred: Predictions, rng, dpi) -> _Figure:
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
    return _Figure("corner", "Posterior of a few maps",
                   caption + ".", figs.corner_draws(draws, pred.truth[pick], names, exact=grid, s8=with_s8,
                                                    priors=pred.priors, dpi=dpi))


def _fit_prob_isotonic(p_fit: np.ndarray, y_fit: np.ndarray):
    order = np.argsort(p_fit, kind="stable")
    x, y = p_fit[order], pava(y_fit[order])
    ux, last = np.unique(x[::-1], return_index=True)
    uy = y[::-1][last]
    return lambda p: np.interp(p, ux, uy)


def _analyse_classification(label: str, pred: Predictions, val: Predictions | None, rng, dpi):
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
    figures = [_Figure("reliability", "Reliability diagram",
                       "Observed frequency of class 1 against predicted probability (held-out items for the "
                       "recalibrated curve).",
                       figs.reliability_diagram({"original": before["reliability"],
                                                 "isotonic": after["reliability"]}, dpi=dpi))]
    return metrics, figures


# --------------------------------------------------------------------------- rendering


def _cell(x, worse_than=None) -> dict:
    """A table cell; ``worse`` when a recalibrated coverage error exceeds ``worse_than`` (the same maps before)."""
    worse = (x is not None and worse_than is not None and math.isfinite(float(x))
             and float(x) > float(worse_than) + 5e-4)
    return {"text": _fmt(x), "worse": worse,
            "title": f"makes coverage worse: was {_fmt(worse_than, 3)} on the same maps" if worse else ""}


def _summary_rows(m: dict) -> list[dict]:
    rows = []
    rec = m.get("recalibrated", {})
    for nm, d in m["params"].items():
        held_out = rec.get("before", {}).get(nm, {}).get("coverage_error")
        rows.append({
            "param": nm,
            "cells": [_cell(d.get(k)) for k in ("rmse", "r2", "mean_rel_err", "chi2", "nll", "crps")]
            + [_cell(d["coverage"].get("0.68")), _cell(d["coverage"].get("0.95")), _cell(d["coverage_error"]),
               _cell(d["mean_std"]), _cell(rec.get("scale", {}).get(nm)), _cell(rec.get("scale_eval", {}).get(nm)),
               _cell(held_out),
               _cell(rec.get("params", {}).get(nm, {}).get("coverage_error"), held_out),
               _cell(rec.get("isotonic", {}).get(nm, {}).get("coverage_error"), held_out)],
        })
    return rows


#: Column names; s_test and s_fit as in :mod:`~cosmoinfer.calibration.verdict` (never a bare "scale").
SUMMARY_HEADER = ["parameter", "RMSE", "R²", "mean rel. err", "χ²", "NLL", "CRPS", "cov 68%", "cov 95%",
                  "coverage error", "mean σ", "s_fit", "s_test", "cov. err. before", "after ×s_fit",
                  "after isotonic"]
#: Header groups above SUMMARY_HEADER: (title, number of columns).
SUMMARY_GROUPS = [("", 1), ("all test maps", 10), ("fit", 1), ("the maps recalibration is judged on", 4)]


def _toc(sections: list[dict], comparison_rows: list, comparison_figs: list[_Figure]) -> list[dict]:
    """Table of contents: one entry per ``h2`` (its ``id``) with its subsections and figures."""
    toc = []
    if comparison_rows:
        toc.append({"id": "comparison", "title": "Comparison of methods",
                    "sub": [{"id": fg.anchor, "title": fg.title} for fg in comparison_figs]})
    for s in sections:
        sub = []
        if s["pred"].task == "regression":
            sub += [{"id": f"{s['id']}-{k}", "title": t} for k, t in
                    (("verdict", "Verdict"), ("summary", "Summary"), ("joint", "Joint calibration"))]
            if "exact" in s["metrics"]:
                sub.append({"id": f"{s['id']}-exact", "title": "Against the exact posterior"})
        else:
            sub.append({"id": f"{s['id']}-classification", "title": "Classification"})
        sub += [{"id": fg.anchor, "title": fg.title} for fg in s["figures"]]
        toc.append({"id": s["id"], "title": s["label"], "sub": sub})
    return toc


def _render(context: dict) -> str:
    env = Environment(loader=FileSystemLoader(str(TEMPLATE_DIR)), autoescape=select_autoescape(["html", "j2"]),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = _fmt
    return env.get_template(TEMPLATE_NAME).render(**context)


def build_report(
    predictions: str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    val_predictions: str | os.PathLike | Sequence[str | os.PathLike | None] | None = None,
    labels: Sequence[str] | None = None,
    *,
    levels: Sequence[float] = DEFAULT_LEVELS,
    seed: int = 0,
    tarp_refs: int = 1,
    n_posterior_samples: int = 500,
    n_bootstrap: int = 100,
    dpi: int = figs.DPI,
) -> ReportPaths:
    """Write ``metrics.json``, ``figures/*.png`` and ``report.html`` into ``out_dir``.

    Args:
        predictions: one ``predictions.h5`` path or a list (e.g. single, ensemble, MC dropout).
        out_dir: output folder (created if needed).
        val_predictions: validation ``predictions.h5`` for each entry of ``predictions``, same order
            (a single path when there is one predictions file; ``None`` entries allowed). Without
            one, recalibration is fitted on a random half of the test items and judged on the
            other half, and the report says so.
        labels: display names, same order (default: the files' ``method`` attributes).
        levels: nominal central-interval levels for coverage curves and ``coverage_error``.
        seed: seeds the local RNG (posterior samples, TARP references, bootstrap, halves).
        tarp_refs: independent sets of TARP reference points.
        n_posterior_samples: Gaussian posterior draws per item for TARP and SBC.
        n_bootstrap: TARP bootstrap resamples.
        dpi: figure resolution.

    Returns:
        :class:`ReportPaths`. Bad input raises :class:`~cosmoinfer.errors.InputError`.
    """
    paths = _as_list(predictions)
    if not paths:
        raise InputError(None, "predictions: no predictions.h5 given")
    vals = _as_list(val_predictions)
    if vals is not None and len(vals) != len(paths):
        raise InputError(None, f"val_predictions: {len(vals)} path(s) for {len(paths)} predictions file(s); "
                               "give one per predictions file, in the same order")
    vals = vals or [None] * len(paths)
    if isinstance(labels, str):
        labels = [labels]
    if labels is not None and len(labels) != len(paths):
        raise InputError(None, f"labels: {len(labels)} label(s) for {len(paths)} predictions file(s)")
    levels = tuple(float(x) for x in levels)
    if not levels or any(not 0 < x < 1 for x in levels):
        raise InputError(None, f"levels: every level must lie strictly between 0 and 1, got {list(levels)}")

    preds = [read_predictions(p) for p in paths]
    val_preds = [None if v is None else read_predictions(v) for v in vals]
    tasks = {p.task for p in preds}
    if len(tasks) > 1:
        raise InputError(paths[1], "cannot mix classification and regression predictions in one report")
    for p in preds:
        if p.n < MIN_ITEMS:
            raise InputError(p.path, f"dataset 'truth' has {p.n} items; the report needs at least {MIN_ITEMS}")
    for p, v in zip(preds, val_preds):
        if v is not None:
            if v.param_names != p.param_names:
                raise InputError(v.path, f"attribute 'param_names' is {v.param_names}, but the test predictions "
                                         f"{p.path} have {p.param_names}")
            if v.task != p.task:
                raise InputError(v.path, f"task is {v.task!r} but the test predictions are {p.task!r}")
    labels = list(labels) if labels is not None else _default_labels(preds)
    if len(set(labels)) < len(labels):
        raise InputError(None, f"labels: must be distinct, got {labels}")

    out_dir = Path(out_dir)
    opts = {"n_posterior_samples": int(n_posterior_samples), "tarp_refs": int(tarp_refs),
            "n_bootstrap": int(n_bootstrap)}
    seqs = np.random.SeedSequence(int(seed)).spawn(len(preds))
    blocks, sections = [], []
    all_tarp, all_curves = {}, {}
    for i, (label, pred, val) in enumerate(zip(labels, preds, val_preds)):
        rng = np.random.default_rng(seqs[i])
        slug = f"{i + 1}_{_slug(label)}"
        if pred.task == "classification":
            m, fig_list = _analyse_classification(label, pred, val, rng, dpi)
            verdicts, arrays = [], {}
        else:
            m, fig_list, verdicts, arrays, _ = _analyse_regression(label, pred, val, levels, rng, opts, dpi)
            all_tarp[label] = arrays["tarp"]
            all_curves[label] = arrays
        for fg in fig_list:
            fg.file = f"figures/{slug}_{fg.key}.png"
        blocks.append(m)
        for fg in fig_list:
            fg.dpi = dpi
        single_net = pred.task == "regression" and not np.any(pred.std_epistemic > 0)
        sections.append({
            "label": label, "pred": pred, "metrics": m, "figures": fig_list, "id": f"m{slug}",
            "verdicts": [v.text for v in verdicts], "statuses": [v.status for v in verdicts],
            "rows": _summary_rows(m) if pred.task == "regression" else [],
            "fit_on": m["recalibrated"].get("fit_on", ""), "val_given": val is not None,
            "no_epistemic": ("One network and no stochastic passes: the predictive has no epistemic part (no spread "
                             "between networks), so all of its width is aleatoric and there is no split to draw."
                             if single_net else ""),
        })

    comparison_figs: list[_Figure] = []
    comparison_rows: list[dict] = []
    if len(preds) > 1:
        for b in blocks:
            for nm, d in b["params"].items():
                if b.get("task") == "classification":
                    cells = [_fmt(d.get(k)) for k in ("accuracy", "log_loss", "brier", "ece")]
                else:
                    cells = [_fmt(d.get(k)) for k in ("rmse", "r2", "nll", "crps", "chi2", "coverage_error",
                                                      "mean_std")]
                    cells += [_fmt(d["coverage"].get("0.68")), _fmt(d["coverage"].get("0.95")),
                              _fmt(b["recalibrated"].get("scale_eval", {}).get(nm)),
                              _fmt(b["recalibrated"]["scale"].get(nm)), _fmt(b["joint"].get("tarp_atc")),
                              _fmt(b["joint"].get("tarp_ks_pvalue"))]
                comparison_rows.append({"label": b["label"], "param": nm, "cells": cells})
        if all_curves:
            common = [nm for nm in preds[0].param_names if all(nm in p.param_names for p in preds)]
            curves = {lab: a["coverage_curve"][:, [p.param_names.index(nm) for nm in common]]
                      for (lab, a), p in zip(all_curves.items(), preds)}
            g_min = min(bysim.n_sims(p.sim_id) for p in preds)
            comparison_figs.append(_Figure(
                "comparison_calibration", "Calibration of all methods",
                "Empirical vs nominal coverage on the test maps, before recalibration; grey: 95% band of a "
                f"calibrated predictor for {g_min} independent simulations.",
                figs.calibration_curves(levels, curves, g_min, common, dpi=dpi)))
            comparison_figs.append(_Figure("comparison_tarp", "TARP of all methods", "",
                                           figs.tarp_curve(all_tarp, dpi=dpi)))
        else:
            comparison_figs.append(_Figure(
                "comparison_reliability", "Reliability of all methods", "",
                figs.reliability_diagram({b["label"]: next(iter(b["params"].values()))["reliability"]
                                          for b in blocks}, dpi=dpi)))
        for fg in comparison_figs:
            fg.file = f"figures/0_{fg.key}.png"
            fg.dpi = dpi

    doc = dict(blocks[0])
    if len(blocks) > 1:
        doc["comparison"] = blocks
    doc["levels"] = list(levels)
    doc["seed"] = int(seed)
    doc = _jsonable(doc)
    doc_json = json.dumps(doc, indent=2, allow_nan=False) + "\n"
    head = headline(doc)

    task = preds[0].task
    comparison_header = (["method", "parameter", "accuracy", "log-loss", "Brier", "ECE"] if task == "classification"
                         else ["method", "parameter", "RMSE", "R²", "NLL", "CRPS", "χ²", "coverage error", "mean σ",
                               "cov 68%", "cov 95%", "s_test", "s_fit", "TARP ATC", "TARP KS p"])
    html = _render({
        "title": "cosmoinfer calibration report",
        "generated": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "task": task, "sections": sections, "summary_header": SUMMARY_HEADER, "summary_groups": SUMMARY_GROUPS,
        "comparison_rows": comparison_rows, "comparison_header": comparison_header,
        "comparison_figs": comparison_figs, "levels": levels, "seed": seed, "opts": opts,
        "headline": head, "toc": _toc(sections, comparison_rows, comparison_figs),
    })

    # All computed: now write the whole set at once.
    files = {fg.file: fg.png for fg in comparison_figs + [fg for s in sections for fg in s["figures"]]}
    files["metrics.json"] = doc_json.encode()
    files["report.html"] = html.encode()
    publish(out_dir, files)
    return ReportPaths(html=out_dir / "report.html", metrics=out_dir / "metrics.json",
                       figures=[out_dir / name for name in files if name.startswith("figures/")])


def publish(out_dir: Path, files: dict[str, bytes]) -> None:
    """Write the report's files (``figures/*.png``, ``metrics.json``, ``report.html``) as one set.

    Everything is written into a temporary folder inside ``out_dir`` first; a failure there (a full
    disk) leaves the previous report untouched. Then the previous ``report.html`` goes, the new
    ``figures/`` replaces the old one whole, ``metrics.json`` follows, and ``report.html`` comes
    last: one run's metrics never sit beside another run's HTML, and a ``report.html`` that exists
    belongs to the ``metrics.json`` and figures beside it.
    """
    import shutil
    import tempfile

    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".report-", dir=out_dir))
    try:
        for name, data in files.items():
            path = staging / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        (out_dir / "report.html").unlink(missing_ok=True)
        if (out_dir / "figures").exists():
            shutil.rmtree(out_dir / "figures")
        if (staging / "figures").is_dir():
            os.replace(staging / "figures", out_dir / "figures")
        os.replace(staging / "metrics.json", out_dir / "metrics.json")
        os.replace(staging / "report.html", out_dir / "report.html")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
