"""Report figures, rendered with matplotlib's Agg canvas straight to PNG bytes.

Every function returns the PNG as ``bytes`` (the report both writes it to ``figures/`` and embeds
it as a base64 data URI). The object-oriented API (``Figure`` + ``FigureCanvasAgg``) is used so
that no global pyplot state or interactive backend is touched.
"""

from __future__ import annotations

import functools
import io
from typing import Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Ellipse
from scipy import stats
from scipy.ndimage import gaussian_filter

from cosmoinfer.calibration.metrics import binomial_band

#: Default resolution. The report shows every figure at its design size (inches x 96 CSS px), so
#: fonts keep their point sizes on screen; a DPI above 96 keeps them sharp on dense displays.
DPI = 110
#: Width of a full-width figure in inches: 1200 CSS px, the report's text column at a 1280 px window.
FULL_WIDTH = 12.5
#: CSS pixels per inch (the report sizes each image as inches x this).
CSS_PX_PER_INCH = 96
_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
#: Font sizes (points) of every report figure: >= 13 CSS px at the design size.
_RC = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "xtick.labelsize": 10,
       "ytick.labelsize": 10, "legend.fontsize": 10.5, "figure.titlesize": 12}


def _styled(fn):
    """Run a figure function under the report's font sizes (a local rc context, no global state kept)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(_RC):
            return fn(*args, **kwargs)

    return wrapper


def _grid(n_panels: int, max_cols: int = 4, cols: int | None = None) -> tuple[int, int]:
    """Rows and columns: up to ``max_cols`` side by side (5 or 6 panels as 3 + 2 / 3 + 3), or ``cols``."""
    if cols is None:
        cols = min(n_panels, max_cols if n_panels <= max_cols or max_cols < 4 else 3)
    return int(np.ceil(n_panels / cols)), cols


def _new(n_panels: int, panel_height: float | None = None, max_cols: int = 4, legend_rows: int = 0,
         width: float = FULL_WIDTH, right: float = 0.25, cols: int | None = None):
    """A full-width figure of ``n_panels`` axes; ``legend_rows`` lines of figure legend reserved on top.

    Margins are fixed in inches (a layout engine costs a second draw per figure): room for tick
    labels and axis labels at the report's font sizes, whatever the number of panels.
    """
    rows, cols = _grid(n_panels, max_cols, cols)
    left, bottom, gap_w, gap_h, title = 0.85, 0.65, 0.95, 0.95, 0.45
    top = title + 0.3 * legend_rows + (0.15 if legend_rows else 0)
    panel_w = (width - left - right - gap_w * (cols - 1)) / cols
    if panel_height is None:
        panel_height = float(np.clip(0.72 * panel_w, 2.6, 4.4))
    height = bottom + top + rows * panel_height + gap_h * (rows - 1)
    fig = Figure(figsize=(width, height), layout=None)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height,
                        wspace=gap_w / panel_w if cols > 1 else 0.2,
                        hspace=gap_h / panel_height if rows > 1 else 0.2)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n_panels)]
    return fig, axes


def _top_legend(fig: Figure, handles, labels, ncol: int | None = None) -> None:
    """One legend for all panels, in the strip reserved above them (never over the data)."""
    if not handles:
        return
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 1 - 0.08 / fig.get_size_inches()[1]),
               ncol=ncol or len(handles), frameon=False, columnspacing=1.6, handlelength=2.2)


def _fits_one_row(labels: Sequence[str], width: float = FULL_WIDTH) -> bool:
    """Whether a figure legend of ``labels`` fits on one line of a ``width``-inch figure (current rc fonts)."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextToPath

    size = float(FontProperties(size=matplotlib.rcParams["legend.fontsize"]).get_size_in_points())
    fp, tp = FontProperties(size=size), TextToPath()
    text = sum(tp.get_text_width_height_descent(str(lab), fp, ismath=False)[0] for lab in labels) / 72
    em = size / 72  # per entry: handle (2.2 em) and its pad (0.8 em); between entries 1.6 em; borders 2 em
    return text + em * (3.0 * len(labels) + 1.6 * (len(labels) - 1) + 2) <= width - 0.3


