"""``predictions.h5``: the file evaluate writes and report reads (DESIGN.md contract).

This module is the public face of the format: the in-memory type and dataset names live in
:mod:`~cosmoinfer.posterior.predictions_schema`, writing in :mod:`~cosmoinfer.posterior.predictions_write`,
reading in :mod:`~cosmoinfer.posterior.predictions_read` and its checks in
:mod:`~cosmoinfer.posterior.predictions_validate`.

Layout (all values in physical parameter units, never the normalised ones):

datasets
    ``truth (N, P)``, ``mean (N, P)``, ``std (N, P)``, ``std_aleatoric (N, P)``,
    ``std_epistemic (N, P)``, ``sim_id (N,)``; optional ``member_mean (M, N, P)`` and
    ``member_std (M, N, P)`` (ensemble members or MC-dropout passes), ``cov (N, P, P)`` (full-
    covariance heads; its diagonal equals ``std²``), and extras such as ``mixture_weights (M,)`` /
    ``(M, N)`` or the exact GRF posterior (``cosmoinfer.uncertainty.evaluate.exact_posterior_datasets``):
    ``exact_mean``, ``exact_std``, ``exact_pit (N, P)``, ``exact_cov (N, P, P)``, ``exact_log_prob``,
    ``exact_hpd (N,)`` and the group ``exact_grid`` (``index (m,)``, ``omega_m (m, G)``, ``sigma_8
    (m, G)``, ``log_density (m, G, G)``; read into ``Predictions.extra["exact_grid"]`` as a dict).
group ``predictive`` (format version 2): the whole predictive distribution, faithfully
    ``kind = "gaussian_mixture"``: ``weights (N, K)``, ``loc (N, K, P)`` and ``scale_tril
    (N, K, P, P)`` in the network's unit coordinates, with the attribute ``bijection`` (JSON:
    per-parameter ``shift``, ``scale``, ``log`` and the prior box) that maps them to physical
    units (:class:`~cosmoinfer.posterior.mixture.MixturePredictive`);
    ``kind = "samples"``: ``samples (N, S, P)`` physical draws, ``sample_log_prob (N, S)`` and
    ``truth_log_prob (N,)`` (:class:`~cosmoinfer.posterior.samples.SamplePredictive`).
    Files without the group (format version 1) still load: their predictive is rebuilt from
    ``member_mean``/``member_std``, ``cov`` or ``mean``/``std`` as Gaussians in physical units.
attributes
    ``format_version`` (2), ``param_names`` (list of str), ``method`` (e.g. ``single``,
    ``ensemble``, ``mc_dropout``, ``bnn``), ``split`` (e.g. ``test``), ``n_members`` or ``n_samples``;
    optional ``priors`` (JSON list of :meth:`Prior.to_dict`), ``task`` (``regression`` default,
    or ``classification``), ``run`` (JSON object of :func:`cosmoinfer.provenance.run_details`:
    what was trained, on what, for how long; read into ``Predictions.run``, ``None`` when absent).

Classification predictions (a Bernoulli head) have ``task="classification"``, ``truth (N, 1)``
in {0, 1}, ``mean (N, 1)`` the predicted probability and ``std = sqrt(p (1 − p))``.
"""

from cosmoinfer.posterior.predictions_read import read_predictions
from cosmoinfer.posterior.predictions_schema import (
    EXTRA_N,
    EXTRA_NP,
    EXTRA_NPP,
    FORMAT_VERSION,
    OPTIONAL,
    REQUIRED,
    Predictions,
    legacy_predictive,
)
from cosmoinfer.posterior.predictions_write import write_predictions

__all__ = [
    "EXTRA_N",
    "EXTRA_NP",
    "EXTRA_NPP",
    "FORMAT_VERSION",
    "OPTIONAL",
    "REQUIRED",
    "Predictions",
    "legacy_predictive",
    "read_predictions",
    "write_predictions",
]
