"""cosmoinfer: simulation-based inference of cosmological parameters from CAMELS-style maps."""

__version__ = "0.1.0"