def _single_with_side_legend(panel: float = 4.6, legend_width: float = 5.4):
    """One square panel with room on its right for a legend of long entries."""
    width = 0.85 + panel + 0.3 + legend_width
    height = 0.65 + panel + 0.45
    fig = Figure(figsize=(width, height), layout=None)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.85 / width, right=(0.85 + panel) / width, bottom=0.65 / height,
                        top=1 - 0.45 / height)
    return fig, fig.add_subplot(1, 1, 1)


def _side_legend(ax) -> None:
    ax.legend(loc="upper left", bbox_to_anchor=(1.04, 1.0), borderaxespad=0, frameon=False)


def _png(fig: Figure, dpi: int = DPI) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _prior_mean(prior) -> float:
    if getattr(prior, "log", False):
        return float((prior.high - prior.low) / np.log(prior.high / prior.low))
    return 0.5 * (prior.low + prior.high)


@_styled
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
    fig, axes = _new(len(names), legend_rows=1)
    handles, labels = [], []
    for j, (ax, name) in enumerate(zip(axes, names)):
        t, m, s = truth[idx, j], mean[idx, j], std[idx, j]
        h_pts = ax.errorbar(t, m, yerr=s, fmt="o", ms=3, lw=0.7, alpha=0.6, color=_COLORS[0], ecolor="0.6")
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
            h_mean = ax.axhline(_prior_mean(pr), color=_COLORS[4], ls=":", lw=1.6)
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
    _top_legend(fig, handles, labels)
    return _png(fig, dpi)


@_styled
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
    one_row = _fits_one_row([band_label, *curves])  # otherwise rows of 4, filled column by column
    fig, axes = _new(len(names), legend_rows=1 if one_row else 1 + (len(curves) + 1) // 4)
    styles = ["-", "--", ":", "-."]
    for j, (ax, name) in enumerate(zip(axes, names)):
        ax.fill_between(lv, lo[:, j], hi[:, j], color="0.85", label=band_label)
        ax.plot([0, 1], [0, 1], "k-", lw=0.8)
        for i, (label, cov) in enumerate(curves.items()):
            ax.plot(lv, np.asarray(cov)[:, j], styles[i % len(styles)], marker="o", ms=3.5, lw=1.6,
                    color=_COLORS[i % len(_COLORS)], label=label)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("nominal coverage")
        ax.set_ylabel("empirical coverage")
        ax.set_title(name)
    handles, labels = axes[0].get_legend_handles_labels()
    _top_legend(fig, handles, labels, ncol=len(handles) if one_row else min(len(handles), 4))
    if title:
        fig.suptitle(title)
    return _png(fig, dpi)


@_styled
def pit_histogram(pit_values, names: Sequence[str], bins: int = 20, dpi: int = DPI) -> bytes:
    """PIT histograms (flat if calibrated; ∪-shaped if too narrow, ∩-shaped if too wide)."""
    p = np.asarray(pit_values)
    n = p.shape[0]
    fig, axes = _new(len(names), legend_rows=1)
    exp = n / bins
    lo, hi = stats.binom.ppf([0.025, 0.975], n, 1 / bins)
    for j, (ax, name) in enumerate(zip(axes, names)):
        ax.axhspan(lo, hi, color="0.85", label="95% band per bin (independent maps)")
        ax.hist(p[:, j], bins=bins, range=(0, 1), color=_COLORS[0], alpha=0.8, label="PIT of the test maps")
        ax.axhline(exp, color="k", lw=0.8, label="uniform")
        ax.set_xlabel("PIT = predicted CDF at the truth")
        ax.set_ylabel("maps per bin")
        ax.set_title(name)
    _top_legend(fig, *axes[0].get_legend_handles_labels())
    return _png(fig, dpi)


@_styled
def zscore_histogram(z, names: Sequence[str], dpi: int = DPI) -> bytes:
    """Histogram of ``(truth − mean)/std`` against the N(0, 1) density."""
    z = np.asarray(z)
    fig, axes = _new(len(names), legend_rows=1)
    x = np.linspace(-5, 5, 300)
    for j, (ax, name) in enumerate(zip(axes, names)):
        ax.hist(np.clip(z[:, j], -5, 5), bins=40, range=(-5, 5), density=True, color=_COLORS[0], alpha=0.7,
                label="z of the test maps (clipped at ±5)")
        ax.plot(x, stats.norm.pdf(x), "k-", lw=1.4, label="N(0, 1)")
        ax.set_xlabel("z = (truth − mean) / std")
        ax.set_ylabel("density")
        ax.set_title(f"{name}: std(z) = {np.std(z[:, j]):.2f}")
    _top_legend(fig, *axes[0].get_legend_handles_labels())
    return _png(fig, dpi)


@_styled
def tarp_curve(results: Mapping[str, object], dpi: int = DPI) -> bytes:
    """TARP expected coverage vs credibility level, with bootstrap bands (one curve per label).

    The legend (label, ATC, KS p-value) sits to the right of the square panel, never over it.
    """
    fig, ax = _single_with_side_legend()
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="calibrated")
    for i, (label, r) in enumerate(results.items()):
        c = _COLORS[i % len(_COLORS)]
        ax.fill_between(r.alpha, r.ecp_lo, r.ecp_hi, color=c, alpha=0.2)
        ax.plot(r.alpha, r.ecp, color=c, lw=1.8, label=f"{label}: ATC {r.atc:+.3f}, KS p = {r.ks_pvalue:.2g}")
    ax.set_xlabel("credibility level α")
    ax.set_ylabel("expected coverage")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title("TARP (shaded: 95% bootstrap band)")
    _side_legend(ax)
    return _png(fig, dpi)


