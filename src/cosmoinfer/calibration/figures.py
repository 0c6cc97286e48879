"""Report figures, rendered with matplotlib's Agg canvas straight to PNG bytes.

Every function returns the PNG as ``bytes`` (the report both writes it to ``figures/`` and embeds
it as a base64 data URI). The object-oriented API (``Figure`` + ``FigureCanvasAgg``) is used so
that no global pyplot state or interactive backend is touched.
"""

from __future__ import annotations

import io
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Ellipse
from scipy import stats
from scipy.ndimage import gaussian_filter

from cosmoinfer.calibration.metrics import binomial_band

DPI = 90
_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def _margins(fig: Figure, rows: int, cols: int, top: float = 0.45) -> None:
    """Fixed margins in inches (a layout engine costs a second draw per figure)."""
    w, h = fig.get_size_inches()
    fig.subplots_adjust(left=0.8 / w, right=1 - 0.15 / w, bottom=0.6 / h, top=1 - top / h,
                        wspace=0.95 * cols / (w - 0.95 * cols) if cols > 1 else 0.2,
                        hspace=0.9 * rows / (h - 0.9 * rows) if rows > 1 else 0.2)


def _new(n_panels: int, height: float = 3.2, width: float = 3.4, max_cols: int = 4):
    cols = min(n_panels, max_cols)
    rows = int(np.ceil(n_panels / cols))
    fig = Figure(figsize=(width * cols, height * rows), layout=None)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n_panels)]
    _margins(fig, rows, cols)
    return fig, axes


def _png(fig: Figure, dpi: int = DPI) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def truth_vs_prediction(truth, mean, std, names: Sequence[str], max_points: int = 400,
                        rng: np.random.Generator | None = None, dpi: int = DPI) -> bytes:
    """The CMD-paper figure: predicted mean ± 1σ against the truth, one panel per parameter."""
    truth, mean, std = map(np.asarray, (truth, mean, std))
    n = truth.shape[0]
    idx = np.arange(n)
    if n > max_points:
        idx = np.sort((rng or np.random.default_rng(0)).choice(n, max_points, replace=False))
    fig, axes = _new(len(names))
    for j, (ax, name) in enumerate(zip(axes, names)):
        t, m, s = truth[idx, j], mean[idx, j], std[idx, j]
        ax.errorbar(t, m, yerr=s, fmt="o", ms=2.5, lw=0.6, alpha=0.6, color=_COLORS[0], ecolor="0.6")
        lo, hi = np.min(truth[:, j]), np.max(truth[:, j])
        pad = 0.05 * (hi - lo if hi > lo else 1)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=1)
        rm = np.sqrt(np.mean((mean[:, j] - truth[:, j]) ** 2))
        r2 = 1 - np.sum((mean[:, j] - truth[:, j]) ** 2) / max(np.sum((truth[:, j] - truth[:, j].mean()) ** 2), 1e-300)
        ax.text(0.04, 0.96, f"RMSE={rm:.3g}\nR²={r2:.3f}", transform=ax.transAxes, va="top", fontsize=8)
        ax.set_xlabel(f"true {name}")
        ax.set_ylabel(f"predicted {name}")
        ax.set_title(name)
    return _png(fig, dpi)


