"""Simulators: power spectra, GRF and CAMELS-like map simulators, exact GRF posteriors, summaries.

``summary`` (torch) is imported lazily so the numpy-only simulators load fast.
"""

from cosmoinfer.simulators.camels_like import CamelsLikeSimulator
from cosmoinfer.simulators.dataset import simulate_dataset
from cosmoinfer.simulators.grf import GRFSimulator
from cosmoinfer.simulators.power import linear_power, slab_power_2d

SIMULATORS = {"grf": GRFSimulator, "camels_like": CamelsLikeSimulator}

__all__ = [
    "SIMULATORS",
    "CamelsLikeSimulator",
    "GRFSimulator",
    "binned_power_spectrum",
    "binned_power_spectrum_np",
    "linear_power",
    "simulate_dataset",
    "slab_power_2d",
]


def __getattr__(name):
    if name in ("binned_power_spectrum", "binned_power_spectrum_np"):
        from cosmoinfer.simulators import summary

        return getattr(summary, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
