"""Moved to :mod:`cosmoinfer.posterior.predictions` (kept so existing imports keep working)."""

from cosmoinfer.posterior.predictions import (  # noqa: F401
    EXTRA_NP,
    FORMAT_VERSION,
    OPTIONAL,
    REQUIRED,
    Predictions,
    read_predictions,
    write_predictions,
)