def calibration_curves(levels, curves: Mapping[str, np.ndarray], n: int, names: Sequence[str],
                       title: str = "", band=None, dpi: int = DPI) -> bytes:
    """Empirical vs nominal coverage per parameter, with the 95% band of a calibrated predictor.

    ``curves`` maps a label (e.g. "original", "width scaling", or a method name) to an ``(L, P)``
    array of empirical coverage. ``band``: ``(lo, hi)`` each ``(L, P)`` (bootstrap over
    simulations); default the binomial band of ``n`` independent items (simulations).
    """
    lv = np.asarray(levels, dtype=np.float64)
    if band is None:
        lo, hi = binomial_band(n, lv)
        lo, hi = np.repeat(lo[:, None], len(names), 1), np.repeat(hi[:, None], len(names), 1)
        band_label = f"95% band, {n} simulations"
    else:
        lo, hi = band
        band_label = f"95% band ({n} simulations)"
    fig, axes = _new(len(names))
    styles = ["-", "--", ":", "-."]
    for j, (ax, name) in enumerate(zip(axes, names)):
        ax.fill_between(lv, lo[:, j], hi[:, j], color="0.85", label=band_label)
        ax.plot([0, 1], [0, 1], "k-", lw=0.8)
        for i, (label, cov) in enumerate(curves.items()):
            ax.plot(lv, np.asarray(cov)[:, j], styles[i % len(styles)], marker="o", ms=3,
                    color=_COLORS[i % len(_COLORS)], label=label)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("nominal coverage")
        ax.set_ylabel("empirical coverage")
        ax.set_title(name)
        if j == 0:
            ax.legend(fontsize=7, loc="upper left")
    if title:
        fig.suptitle(title)
    return _png(fig, dpi)


def pit_histogram(pit_values, names: Sequence[str], bins: int = 20, dpi: int = DPI) -> bytes:
    """PIT histograms (flat if calibrated; ∪-shaped if too narrow, ∩-shaped if too wide)."""
    p = np.asarray(pit_values)
    n = p.shape[0]
    fig, axes = _new(len(names))
    exp = n / bins
    lo, hi = stats.binom.ppf([0.025, 0.975], n, 1 / bins)
    for j, (ax, name) in enumerate(zip(axes, names)):
        ax.axhspan(lo, hi, color="0.85", label="95% band")
        ax.hist(p[:, j], bins=bins, range=(0, 1), color=_COLORS[0], alpha=0.8)
        ax.axhline(exp, color="k", lw=0.8)
        ax.set_xlabel("PIT")
        ax.set_ylabel("count")
        ax.set_title(name)
    return _png(fig, dpi)


def zscore_histogram(z, names: Sequence[str], dpi: int = DPI) -> bytes:
    """Histogram of ``(truth − mean)/std`` against the N(0, 1) density."""
    z = np.asarray(z)
    fig, axes = _new(len(names))
    x = np.linspace(-5, 5, 300)
    for j, (ax, name) in enumerate(zip(axes, names)):
        ax.hist(np.clip(z[:, j], -5, 5), bins=40, range=(-5, 5), density=True, color=_COLORS[0], alpha=0.7)
        ax.plot(x, stats.norm.pdf(x), "k-", lw=1.2, label="N(0,1)")
        ax.set_xlabel("z = (truth − mean) / std")
        ax.set_title(f"{name}: std(z)={np.std(z[:, j]):.2f}")
        if j == 0:
            ax.legend(fontsize=7)
    return _png(fig, dpi)


def tarp_curve(results: Mapping[str, object], dpi: int = DPI) -> bytes:
    """TARP expected coverage vs credibility level, with bootstrap bands (one curve per label)."""
    fig, (ax,) = _new(1, height=3.6, width=3.8)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    for i, (label, r) in enumerate(results.items()):
        c = _COLORS[i % len(_COLORS)]
        ax.fill_between(r.alpha, r.ecp_lo, r.ecp_hi, color=c, alpha=0.2)
        ax.plot(r.alpha, r.ecp, color=c, label=f"{label} (ATC={r.atc:+.3f}, KS p={r.ks_pvalue:.2g})")
    ax.set_xlabel("credibility level α")
    ax.set_ylabel("expected coverage")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title("TARP")
    ax.legend(fontsize=7, loc="upper left")
    return _png(fig, dpi)


