"""Calibration and accuracy figures of the report, rendered with matplotlib's Agg canvas straight to PNG bytes.

Every function returns the PNG as ``bytes`` (the report both writes it to ``figures/`` and embeds
it as a base64 data URI). The object-oriented API (``Figure`` + ``FigureCanvasAgg``) is used so
that no global pyplot state or interactive backend is touched.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from scipy import stats

from cosmoinfer.calibration.coverage import binomial_band
from cosmoinfer.calibration.figure_style import (  # noqa: F401  (CSS_PX_PER_INCH, FULL_WIDTH re-exported)
    COLORS,
    CSS_PX_PER_INCH,
    DPI,
    FULL_WIDTH,
    fits_one_row,
    new_figure,
    prior_mean,
    side_legend,
    single_with_side_legend,
    styled,
    to_png,
    top_legend,
)
from cosmoinfer.calibration.posterior_figures import corner, corner_draws, exact_comparison  # noqa: F401


@styled
def truth_vs_prediction(truth, mean, std, names: Sequence[str], max_points: int = 400,
                        rng: np.random.Generator | None = None, priors=None, dpi: int = DPI) -> bytes:
    """The CMD-paper figure: predicted mean ± 1σ against the truth, one panel per parameter.

    With ``priors`` (same order as ``names``) the prior range is drawn (dashed lines, the area
    outside shaded) with the prior mean (dotted): predictions of an uninformative map shrink
    towards the prior mean, and cannot leave the prior box. Log-uniform parameters get log axes.
    """
    truth, mean, std = map(np.asarray, (truth, mean, std))
    n = truth.shape[0]
    idx = np.arange(n)
    if n > max_points:
        idx = np.sort((rng or np.random.default_rng(0)).choice(n, max_points, replace=False))
    by_name = {pr.name: pr for pr in (priors or [])}
    fig, axes = new_figure(len(names), legend_rows=1)
    handles, labels = [], []
    for j, (ax, name) in enumerate(zip(axes, names)):
        t, m, s = truth[idx, j], mean[idx, j], std[idx, j]
        h_pts = ax.errorbar(t, m, yerr=s, fmt="o", ms=3, lw=0.7, alpha=0.6, color=COLORS[0], ecolor="0.6")
        pr = by_name.get(name)
        if pr is not None:
            lo, hi = float(pr.low), float(pr.high)
            if pr.log:
                ax.set_xscale("log")
                ax.set_yscale("log")
                pad = (hi / lo) ** 0.05
                x0, x1 = lo / pad, hi * pad
            else:
                pad = 0.05 * (hi - lo)
                x0, x1 = lo - pad, hi + pad
            y0 = min(x0, float(np.min(m - s)))
            y1 = max(x1, float(np.max(m + s)))
            if pr.log:
                y0 = max(y0, lo / pad ** 3)
            for a, b in ((y0, lo), (hi, y1)):
                ax.axhspan(a, b, color="0.9", zorder=0)
            for a, b in ((x0, lo), (hi, x1)):
                ax.axvspan(a, b, color="0.9", zorder=0)
            h_box = ax.axhline(lo, color="0.35", ls="--", lw=1)
            ax.axhline(hi, color="0.35", ls="--", lw=1)
            ax.axvline(lo, color="0.35", ls="--", lw=1)
            ax.axvline(hi, color="0.35", ls="--", lw=1)
            h_mean = ax.axhline(prior_mean(pr), color=COLORS[4], ls=":", lw=1.6)
            h_diag, = ax.plot([x0, x1], [x0, x1], "k-", lw=1)
            ax.set_xlim(x0, x1)
            ax.set_ylim(y0, y1)
        else:
            lo, hi = np.min(truth[:, j]), np.max(truth[:, j])
            pad = 0.05 * (hi - lo if hi > lo else 1)
            h_diag, = ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k-", lw=1)
        rm = np.sqrt(np.mean((mean[:, j] - truth[:, j]) ** 2))
        r2 = 1 - np.sum((mean[:, j] - truth[:, j]) ** 2) / max(np.sum((truth[:, j] - truth[:, j].mean()) ** 2), 1e-300)
        ax.set_xlabel(f"true {name}")
        ax.set_ylabel(f"predicted {name}")
        ax.set_title(f"{name}: RMSE {rm:.3g}, R² {r2:.3f}")
        if j == 0:
            handles, labels = [h_pts, h_diag], ["predicted mean ± 1σ", "prediction = truth"]
            if pr is not None:
                handles += [h_box, h_mean]
                labels += ["prior range (outside shaded)", "prior mean"]
    top_legend(fig, handles, labels)
    return to_png(fig, dpi)


@styled
def calibration_curves(levels, curves: Mapping[str, np.ndarray], n: int, names: Sequence[str],
                       title: str = "", band=None, dpi: int = DPI) -> bytes:
    """Empirical vs nominal coverage per parameter, with the 95% band of a calibrated predictor.

    ``curves`` maps a label (e.g. "original", "width scaling", or a method name) to an ``(L, P)``
    array of empirical coverage. ``band``: ``(lo, hi)`` each ``(L, P)`` (bootstrap over
    simulations); default the binomial band of ``n`` independent items (simulations). One legend
    above the panels.
    """
    lv = np.asarray(levels, dtype=np.float64)
    if band is None:
        lo, hi = binomial_band(n, lv)
        lo, hi = np.repeat(lo[:, None], len(names), 1), np.repeat(hi[:, None], len(names), 1)
    else:
        lo, hi = band
    band_label = f"95% band of a calibrated predictor ({n} simulations)"
    one_row = fits_one_row([band_label, *curves])  # otherwise rows of 4, filled column by column
    fig, axes = new_figure(len(names), legend_rows=1 if one_row else 1 + (len(curves) + 1) // 4)
    styles = ["-", "--", ":", "-."]
    for j, (ax, name) in enumerate(zip(axes, names)):
        ax.fill_between(lv, lo[:, j], hi[:, j], color="0.85", label=band_label)
        ax.plot([0, 1], [0, 1], "k-", lw=0.8)
        for i, (label, cov) in enumerate(curves.items()):
            ax.plot(lv, np.asarray(cov)[:, j], styles[i % len(styles)], marker="o", ms=3.5, lw=1.6,
                    color=COLORS[i % len(COLORS)], label=label)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("nominal coverage")
        ax.set_ylabel("empirical coverage")
        ax.set_title(name)
    handles, labels = axes[0].get_legend_handles_labels()
    top_legend(fig, handles, labels, ncol=len(handles) if one_row else min(len(handles), 4))
    if title:
        fig.suptitle(title)
    return to_png(fig, dpi)


@styled
def pit_histogram(pit_values, names: Sequence[str], bins: int = 20, dpi: int = DPI) -> bytes:
    """PIT histograms (flat if calibrated; ∪-shaped if too narrow, ∩-shaped if too wide)."""
    p = np.asarray(pit_values)
    n = p.shape[0]
    fig, axes = new_figure(len(names), legend_rows=1)
    exp = n / bins
    lo, hi = stats.binom.ppf([0.025, 0.975], n, 1 / bins)
    for j, (ax, name) in enumerate(zip(axes, names)):
        ax.axhspan(lo, hi, color="0.85", label="95% band per bin (independent maps)")
        ax.hist(p[:, j], bins=bins, range=(0, 1), color=COLORS[0], alpha=0.8, label="PIT of the test maps")
        ax.axhline(exp, color="k", lw=0.8, label="uniform")
        ax.set_xlabel("PIT = predicted CDF at the truth")
        ax.set_ylabel("maps per bin")
        ax.set_title(name)
    top_legend(fig, *axes[0].get_legend_handles_labels())
    return to_png(fig, dpi)


@styled
def zscore_histogram(z, names: Sequence[str], dpi: int = DPI) -> bytes:
    """Histogram of ``(truth − mean)/std`` against the N(0, 1) density."""
    z = np.asarray(z)
    fig, axes = new_figure(len(names), legend_rows=1)
    x = np.linspace(-5, 5, 300)
    for j, (ax, name) in enumerate(zip(axes, names)):
        ax.hist(np.clip(z[:, j], -5, 5), bins=40, range=(-5, 5), density=True, color=COLORS[0], alpha=0.7,
                label="z of the test maps (clipped at ±5)")
        ax.plot(x, stats.norm.pdf(x), "k-", lw=1.4, label="N(0, 1)")
        ax.set_xlabel("z = (truth − mean) / std")
        ax.set_ylabel("density")
        ax.set_title(f"{name}: std(z) = {np.std(z[:, j]):.2f}")
    top_legend(fig, *axes[0].get_legend_handles_labels())
    return to_png(fig, dpi)


@styled
def tarp_curve(results: Mapping[str, object], dpi: int = DPI) -> bytes:
    """TARP expected coverage vs credibility level, with bootstrap bands (one curve per label).

    The legend (label, ATC, KS p-value) sits to the right of the square panel, never over it.
    """
    fig, ax = single_with_side_legend()
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="calibrated")
    for i, (label, r) in enumerate(results.items()):
        c = COLORS[i % len(COLORS)]
        ax.fill_between(r.alpha, r.ecp_lo, r.ecp_hi, color=c, alpha=0.2)
        ax.plot(r.alpha, r.ecp, color=c, lw=1.8, label=f"{label}: ATC {r.atc:+.3f}, KS p = {r.ks_pvalue:.2g}")
    ax.set_xlabel("credibility level α")
    ax.set_ylabel("expected coverage")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title("TARP (shaded: 95% bootstrap band)")
    side_legend(ax)
    return to_png(fig, dpi)


@styled
def std_vs_error(truth, mean, std, names: Sequence[str], n_bins: int = 10, dpi: int = DPI) -> bytes:
    """Predicted std vs |error| (scatter), with binned RMSE against binned RMS std (should follow y = x)."""
    truth, mean, std = map(np.asarray, (truth, mean, std))
    err = np.abs(mean - truth)
    fig, axes = new_figure(len(names), legend_rows=1)
    for j, (ax, name) in enumerate(zip(axes, names)):
        s, e = std[:, j], err[:, j]
        floor = 1e-2 * float(np.median(s))  # |errors| below 1% of a typical sigma are drawn at the floor
        ax.scatter(s, np.maximum(e, floor), s=5, alpha=0.35, color="0.5", label="one test map")
        q = np.quantile(s, np.linspace(0, 1, n_bins + 1))
        which = np.clip(np.searchsorted(q, s, side="right") - 1, 0, n_bins - 1)
        rms_s = np.array([np.sqrt(np.mean(s[which == b] ** 2)) if np.any(which == b) else np.nan
                          for b in range(n_bins)])
        rmse = np.array([np.sqrt(np.mean(e[which == b] ** 2)) if np.any(which == b) else np.nan
                         for b in range(n_bins)])
        ax.plot(rms_s, rmse, "o-", color=COLORS[1], lw=1.6, label="RMSE in bins of predicted std")
        lim = [np.nanmin(s) * 0.9, np.nanmax(s) * 1.1]
        ax.plot(lim, lim, "k--", lw=1, label="|error| = std (honest widths)")
        ax.set_yscale("log")  # |errors| span decades; widths rarely do, so x stays linear
        ax.set_ylim(floor * 0.8, max(float(e.max()), lim[1]) * 1.5)
        ax.set_xlabel(f"predicted std of {name}")
        ax.set_ylabel("|error|")
        ax.set_title(name)
    top_legend(fig, *axes[0].get_legend_handles_labels())
    return to_png(fig, dpi)


@styled
def aleatoric_epistemic(std_aleatoric, std_epistemic, names: Sequence[str], dpi: int = DPI) -> bytes:
    """Aleatoric vs epistemic std per item, and the mean variance fractions in the title."""
    a, e = np.asarray(std_aleatoric), np.asarray(std_epistemic)
    fig, axes = new_figure(len(names), legend_rows=1)
    for j, (ax, name) in enumerate(zip(axes, names)):
        tot = a[:, j] ** 2 + e[:, j] ** 2
        frac = float(np.mean(e[:, j] ** 2 / np.where(tot > 0, tot, 1)))
        ax.scatter(a[:, j], e[:, j], s=5, alpha=0.4, color=COLORS[2], label="one test map")
        top = max(float(a[:, j].max()), float(e[:, j].max()), 1e-300)
        ax.plot([0, top], [0, top], "k--", lw=1, label="equal parts")
        ax.set_xlabel("aleatoric std")
        ax.set_ylabel("epistemic std")
        ax.set_title(f"{name}: epistemic {100 * frac:.0f}% of variance")
    top_legend(fig, *axes[0].get_legend_handles_labels())
    return to_png(fig, dpi)


@styled
def reliability_diagram(curves: Mapping[str, list], dpi: int = DPI) -> bytes:
    """Reliability diagram of classification probabilities; ``curves`` maps a label to the bins
    of :func:`~cosmoinfer.calibration.metrics.classification_metrics`."""
    fig, ax = single_with_side_legend()
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="calibrated")
    for i, (label, bins) in enumerate(curves.items()):
        xs = [b["mean_prob"] for b in bins if b["count"]]
        ys = [b["frac_pos"] for b in bins if b["count"]]
        ax.plot(xs, ys, "o-", color=COLORS[i % len(COLORS)], lw=1.6, label=label)
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed frequency")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title("reliability")
    side_legend(ax)
    return to_png(fig, dpi)
