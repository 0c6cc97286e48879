"""The predictive distribution: what evaluators produce and the report, benchmarks and API consume.

* :class:`MixturePredictive`: a weighted Gaussian mixture per map in the network's unit
  coordinates, pushed to physical units by each prior's bijection (:class:`Bijection`).
* :class:`SamplePredictive`: draws plus log-densities, for methods that give nothing else.
* :class:`GridPredictive`: a density on per-map grids (the exact posterior of ``grf`` maps).
* :func:`read_predictions` / :func:`write_predictions`: ``predictions.h5``, which stores either.
* :func:`derived_s8`: the derived S8 = sigma_8 (Omega_m / 0.3)^0.5.

Reading a predictive from Python::

    from cosmoinfer.posterior import read_predictions
    pred = read_predictions("runs/quickstart/ensemble/predictions.h5")
    q = pred.predictive
    q.log_prob(pred.truth)            # joint log-density at the truth, (N,), nats, physical units
    q.marginal_cdf(pred.truth)        # PIT, (N, P)
    q.sample(1000, np.random.default_rng(0), truncate=True)   # (1000, N, P) inside the prior box
    q.central_interval(0.68)          # equal-tailed marginal intervals, ((N, P), (N, P))
"""

from cosmoinfer.posterior.bijection import Bijection
from cosmoinfer.posterior.grid import GridPredictive
from cosmoinfer.posterior.mixture import MixturePredictive
from cosmoinfer.posterior.predictions import FORMAT_VERSION, Predictions, read_predictions, write_predictions
from cosmoinfer.posterior.samples import SamplePredictive

__all__ = [
    "FORMAT_VERSION",
    "Bijection",
    "GridPredictive",
    "MixturePredictive",
    "Predictions",
    "SamplePredictive",
    "read_predictions",
    "write_predictions",
]