def std_vs_error(truth, mean, std, names: Sequence[str], n_bins: int = 10, dpi: int = DPI) -> bytes:
    """Predicted std vs |error| (scatter), with binned RMSE against binned RMS std (should follow y = x)."""
    truth, mean, std = map(np.asarray, (truth, mean, std))
    err = np.abs(mean - truth)
    fig, axes = _new(len(names))
    for j, (ax, name) in enumerate(zip(axes, names)):
        s, e = std[:, j], err[:, j]
        floor = 1e-2 * float(np.median(s))  # |errors| below 1% of a typical sigma are drawn at the floor
        ax.scatter(s, np.maximum(e, floor), s=3, alpha=0.35, color="0.5", label="items")
        q = np.quantile(s, np.linspace(0, 1, n_bins + 1))
        which = np.clip(np.searchsorted(q, s, side="right") - 1, 0, n_bins - 1)
        rms_s = np.array([np.sqrt(np.mean(s[which == b] ** 2)) if np.any(which == b) else np.nan
                          for b in range(n_bins)])
        rmse = np.array([np.sqrt(np.mean(e[which == b] ** 2)) if np.any(which == b) else np.nan
                         for b in range(n_bins)])
        ax.plot(rms_s, rmse, "o-", color=_COLORS[1], label="binned RMSE vs RMS std")
        lim = [np.nanmin(s) * 0.9, np.nanmax(s) * 1.1]
        ax.plot(lim, lim, "k--", lw=0.8, label="|error| = std")
        ax.set_yscale("log")  # |errors| span decades; widths rarely do, so x stays linear
        ax.set_ylim(floor * 0.8, max(float(e.max()), lim[1]) * 1.5)
        ax.set_xlabel(f"predicted std ({name})")
        ax.set_ylabel("|error|")
        ax.set_title(name)
        if j == 0:
            ax.legend(fontsize=7)
    return _png(fig, dpi)


def aleatoric_epistemic(std_aleatoric, std_epistemic, names: Sequence[str], dpi: int = DPI) -> bytes:
    """Aleatoric vs epistemic std per item, and the mean variance fractions in the title."""
    a, e = np.asarray(std_aleatoric), np.asarray(std_epistemic)
    fig, axes = _new(len(names))
    for j, (ax, name) in enumerate(zip(axes, names)):
        tot = a[:, j] ** 2 + e[:, j] ** 2
        frac = float(np.mean(e[:, j] ** 2 / np.where(tot > 0, tot, 1)))
        ax.scatter(a[:, j], e[:, j], s=3, alpha=0.4, color=_COLORS[2])
        top = max(float(a[:, j].max()), float(e[:, j].max()), 1e-300)
        ax.plot([0, top], [0, top], "k--", lw=0.8)
        ax.set_xlabel("aleatoric std")
        ax.set_ylabel("epistemic std")
        ax.set_title(f"{name}: epistemic {100 * frac:.0f}% of variance", fontsize=9)
    return _png(fig, dpi)


def _ellipse(ax, mean2, cov2, nsig: float, color, **kw):
    vals, vecs = np.linalg.eigh(cov2)
    angle = np.degrees(np.arctan2(vecs[1, -1], vecs[0, -1]))
    r = np.sqrt(stats.chi2.ppf(stats.chi2.cdf(nsig**2, 1), 2))  # 2-D region with the 1-D nσ mass
    w, h = 2 * r * np.sqrt(vals[-1]), 2 * r * np.sqrt(vals[0])
    ax.add_patch(Ellipse(mean2, w, h, angle=angle, fill=False, color=color, **kw))