@_styled
def std_vs_error(truth, mean, std, names: Sequence[str], n_bins: int = 10, dpi: int = DPI) -> bytes:
    """Predicted std vs |error| (scatter), with binned RMSE against binned RMS std (should follow y = x)."""
    truth, mean, std = map(np.asarray, (truth, mean, std))
    err = np.abs(mean - truth)
    fig, axes = _new(len(names), legend_rows=1)
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
        ax.plot(rms_s, rmse, "o-", color=_COLORS[1], lw=1.6, label="RMSE in bins of predicted std")
        lim = [np.nanmin(s) * 0.9, np.nanmax(s) * 1.1]
        ax.plot(lim, lim, "k--", lw=1, label="|error| = std (honest widths)")
        ax.set_yscale("log")  # |errors| span decades; widths rarely do, so x stays linear
        ax.set_ylim(floor * 0.8, max(float(e.max()), lim[1]) * 1.5)
        ax.set_xlabel(f"predicted std of {name}")
        ax.set_ylabel("|error|")
        ax.set_title(name)
    _top_legend(fig, *axes[0].get_legend_handles_labels())
    return _png(fig, dpi)


@_styled
def aleatoric_epistemic(std_aleatoric, std_epistemic, names: Sequence[str], dpi: int = DPI) -> bytes:
    """Aleatoric vs epistemic std per item, and the mean variance fractions in the title."""
    a, e = np.asarray(std_aleatoric), np.asarray(std_epistemic)
    fig, axes = _new(len(names), legend_rows=1)
    for j, (ax, name) in enumerate(zip(axes, names)):
        tot = a[:, j] ** 2 + e[:, j] ** 2
        frac = float(np.mean(e[:, j] ** 2 / np.where(tot > 0, tot, 1)))
        ax.scatter(a[:, j], e[:, j], s=5, alpha=0.4, color=_COLORS[2], label="one test map")
        top = max(float(a[:, j].max()), float(e[:, j].max()), 1e-300)
        ax.plot([0, top], [0, top], "k--", lw=1, label="equal parts")
        ax.set_xlabel("aleatoric std")
        ax.set_ylabel("epistemic std")
        ax.set_title(f"{name}: epistemic {100 * frac:.0f}% of variance")
    _top_legend(fig, *axes[0].get_legend_handles_labels())
    return _png(fig, dpi)


def _ellipse(ax, mean2, cov2, nsig: float, color, **kw):
    vals, vecs = np.linalg.eigh(cov2)
    angle = np.degrees(np.arctan2(vecs[1, -1], vecs[0, -1]))
    r = np.sqrt(stats.chi2.ppf(stats.chi2.cdf(nsig**2, 1), 2))  # 2-D region with the 1-D nσ mass
    w, h = 2 * r * np.sqrt(vals[-1]), 2 * r * np.sqrt(vals[0])
    ax.add_patch(Ellipse(mean2, w, h, angle=angle, fill=False, color=color, **kw))


