"""The look shared by every report figure: sizes in inches, fonts, colours, panel layouts, legends,
and rendering to PNG bytes with matplotlib's Agg canvas (no pyplot state is touched).
"""

from __future__ import annotations

import functools
import io
from typing import Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

#: Default resolution. The report shows every figure at its design size (inches x 96 CSS px), so
#: fonts keep their point sizes on screen; a DPI above 96 keeps them sharp on dense displays.
DPI = 110
#: Width of a full-width figure in inches: 1200 CSS px, the report's text column at a 1280 px window.
FULL_WIDTH = 12.5
#: CSS pixels per inch (the report sizes each image as inches x this).
CSS_PX_PER_INCH = 96
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
#: Font sizes (points) of every report figure: >= 13 CSS px at the design size.
RC = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "xtick.labelsize": 10,
       "ytick.labelsize": 10, "legend.fontsize": 10.5, "figure.titlesize": 12,
       # labels and parameter names are user text: "$" is a dollar sign, never mathtext ($\frac{a$ would fail)
       "text.parse_math": False}


def styled(fn):
    """Run a figure function under the report's font sizes (a local rc context, no global state kept)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(RC):
            return fn(*args, **kwargs)

    return wrapper


def panel_grid(n_panels: int, max_cols: int = 4, cols: int | None = None) -> tuple[int, int]:
    """Rows and columns: up to ``max_cols`` side by side (5 or 6 panels as 3 + 2 / 3 + 3), or ``cols``."""
    if cols is None:
        cols = min(n_panels, max_cols if n_panels <= max_cols or max_cols < 4 else 3)
    return int(np.ceil(n_panels / cols)), cols


def new_figure(n_panels: int, panel_height: float | None = None, max_cols: int = 4, legend_rows: int = 0,
         width: float = FULL_WIDTH, right: float = 0.25, cols: int | None = None):
    """A full-width figure of ``n_panels`` axes; ``legend_rows`` lines of figure legend reserved on top.

    Margins are fixed in inches (a layout engine costs a second draw per figure): room for tick
    labels and axis labels at the report's font sizes, whatever the number of panels.
    """
    rows, cols = panel_grid(n_panels, max_cols, cols)
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


def top_legend(fig: Figure, handles, labels, ncol: int | None = None) -> None:
    """One legend for all panels, in the strip reserved above them (never over the data)."""
    if not handles:
        return
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 1 - 0.08 / fig.get_size_inches()[1]),
               ncol=ncol or len(handles), frameon=False, columnspacing=1.6, handlelength=2.2)


def fits_one_row(labels: Sequence[str], width: float = FULL_WIDTH) -> bool:
    """Whether a figure legend of ``labels`` fits on one line of a ``width``-inch figure (current rc fonts)."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextToPath

    size = float(FontProperties(size=matplotlib.rcParams["legend.fontsize"]).get_size_in_points())
    fp, tp = FontProperties(size=size), TextToPath()
    text = sum(tp.get_text_width_height_descent(str(lab), fp, ismath=False)[0] for lab in labels) / 72
    em = size / 72  # per entry: handle (2.2 em) and its pad (0.8 em); between entries 1.6 em; borders 2 em
    return text + em * (3.0 * len(labels) + 1.6 * (len(labels) - 1) + 2) <= width - 0.3


def legend_columns(labels: Sequence[str], max_cols: int = 5, width: float = FULL_WIDTH) -> tuple[int, int]:
    """``(ncol, rows)`` of a top legend of ``labels``: the most columns (``<= max_cols``) whose every row
    fits the figure width (:func:`fits_one_row`), so long labels wrap onto more rows instead of
    running off the figure's edges."""
    labels = list(labels)
    for ncol in range(min(max_cols, len(labels)), 1, -1):
        if all(fits_one_row(labels[i: i + ncol], width) for i in range(0, len(labels), ncol)):
            return ncol, -(-len(labels) // ncol)
    return 1, len(labels)


def single_with_side_legend(panel: float = 4.6, legend_width: float = 5.4):
    """One square panel with room on its right for a legend of long entries."""
    width = 0.85 + panel + 0.3 + legend_width
    height = 0.65 + panel + 0.45
    fig = Figure(figsize=(width, height), layout=None)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.85 / width, right=(0.85 + panel) / width, bottom=0.65 / height,
                        top=1 - 0.45 / height)
    return fig, fig.add_subplot(1, 1, 1)


def side_legend(ax) -> None:
    """A legend to the right of ``ax`` (room made by :func:`single_with_side_legend`)."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.04, 1.0), borderaxespad=0, frameon=False)


def to_png(fig: Figure, dpi: int = DPI) -> bytes:
    """The figure rendered to PNG bytes at ``dpi``."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def prior_mean(prior) -> float:
    """Mean of a uniform or log-uniform prior (where an uninformative prediction lands)."""
    if getattr(prior, "log", False):
        return float((prior.high - prior.low) / np.log(prior.high / prior.low))
    return 0.5 * (prior.low + prior.high)