def corner(truth, mean, cov, names: Sequence[str], n_show: int = 3, max_params: int = 4,
           rng: np.random.Generator | None = None, dpi: int = DPI) -> bytes:
    """Corner view of a few full-covariance posteriors: 1σ/2σ ellipses per parameter pair, truth marked."""
    truth, mean, cov = map(np.asarray, (truth, mean, cov))
    p = min(len(names), max_params)
    n = truth.shape[0]
    pick = (rng or np.random.default_rng(0)).choice(n, min(n_show, n), replace=False)
    k = max(p - 1, 1)
    fig = Figure(figsize=(2.8 * k + 0.5, 2.8 * k + 0.3), layout=None)
    FigureCanvasAgg(fig)
    _margins(fig, k, k, top=0.55)
    for r in range(1, p):
        for c in range(r):
            ax = fig.add_subplot(k, k, (r - 1) * k + c + 1)
            for i, item in enumerate(pick):
                col = _COLORS[i % len(_COLORS)]
                idx = [c, r]
                c2 = cov[item][np.ix_(idx, idx)]
                for nsig, ls in ((1, "-"), (2, "--")):
                    _ellipse(ax, mean[item, idx], c2, nsig, col, ls=ls, lw=1.2)
                ax.plot(*truth[item, idx], "*", color=col, ms=9, mec="k", mew=0.5)
                ax.plot(*mean[item, idx], "+", color=col, ms=7)
            ax.autoscale_view()
            pts = np.concatenate([truth[pick][:, [c, r]], mean[pick][:, [c, r]]])
            sd = np.sqrt(np.stack([cov[pick][:, c, c], cov[pick][:, r, r]], axis=1))
            lo = np.min(np.concatenate([pts, mean[pick][:, [c, r]] - 2.6 * sd]), axis=0)
            hi = np.max(np.concatenate([pts, mean[pick][:, [c, r]] + 2.6 * sd]), axis=0)
            ax.set_xlim(lo[0], hi[0])
            ax.set_ylim(lo[1], hi[1])
            ax.set_xlabel(names[c])
            ax.set_ylabel(names[r])
    if p < 2:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "one parameter: no pairs", ha="center")
    fig.suptitle("posterior ellipses (1σ solid, 2σ dashed; ★ truth)", fontsize=9)
    return _png(fig, dpi)


def _hpd_levels(h: np.ndarray, masses=(0.68, 0.95)) -> list[float]:
    """Density thresholds of a histogram ``h`` enclosing the given masses (highest bins first)."""
    flat = np.sort(h.ravel())[::-1]
    cum = np.cumsum(flat) / max(flat.sum(), 1e-300)
    return sorted({float(flat[min(np.searchsorted(cum, m), flat.size - 1)]) for m in masses})


def corner_draws(draws, truth, names: Sequence[str], exact: Mapping | None = None, s8: str | None = None,
                 priors=None, max_params: int = 4, dpi: int = DPI) -> bytes:
    """Corner plot of a few maps' predictive from draws ``(S, n, P)``; truths ``(n, P)`` marked.

    Each parameter pair shows the 68% / 95% highest-density contours of the draws (2-D histogram),
    one colour per map; ``exact`` (``index``, ``omega_m (n, G)``, ``sigma_8 (n, G)``,
    ``log_density (n, G, G)``) adds the exact posterior's contours in black on the
    (Omega_m, sigma_8) panel. ``s8``: add a panel of the derived S8 marginals. Prior bounds are
    the axis limits where ``priors`` are given.
    """
    draws, truth = np.asarray(draws), np.asarray(truth)
    p = min(len(names), max_params)
    pairs = [(c, r) for r in range(1, p) for c in range(r)]
    n_pan = len(pairs) + (1 if s8 else 0)
    fig, axes = _new(n_pan, height=3.6, width=3.8, max_cols=3)
    ex_idx = {}
    if exact is not None and "Omega_m" in names and "sigma_8" in names:
        ex_idx = {(names.index("Omega_m"), names.index("sigma_8")): True}
    for ax, (c, r) in zip(axes, pairs):
        for i in range(truth.shape[0]):
            col = _COLORS[i % len(_COLORS)]
            x, y = draws[:, i, c], draws[:, i, r]
            h, xe, ye = np.histogram2d(x, y, bins=30)
            h = gaussian_filter(h, 1.0)  # smooth the draws' histogram so the contours are not noise
            xc, yc = 0.5 * (xe[1:] + xe[:-1]), 0.5 * (ye[1:] + ye[:-1])
            lev = _hpd_levels(h)
            if len(lev) > 1:
                ax.contour(xc, yc, h.T, levels=lev, colors=[col], linewidths=[1.4, 0.8][:len(lev)])
            ax.plot(truth[i, c], truth[i, r], "*", color=col, ms=10, mec="k", mew=0.5)
            if ((c, r) in ex_idx or (r, c) in ex_idx) and i < np.asarray(exact["omega_m"]).shape[0]:
                om, sg, ld = (np.asarray(exact[k])[i] for k in ("omega_m", "sigma_8", "log_density"))
                if True:
                    dens = np.exp(ld - ld.max())
                    xs, ys, z = (om, sg, dens.T) if names[c] == "Omega_m" else (sg, om, dens)
                    lev = _hpd_levels(dens)
                    if len(lev) > 1:
                        ax.contour(xs, ys, z, levels=lev, colors="k", linewidths=[1.4, 0.8][:len(lev)])
        if priors is not None:
            ax.set_xlim(priors[c].low, priors[c].high)
            ax.set_ylim(priors[r].low, priors[r].high)
        ax.set_xlabel(names[c])
        ax.set_ylabel(names[r])
    if s8:
        ax = axes[len(pairs)]
        i_om, i_s8 = names.index("Omega_m"), names.index("sigma_8")
        for i in range(truth.shape[0]):
            col = _COLORS[i % len(_COLORS)]
            v = draws[:, i, i_s8] * np.sqrt(np.clip(draws[:, i, i_om], 0, None) / 0.3)
            ax.hist(v, bins=40, histtype="step", color=col, density=True)
            ax.axvline(truth[i, i_s8] * np.sqrt(truth[i, i_om] / 0.3), color=col, ls="--", lw=1)
        ax.set_xlabel("S8 = σ8 (Ωm/0.3)^0.5")
        ax.set_ylabel("density")
        ax.set_title("derived S8 (dashed: truth)", fontsize=9)
    return _png(fig, dpi)


