"""Simulators: power spectra, GRF and CAMELS-like map simulators, exact GRF posteriors, summaries.

``summary`` (torch) is imported lazily so the numpy-only simulators load fast.
"""

from cosmoinfer.simulators.camels_like import CamelsLikeSimulator
from cosmoinfer.simulators.grf import GRFSimulator
from cosmoinfer.simulators.power import linear_power, slab_power_2d
from cosmoinfer.simulators.suite_writer import simulate_dataset

SIMULATORS = {"grf": GRFSimulator, "camels_like": CamelsLikeSimulator}

#: Simulator name -> ``"module:function"`` that adds datasets to ``predictions.h5`` for maps of that
#: simulator, called as ``function(cfg, dm, split, post) -> {name: array or dict}`` (the grf
#: simulator: the exact posterior of every map, :mod:`cosmoinfer.simulators.grf_exact_datasets`).
EXTRA_DATASETS = {"grf": "cosmoinfer.simulators.grf_exact_datasets:extra_datasets"}

__all__ = [
    "EXTRA_DATASETS",
    "SIMULATORS",
    "CamelsLikeSimulator",
    "GRFSimulator",
    "binned_power_spectrum",
    "binned_power_spectrum_np",
    "extra_datasets_hook",
    "linear_power",
    "simulate_dataset",
    "slab_power_2d",
]


def extra_datasets_hook(name: str | None):
    """The function of :data:`EXTRA_DATASETS` for simulator ``name`` (imported on first use), or ``None``."""
    target = EXTRA_DATASETS.get(str(name)) if name is not None else None
    if target is None:
        return None
    import importlib

    module, _, func = target.partition(":")
    return getattr(importlib.import_module(module), func)


def __getattr__(name):
    if name in ("binned_power_spectrum", "binned_power_spectrum_np"):
        from cosmoinfer.simulators import summary

        return getattr(summary, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
