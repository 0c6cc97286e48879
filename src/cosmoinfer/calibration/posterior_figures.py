"""Report figures of the joint posterior: corner plots (Gaussian ellipses or draws, with the exact
posterior's highest-density contours where stored) and the network against the exact posterior.

Every function returns PNG ``bytes``; the look is :mod:`~cosmoinfer.calibration.figure_style`'s.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Ellipse
from scipy import stats
from scipy.ndimage import gaussian_filter

from cosmoinfer.calibration.figure_style import (
    COLORS,
    DPI,
    legend_columns,
    new_figure,
    styled,
    to_png,
    top_legend,
)


def _ellipse(ax, mean2, cov2, nsig: float, color, **kw):
    vals, vecs = np.linalg.eigh(cov2)
    angle = np.degrees(np.arctan2(vecs[1, -1], vecs[0, -1]))
    r = np.sqrt(stats.chi2.ppf(stats.chi2.cdf(nsig**2, 1), 2))  # 2-D region with the 1-D nσ mass
    w, h = 2 * r * np.sqrt(vals[-1]), 2 * r * np.sqrt(vals[0])
    ax.add_patch(Ellipse(mean2, w, h, angle=angle, fill=False, color=color, **kw))


@styled
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
                col = COLORS[i % len(COLORS)]
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
    return to_png(fig, dpi)


def _hpd_levels(h: np.ndarray, masses=(0.68, 0.95)) -> list[float]:
    """Density thresholds of a histogram ``h`` enclosing the given masses (highest bins first)."""
    flat = np.sort(h.ravel())[::-1]
    cum = np.cumsum(flat) / max(flat.sum(), 1e-300)
    # ascending: the outer (95%) contour first, then the inner (68%) one
    return sorted({float(flat[min(np.searchsorted(cum, m), flat.size - 1)]) for m in masses})


@styled
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
    ex_idx = {}
    if exact is not None and "Omega_m" in names and "sigma_8" in names:
        ex_idx = {(names.index("Omega_m"), names.index("sigma_8")): True}
    leg_labels = [f"{lab} (★ its truth)" for lab in labels] + ["68% (thick) / 95% (thin) contours of draws"]
    ncol, leg_rows = legend_columns([*leg_labels, *(["exact posterior"] if ex_idx else [])])
    fig, axes = new_figure(n_pan, max_cols=3, legend_rows=leg_rows)
    drew_exact = False
    for ax, (c, r) in zip(axes, pairs):
        for i in range(n_maps):
            col = COLORS[i % len(COLORS)]
            x, y = draws[:, i, c], draws[:, i, r]
            h, xe, ye = np.histogram2d(x, y, bins=30)
            h = gaussian_filter(h, 1.0)  # smooth the draws' histogram so the contours are not noise
            xc, yc = 0.5 * (xe[1:] + xe[:-1]), 0.5 * (ye[1:] + ye[:-1])
            lev = _hpd_levels(h)
            if len(lev) > 1:
                ax.contour(xc, yc, h.T, levels=lev, colors=[col], linewidths=[0.9, 1.6][-len(lev):])
            ax.plot(truth[i, c], truth[i, r], "*", color=col, ms=12, mec="k", mew=0.6)
            if ((c, r) in ex_idx or (r, c) in ex_idx) and i < np.asarray(exact["omega_m"]).shape[0]:
                om, sg, ld = (np.asarray(exact[k])[i] for k in ("omega_m", "sigma_8", "log_density"))
                dens = np.exp(ld - ld.max())
                xs, ys, z = (om, sg, dens.T) if names[c] == "Omega_m" else (sg, om, dens)
                lev = _hpd_levels(dens)
                if len(lev) > 1:
                    ax.contour(xs, ys, z, levels=lev, colors="k", linewidths=[0.9, 1.6][-len(lev):])
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
            col = COLORS[i % len(COLORS)]
            v = draws[:, i, i_s8] * np.sqrt(np.clip(draws[:, i, i_om], 0, None) / 0.3)
            ax.hist(v, bins=40, histtype="step", color=col, density=True, lw=1.4)
            ax.axvline(truth[i, i_s8] * np.sqrt(truth[i, i_om] / 0.3), color=col, ls="--", lw=1.2)
        ax.set_xlabel("S8 = σ8 (Ωm/0.3)^0.5")
        ax.set_ylabel("density")
        ax.set_title("derived S8 (dashed: truth)")
    handles = [Line2D([], [], color=COLORS[i % len(COLORS)], marker="*", ms=11, mec="k", lw=1.6)
               for i in range(n_maps)]
    handles.append(Line2D([], [], color="0.3", lw=1.6))
    if drew_exact:
        handles.append(Line2D([], [], color="k", lw=1.6))
        leg_labels.append("exact posterior")
    top_legend(fig, handles, leg_labels, ncol=ncol)
    return to_png(fig, dpi)


@styled
def exact_comparison(truth, mean, std, exact_mean, exact_std, names: Sequence[str], dpi: int = DPI) -> bytes:
    """Network vs exact posterior: mean against exact mean (top), std against exact std (bottom)."""
    truth, mean, std, em, es = map(np.asarray, (truth, mean, std, exact_mean, exact_std))
    p = len(names)
    fig, axes = new_figure(2 * p, cols=p)  # top row: means, bottom row: stds
    for j, name in enumerate(names):
        ax = axes[j]
        ax.scatter(em[:, j], mean[:, j], s=5, alpha=0.5, color=COLORS[0])
        lim = [min(em[:, j].min(), mean[:, j].min()), max(em[:, j].max(), mean[:, j].max())]
        ax.plot(lim, lim, "k--", lw=1)
        eff = np.mean((em[:, j] - truth[:, j]) ** 2) / np.mean((mean[:, j] - truth[:, j]) ** 2)
        ax.set_title(f"{name}: efficiency {eff:.2f}")
        ax.set_xlabel("exact posterior mean")
        ax.set_ylabel("network mean")
        ax = axes[p + j]
        ax.scatter(es[:, j], std[:, j], s=5, alpha=0.5, color=COLORS[1])
        lim = [min(es[:, j].min(), std[:, j].min()), max(es[:, j].max(), std[:, j].max())]
        ax.plot(lim, lim, "k--", lw=1)
        ax.set_title(f"{name}: median std ratio {np.median(std[:, j] / es[:, j]):.2f}")
        ax.set_xlabel("exact posterior std")
        ax.set_ylabel("network std")
    return to_png(fig, dpi)