def exact_comparison(truth, mean, std, exact_mean, exact_std, names: Sequence[str], dpi: int = DPI) -> bytes:
    """Network vs exact posterior: mean against exact mean (top), std against exact std (bottom)."""
    truth, mean, std, em, es = map(np.asarray, (truth, mean, std, exact_mean, exact_std))
    p = len(names)
    fig = Figure(figsize=(3.4 * p, 6.4), layout=None)
    FigureCanvasAgg(fig)
    _margins(fig, 2, p)
    for j, name in enumerate(names):
        ax = fig.add_subplot(2, p, j + 1)
        ax.scatter(em[:, j], mean[:, j], s=3, alpha=0.5, color=_COLORS[0])
        lim = [min(em[:, j].min(), mean[:, j].min()), max(em[:, j].max(), mean[:, j].max())]
        ax.plot(lim, lim, "k--", lw=0.8)
        eff = np.mean((em[:, j] - truth[:, j]) ** 2) / np.mean((mean[:, j] - truth[:, j]) ** 2)
        ax.set_title(f"{name}: efficiency {eff:.2f}", fontsize=9)
        ax.set_xlabel("exact posterior mean")
        ax.set_ylabel("network mean")
        ax = fig.add_subplot(2, p, p + j + 1)
        ax.scatter(es[:, j], std[:, j], s=3, alpha=0.5, color=_COLORS[1])
        lim = [min(es[:, j].min(), std[:, j].min()), max(es[:, j].max(), std[:, j].max())]
        ax.plot(lim, lim, "k--", lw=0.8)
        ax.set_title(f"{name}: median std ratio {np.median(std[:, j] / es[:, j]):.2f}", fontsize=9)
        ax.set_xlabel("exact posterior std")
        ax.set_ylabel("network std")
    return _png(fig, dpi)


def reliability_diagram(curves: Mapping[str, list], dpi: int = DPI) -> bytes:
    """Reliability diagram of classification probabilities; ``curves`` maps a label to the bins
    of :func:`~cosmoinfer.calibration.metrics.classification_metrics`."""
    fig, (ax,) = _new(1, height=3.6, width=3.8)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    for i, (label, bins) in enumerate(curves.items()):
        xs = [b["mean_prob"] for b in bins if b["count"]]
        ys = [b["frac_pos"] for b in bins if b["count"]]
        ax.plot(xs, ys, "o-", color=_COLORS[i % len(_COLORS)], label=label)
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed frequency")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.set_title("reliability")
    return _png(fig, dpi)
