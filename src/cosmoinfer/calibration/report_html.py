"""The report's HTML page: tables, table of contents and the Jinja2 template, rendered in memory.

:func:`render_html` takes the analyses of :mod:`~cosmoinfer.calibration.report_analysis` and the
``metrics.json`` document and returns the page as a string; figures are embedded as data URIs.
"""

from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path
from typing import Sequence

import numpy as np
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from cosmoinfer.calibration.headline import headline
from cosmoinfer.calibration.report_analysis import Figure, MethodAnalysis

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
TEMPLATE_NAME = "report.html.j2"


def _fmt(x, digits: int = 4) -> str:
    """A number for a table cell: ``digits`` significant digits, "–" for missing or non-finite."""
    if x is None:
        return "–"
    if isinstance(x, (int, np.integer)):
        return str(x)
    x = float(x)
    if not math.isfinite(x):
        return "–"
    return f"{x:.{digits}g}"


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


def _toc(sections: list[dict], comparison_rows: list, comparison_figs: list[Figure]) -> list[dict]:
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


def _section(a: MethodAnalysis) -> dict:
    """The template's view of one method: label, metrics, figures, verdicts and its summary table."""
    pred, m = a.pred, a.metrics
    single_net = pred.task == "regression" and not np.any(pred.std_epistemic > 0)
    return {
        "label": a.label, "pred": pred, "metrics": m, "figures": a.figures, "id": f"m{a.slug}",
        "verdicts": [v.text for v in a.verdicts], "statuses": [v.status for v in a.verdicts],
        "rows": _summary_rows(m) if pred.task == "regression" else [],
        "fit_on": m["recalibrated"].get("fit_on", ""), "val_given": a.val is not None,
        "no_epistemic": ("One network and no stochastic passes: the predictive has no epistemic part (no spread "
                         "between networks), so all of its width is aleatoric and there is no split to draw."
                         if single_net else ""),
    }


def _comparison_rows(blocks: Sequence[dict]) -> list[dict]:
    """One row per method and parameter of the comparison table (none for a single method)."""
    rows: list[dict] = []
    if len(blocks) < 2:
        return rows
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
            rows.append({"label": b["label"], "param": nm, "cells": cells})
    return rows


def render_html(analyses: Sequence[MethodAnalysis], comparison_figs: list[Figure], doc: dict,
                levels: Sequence[float], seed: int, opts: dict) -> str:
    """``report.html`` as a string: headline, comparison of methods, then one section per method."""
    sections = [_section(a) for a in analyses]
    comparison_rows = _comparison_rows([a.metrics for a in analyses])
    task = analyses[0].pred.task
    comparison_header = (["method", "parameter", "accuracy", "log-loss", "Brier", "ECE"] if task == "classification"
                         else ["method", "parameter", "RMSE", "R²", "NLL", "CRPS", "χ²", "coverage error", "mean σ",
                               "cov 68%", "cov 95%", "s_test", "s_fit", "TARP ATC", "TARP KS p"])
    return _render({
        "title": "cosmoinfer calibration report",
        "generated": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "task": task, "sections": sections, "summary_header": SUMMARY_HEADER, "summary_groups": SUMMARY_GROUPS,
        "comparison_rows": comparison_rows, "comparison_header": comparison_header,
        "comparison_figs": comparison_figs, "levels": levels, "seed": seed, "opts": opts,
        "headline": headline(doc), "toc": _toc(sections, comparison_rows, comparison_figs),
    })
