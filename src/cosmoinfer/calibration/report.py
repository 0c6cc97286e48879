"""Build the calibration report: ``metrics.json``, PNG figures and one self-contained ``report.html``.

:func:`build_report` reads one or more ``predictions.h5`` files (e.g. single network, deep
ensemble, MC dropout), computes the metrics of :mod:`~cosmoinfer.calibration.metrics`, fits the
recalibrators of :mod:`~cosmoinfer.calibration.recalibration` on the validation predictions (or, if
none are given, on a random half of the test predictions, judged on the other half, and says so),
writes one verdict per parameter, and renders everything. It is a recipe of named steps:

1. :func:`read_inputs`: read and check the predictions files, labels and levels;
2. :func:`~cosmoinfer.calibration.report_analysis.analyse_method` for each file, then
   :func:`~cosmoinfer.calibration.report_analysis.comparison_figures`;
3. :func:`~cosmoinfer.calibration.report_publish.metrics_document` and
   :func:`~cosmoinfer.calibration.report_html.render_html`, in memory;
4. :func:`~cosmoinfer.calibration.report_publish.publish`: the files written as one set, so an
   error never leaves a half-written file, and a ``report.html`` that exists always belongs to the
   ``metrics.json`` and figures beside it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from cosmoinfer.calibration import figures as figs
from cosmoinfer.calibration.levels import DEFAULT_LEVELS
from cosmoinfer.calibration.report_analysis import Figure, MethodAnalysis, analyse_method, comparison_figures
from cosmoinfer.calibration.report_html import TEMPLATE_DIR, TEMPLATE_NAME, render_html  # noqa: F401
from cosmoinfer.calibration.report_publish import metrics_document, metrics_json, publish
from cosmoinfer.errors import InputError
from cosmoinfer.posterior.predictions import Predictions, read_predictions

#: Smallest test set the report accepts (recalibration without validation needs two halves).
MIN_ITEMS = 4


@dataclass
class ReportPaths:
    """What :func:`build_report` wrote: ``html``, ``metrics`` and the PNG ``figures``."""

    html: Path
    metrics: Path
    figures: list[Path] = field(default_factory=list)


def _as_list(x) -> list | None:
    if x is None:
        return None
    if isinstance(x, (str, os.PathLike)):
        return [x]
    return list(x)


def _default_labels(preds: Sequence[Predictions]) -> list[str]:
    labels = [p.method for p in preds]
    if len(set(labels)) < len(labels):
        labels = [f"{p.method} ({Path(p.path).parent.name or Path(p.path).stem})" for p in preds]
    if len(set(labels)) < len(labels):
        labels = [f"{lab} #{i + 1}" for i, lab in enumerate(labels)]
    return labels


def _same_maps(a, b) -> bool:
    """The same file, or the same maps: equal simulation ids and truths, map for map."""
    if Path(a.path).resolve() == Path(b.path).resolve():
        return True
    if a.n != b.n or a.sim_id is None or b.sim_id is None:
        return False
    return bool(np.array_equal(a.sim_id, b.sim_id) and np.array_equal(a.truth, b.truth))


def read_inputs(predictions, val_predictions, labels, levels):
    """Read and check the report's inputs: ``(preds, val_preds, labels, levels)``.

    Refuses (:class:`~cosmoinfer.errors.InputError`, naming the file and the fix) mismatched
    counts, levels outside (0, 1), mixed tasks, too few items, validation predictions of other
    parameters, of another task or of the test maps themselves, and repeated labels.
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
            if _same_maps(p, v):
                raise InputError(v.path, f"holds the same maps as the test predictions {p.path}: recalibration "
                                         "would be fitted on the maps it is judged on; give the val split's "
                                         "predictions (cosmoinfer-evaluate split=val), or none")
    labels = list(labels) if labels is not None else _default_labels(preds)
    if len(set(labels)) < len(labels):
        raise InputError(None, f"labels: must be distinct, got {labels}")
    return preds, val_preds, labels, levels


def report_files(analyses: Sequence[MethodAnalysis], comparison: Sequence[Figure], doc: dict,
                 html: str) -> dict[str, bytes]:
    """Every file of the report by its path inside ``out_dir``: figures, ``metrics.json``, ``report.html``."""
    files = {fg.file: fg.png for fg in list(comparison) + [fg for a in analyses for fg in a.figures]}
    files["metrics.json"] = metrics_json(doc).encode()
    files["report.html"] = html.encode()
    return files


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
    preds, val_preds, labels, levels = read_inputs(predictions, val_predictions, labels, levels)
    opts = {"n_posterior_samples": int(n_posterior_samples), "tarp_refs": int(tarp_refs),
            "n_bootstrap": int(n_bootstrap)}
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(len(preds))]
    analyses = [analyse_method(i, label, pred, val, levels, rng, opts, dpi)
                for i, (label, pred, val, rng) in enumerate(zip(labels, preds, val_preds, rngs))]
    comparison = comparison_figures(analyses, levels, dpi)
    doc = metrics_document([a.metrics for a in analyses], levels, seed)
    html = render_html(analyses, comparison, doc, levels, seed, opts)
    files = report_files(analyses, comparison, doc, html)
    out_dir = Path(out_dir)
    publish(out_dir, files)
    return ReportPaths(html=out_dir / "report.html", metrics=out_dir / "metrics.json",
                       figures=[out_dir / name for name in files if name.startswith("figures/")])
