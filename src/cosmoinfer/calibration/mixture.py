"""Moved to :mod:`cosmoinfer.posterior.member_moments` (kept so existing imports keep working)."""

from cosmoinfer.posterior.member_moments import (  # noqa: F401
    mixture_cdf,
    mixture_cov,
    mixture_moments,
    mixture_pdf,
    mixture_ppf,
    mixture_sample,
)