@_styled
def corner(truth, mean, cov, names: Sequence[str], n_show: int = 3, max_params: int = 4,
           rng: np.random.Generator | None = None, dpi: int = DPI) -> bytes:
    """Corner view of a few full-covariance posteriors: 1σ/2σ ellipses per parameter pair, truth marked."""
    truth, mean, cov = map(np.asarray, (truth, mean, cov))
    p = min(len(names), max_params)
    n = truth.shape[0]
    pick = (rng or np.random.default_rng(0)).choice(n, min(n_show, n), replace=False)
    k = max(p - 1, 1)
    size = 3.2 * k + 1.2
    fig = Figure(figsize=(size, size), layout=None)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.9 / size, right=1 - 0.25 / size, bottom=0.7 / size, top=1 - 0.6 / size,
                        wspace=0.35, hspace=0.35)
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
    fig.suptitle("posterior ellipses (1σ solid, 2σ dashed; ★ truth)")
    return _png(fig, dpi)


def _hpd_levels(h: np.ndarray, masses=(0.68, 0.95)) -> list[float]:
    """Density thresholds of a histogram ``h`` enclosing the given masses (highest bins first)."""
    flat = np.sort(h.ravel())[::-1]
    cum = np.cumsum(flat) / max(flat.sum(), 1e-300)
    return sorted({float(flat[min(np.searchsorted(cum, m), flat.size - 1)]) for m in masses})


