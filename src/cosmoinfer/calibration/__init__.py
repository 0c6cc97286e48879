"""Calibration layer: predictions.h5 I/O, metrics, recalibration and the HTML report.

Typical use outside the CLI::

    from cosmoinfer.calibration import read_predictions, compute_metrics, build_report
    pred = read_predictions("runs/ensemble/predictions.h5")
    metrics = compute_metrics(pred)            # metrics.json block for one file
    build_report(["single.h5", "ensemble.h5"], "runs/report", labels=["single", "ensemble"])
"""

from cosmoinfer.calibration.metrics import DEFAULT_LEVELS, compute_metrics
from cosmoinfer.calibration.mixture import mixture_cdf, mixture_cov, mixture_moments, mixture_ppf
from cosmoinfer.calibration.predictions import Predictions, read_predictions, write_predictions
from cosmoinfer.calibration.recalibration import (
    IsotonicCalibrator,
    apply_std_scaling,
    fit_isotonic,
    fit_std_scaling,
)

_LAZY = {"build_report", "ReportPaths"}  # importing the report pulls in matplotlib and jinja2


def __getattr__(name):
    if name in _LAZY:
        from cosmoinfer.calibration import report

        return getattr(report, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_LEVELS",
    "IsotonicCalibrator",
    "Predictions",
    "ReportPaths",
    "apply_std_scaling",
    "build_report",
    "compute_metrics",
    "fit_isotonic",
    "fit_std_scaling",
    "mixture_cdf",
    "mixture_cov",
    "mixture_moments",
    "mixture_ppf",
    "read_predictions",
    "write_predictions",
]
