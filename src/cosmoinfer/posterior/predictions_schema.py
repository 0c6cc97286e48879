"""The ``predictions.h5`` schema in memory: dataset names, the format version and :class:`Predictions`.

The file layout is described in :mod:`cosmoinfer.posterior.predictions`; writing is
:mod:`~cosmoinfer.posterior.predictions_write`, reading :mod:`~cosmoinfer.posterior.predictions_read`
and checking what was read :mod:`~cosmoinfer.posterior.predictions_validate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from cosmoinfer.data.priors import Prior
from cosmoinfer.posterior.bijection import Bijection
from cosmoinfer.posterior.mixture import MixturePredictive
from cosmoinfer.posterior.samples import SamplePredictive

#: Version of the layout written here (1: summaries only; 2: adds the ``predictive`` group).
FORMAT_VERSION = 2

REQUIRED = ("truth", "mean", "std", "std_aleatoric", "std_epistemic", "sim_id")
OPTIONAL = ("member_mean", "member_std", "cov")
#: Extra datasets with shape (N, P) that the report knows how to use.
EXTRA_NP = ("exact_mean", "exact_std", "exact_pit")
#: Extra datasets of the exact posterior (grf maps) with shape (N,) and (N, P, P); ``exact_grid`` is a group.
EXTRA_N = ("exact_log_prob", "exact_hpd")
EXTRA_NPP = ("exact_cov",)


@dataclass
class Predictions:
    """Contents of one ``predictions.h5``: arrays ``(N, P)`` unless stated, in physical units."""

    truth: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    std_aleatoric: np.ndarray
    std_epistemic: np.ndarray
    sim_id: np.ndarray  # (N,)
    param_names: list[str]
    method: str = "unknown"
    split: str = "unknown"
    task: str = "regression"
    member_mean: np.ndarray | None = None  # (M, N, P)
    member_std: np.ndarray | None = None  # (M, N, P)
    cov: np.ndarray | None = None  # (N, P, P)
    n_members: int | None = None
    n_samples: int | None = None
    priors: list[Prior] | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    path: str | None = None
    #: Consistency notes found while reading (shown in the report, never fatal).
    warnings: list[str] = field(default_factory=list)
    #: What was trained, on what, and what was evaluated (the ``run`` attribute; None in older files).
    run: dict[str, Any] | None = None
    #: The whole predictive distribution (None only for classification).
    predictive: MixturePredictive | SamplePredictive | None = None
    format_version: int = FORMAT_VERSION

    def __post_init__(self):
        if self.predictive is None and self.task == "regression":
            # built from the summaries (format 1): Gaussians in physical units
            self.predictive = legacy_predictive(self)

    @property
    def n(self) -> int:
        return int(self.truth.shape[0])

    @property
    def p(self) -> int:
        return int(self.truth.shape[1])

    @property
    def has_members(self) -> bool:
        return self.member_mean is not None and self.member_std is not None

    @property
    def mixture_weights(self) -> np.ndarray | None:
        return self.extra.get("mixture_weights")

    def subset(self, idx: np.ndarray) -> "Predictions":
        """The predictions of items ``idx`` (an index or boolean array over N)."""
        idx = np.asarray(idx)
        extra = {}
        for k, v in self.extra.items():
            if isinstance(v, dict):  # a group of per-item rows named by ``index`` (exact_grid)
                extra[k] = _subset_group(v, idx, self.n)
            elif k == "mixture_weights":
                extra[k] = v[:, idx] if v.ndim == 2 else v
            elif v.ndim >= 1 and v.shape[0] == self.n:
                extra[k] = v[idx]
            else:
                extra[k] = v
        return replace(
            self,
            truth=self.truth[idx], mean=self.mean[idx], std=self.std[idx],
            std_aleatoric=self.std_aleatoric[idx], std_epistemic=self.std_epistemic[idx],
            sim_id=self.sim_id[idx],
            member_mean=None if self.member_mean is None else self.member_mean[:, idx],
            member_std=None if self.member_std is None else self.member_std[:, idx],
            cov=None if self.cov is None else self.cov[idx],
            extra=extra, warnings=list(self.warnings),
            predictive=None if self.predictive is None else self.predictive.subset(idx),
        )

    def scaled(self, s: np.ndarray) -> "Predictions":
        """Predictions whose predictive is stretched by ``s (P,)`` about its mean in unit coordinates.

        See :meth:`MixturePredictive.scaled` (variance scaling for a single Gaussian). Summaries
        (``mean``, ``std``, ``cov``) are recomputed from the new predictive; member arrays are
        dropped.
        """
        s = np.asarray(s, dtype=np.float64)
        new = self.predictive.scaled(s)
        mean, cov = new.moments()
        std = np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
        ratio = std / self.std
        return replace(
            self, mean=mean, std=std, std_aleatoric=self.std_aleatoric * ratio,
            std_epistemic=self.std_epistemic * ratio, member_mean=None, member_std=None,
            cov=None if self.cov is None else cov,
            extra=dict(self.extra), warnings=list(self.warnings), predictive=new,
        )


def legacy_predictive(pred: Predictions) -> MixturePredictive:
    """The predictive of a format-1 file: its Gaussians in physical units (identity bijection).

    ``member_mean``/``member_std`` (with ``mixture_weights``) give one diagonal component per
    member; otherwise ``cov`` one full-covariance component; otherwise ``mean``/``std``.
    """
    bij = Bijection.identity(pred.p, pred.priors)
    if pred.has_members:
        w = pred.mixture_weights
        m = pred.member_mean.shape[0]
        w = np.full((pred.n, m), 1.0 / m) if w is None else np.broadcast_to(
            (w if w.ndim == 2 else w[:, None]).T, (pred.n, m))
        return MixturePredictive.from_gaussians(np.swapaxes(pred.member_mean, 0, 1),
                                                np.swapaxes(pred.member_std, 0, 1) ** 2, bij,
                                                pred.param_names, weights=w)
    if pred.cov is not None:
        return MixturePredictive.from_gaussians(pred.mean[:, None], pred.cov[:, None], bij, pred.param_names)
    return MixturePredictive.from_gaussians(pred.mean[:, None], pred.std[:, None] ** 2, bij, pred.param_names)


def _subset_group(g: dict, idx, n: int) -> dict:
    """The rows of a group whose ``index`` is among the items ``idx`` (index or boolean array over ``n``), re-indexed."""
    if "index" not in g:
        return g
    sel = np.arange(n)[np.asarray(idx)]
    new = np.full(n, -1)
    new[sel] = np.arange(sel.size)
    keep = new[g["index"]] >= 0
    out = {k: np.asarray(v)[keep] for k, v in g.items()}
    out["index"] = new[g["index"][keep]]
    return out