@_styled
def corner_draws(draws, truth, names: Sequence[str], exact: Mapping | None = None, s8: str | None = None,
                 priors=None, max_params: int = 4, map_labels: Sequence[str] | None = None,
                 dpi: int = DPI) -> bytes:
    """Corner plot of a few maps' predictive from draws ``(S, n, P)``; truths ``(n, P)`` marked.

    Each parameter pair shows the 68% / 95% highest-density contours of the draws (2-D histogram),
    one colour per map; ``exact`` (``index``, ``omega_m (n, G)``, ``sigma_8 (n, G)``,
    ``log_density (n, G, G)``) adds the exact posterior's contours in black on the
    (Omega_m, sigma_8) panel. ``s8``: add a panel of the derived S8 marginals. Prior bounds are
    the axis limits where ``priors`` are given. ``map_labels`` name the maps in the legend.
    """
    from matplotlib.lines import Line2D

    draws, truth = np.asarray(draws), np.asarray(truth)
    p = min(len(names), max_params)
    pairs = [(c, r) for r in range(1, p) for c in range(r)]
    n_pan = len(pairs) + (1 if s8 else 0)
    n_maps = truth.shape[0]
    labels = list(map_labels) if map_labels is not None else [f"map {i + 1}" for i in range(n_maps)]
    fig, axes = _new(n_pan, max_cols=3, legend_rows=1 + (n_maps + 2) // 5)
    ex_idx = {}
    if exact is not None and "Omega_m" in names and "sigma_8" in names:
        ex_idx = {(names.index("Omega_m"), names.index("sigma_8")): True}
    drew_exact = False
    for ax, (c, r) in zip(axes, pairs):
        for i in range(n_maps):
            col = _COLORS[i % len(_COLORS)]
            x, y = draws[:, i, c], draws[:, i, r]
            h, xe, ye = np.histogram2d(x, y, bins=30)
            h = gaussian_filter(h, 1.0)  # smooth the draws' histogram so the contours are not noise
            xc, yc = 0.5 * (xe[1:] + xe[:-1]), 0.5 * (ye[1:] + ye[:-1])
            lev = _hpd_levels(h)
            if len(lev) > 1:
                ax.contour(xc, yc, h.T, levels=lev, colors=[col], linewidths=[1.6, 0.9][:len(lev)])
            ax.plot(truth[i, c], truth[i, r], "*", color=col, ms=12, mec="k", mew=0.6)
            if ((c, r) in ex_idx or (r, c) in ex_idx) and i < np.asarray(exact["omega_m"]).shape[0]:
                om, sg, ld = (np.asarray(exact[k])[i] for k in ("omega_m", "sigma_8", "log_density"))
                dens = np.exp(ld - ld.max())
                xs, ys, z = (om, sg, dens.T) if names[c] == "Omega_m" else (sg, om, dens)
                lev = _hpd_levels(dens)
                if len(lev) > 1:
                    ax.contour(xs, ys, z, levels=lev, colors="k", linewidths=[1.6, 0.9][:len(lev)])
                    drew_exact = True
        if priors is not None:
            ax.set_xlim(priors[c].low, priors[c].high)
            ax.set_ylim(priors[r].low, priors[r].high)
        ax.set_xlabel(names[c])
        ax.set_ylabel(names[r])
        ax.set_title(f"{names[r]} vs {names[c]}" + (" (axes: prior range)" if priors is not None else ""))
    if s8:
        ax = axes[len(pairs)]
        i_om, i_s8 = names.index("Omega_m"), names.index("sigma_8")
        for i in range(n_maps):
            col = _COLORS[i % len(_COLORS)]
            v = draws[:, i, i_s8] * np.sqrt(np.clip(draws[:, i, i_om], 0, None) / 0.3)
            ax.hist(v, bins=40, histtype="step", color=col, density=True, lw=1.4)
            ax.axvline(truth[i, i_s8] * np.sqrt(truth[i, i_om] / 0.3), color=col, ls="--", lw=1.2)
        ax.set_xlabel("S8 = σ8 (Ωm/0.3)^0.5")
        ax.set_ylabel("density")
        ax.set_title("derived S8 (dashed: truth)")
    handles = [Line2D([], [], color=_COLORS[i % len(_COLORS)], marker="*", ms=11, mec="k", lw=1.6)
               for i in range(n_maps)]
    leg_labels = [f"{lab} (★ its truth)" for lab in labels]
    handles.append(Line2D([], [], color="0.3", lw=1.6))
    leg_labels.append("68% (thick) / 95% (thin) contours of draws")
    if drew_exact:
        handles.append(Line2D([], [], color="k", lw=1.6))
        leg_labels.append("exact posterior")
    _top_legend(fig, handles, leg_labels, ncol=min(len(handles), 5))
    return _png(fig, dpi)


@_styled
def exact_comparison(truth, mean, std, exact_mean, exact_std, names: Sequence[str], dpi: int = DPI) -> bytes:
    """Network vs exact posterior: mean against exact mean (top), std against exact std (bottom)."""
    truth, mean, std, em, es = map(np.asarray, (truth, mean, std, exact_mean, exact_std))
    p = len(names)
    fig, axes = _new(2 * p, cols=p)  # top row: means, bottom row: stds
    for j, name in enumerate(names):
        ax = axes[j]
        ax.scatter(em[:, j], mean[:, j], s=5, alpha=0.5, color=_COLORS[0])
        lim = [min(em[:, j].min(), mean[:, j].min()), max(em[:, j].max(), mean[:, j].max())]
        ax.plot(lim, lim, "k--", lw=1)
        eff = np.mean((em[:, j] - truth[:, j]) ** 2) / np.mean((mean[:, j] - truth[:, j]) ** 2)
        ax.set_title(f"{name}: efficiency {eff:.2f}")
        ax.set_xlabel("exact posterior mean")
        ax.set_ylabel("network mean")
        ax = axes[p + j]
        ax.scatter(es[:, j], std[:, j], s=5, alpha=0.5, color=_COLORS[1])
        lim = [min(es[:, j].min(), std[:, j].min()), max(es[:, j].max(), std[:, j].max())]
        ax.plot(lim, lim, "k--", lw=1)
        ax.set_title(f"{name}: median std ratio {np.median(std[:, j] / es[:, j]):.2f}")
        ax.set_xlabel("exact posterior std")
        ax.set_ylabel("network std")
    return _png(fig, dpi)


@_styled
def reliability_diagram(curves: Mapping[str, list], dpi: int = DPI) -> bytes:
    """Reliability diagram of classification probabilities; ``curves`` maps a label to the bins
    of :func:`~cosmoinfer.calibration.metrics.classification_metrics`."""
    fig, ax = _single_with_side_legend()
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="calibrated")
    for i, (label, bins) in enumerate(curves.items()):
        xs = [b["mean_prob"] for b in bins if b["count"]]
        ys = [b["frac_pos"] for b in bins if b["count"]]
        ax.plot(xs, ys, "o-", color=_COLORS[i % len(_COLORS)], lw=1.6, label=label)
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed frequency")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title("reliability")
    _side_legend(ax)
    return _png(fig, dpi)
