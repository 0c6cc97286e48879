"""Writing ``predictions.h5`` (layout: :mod:`cosmoinfer.posterior.predictions`), atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import h5py
import numpy as np

from cosmoinfer.data.priors import Prior
from cosmoinfer.errors import atomic_path
from cosmoinfer.posterior.mixture import MixturePredictive
from cosmoinfer.posterior.predictions_schema import FORMAT_VERSION, OPTIONAL
from cosmoinfer.posterior.samples import SamplePredictive


def _as_float(name: str, a, ndim: int) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {a.shape}")
    return a


def write_predictions(
    path: str | os.PathLike,
    *,
    truth: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    std_aleatoric: np.ndarray,
    std_epistemic: np.ndarray,
    sim_id: np.ndarray,
    param_names: Sequence[str],
    method: str,
    split: str,
    member_mean: np.ndarray | None = None,
    member_std: np.ndarray | None = None,
    cov: np.ndarray | None = None,
    n_members: int | None = None,
    n_samples: int | None = None,
    priors: Sequence[Prior] | None = None,
    extra_datasets: Mapping[str, np.ndarray] | None = None,
    extra_attrs: Mapping[str, Any] | None = None,
    task: str = "regression",
    predictive: MixturePredictive | SamplePredictive | None = None,
) -> Path:
    """Write ``predictions.h5`` atomically (temp file next to ``path``, renamed on success).

    Args:
        truth, mean, std, std_aleatoric, std_epistemic: ``(N, P)`` in physical units.
        sim_id: ``(N,)`` integer simulation index of each item.
        param_names: ``P`` names, in column order.
        method, split: stored as attributes (``single | ensemble | mc_dropout | bnn | ...``; ``test``...).
        member_mean, member_std: optional ``(M, N, P)`` per-member Gaussians.
        cov: optional ``(N, P, P)`` predictive covariance (full-covariance heads).
        n_members, n_samples: ensemble size or number of MC-dropout passes (attribute).
        priors: optional priors, stored as the JSON attribute ``priors``.
        extra_datasets: further datasets, e.g. ``exact_mean``/``exact_std (N, P)``, ``mixture_weights``.
        extra_attrs: further attributes; non-scalar values other than lists of str/numbers are
            stored as JSON strings.
        task: ``regression`` or ``classification``.
        predictive: the whole predictive distribution, stored in the ``predictive`` group (its
            items must be the ``N`` rows of ``truth``).

    Returns:
        ``Path(path)``. Raises ``ValueError`` on inconsistent shapes (a caller bug).
    """
    truth = _as_float("truth", truth, 2)
    n, p = truth.shape
    arrays = {"truth": truth}
    for name, a in (("mean", mean), ("std", std), ("std_aleatoric", std_aleatoric),
                    ("std_epistemic", std_epistemic)):
        arrays[name] = _as_float(name, a, 2)
        if arrays[name].shape != (n, p):
            raise ValueError(f"{name}: shape {arrays[name].shape}, expected {(n, p)} like truth")
    sid = np.asarray(sim_id)
    if sid.shape != (n,):
        raise ValueError(f"sim_id: shape {sid.shape}, expected {(n,)}")
    arrays["sim_id"] = sid.astype(np.int64)
    if len(param_names) != p:
        raise ValueError(f"param_names has {len(param_names)} names for P={p} columns")
    if (member_mean is None) != (member_std is None):
        raise ValueError("member_mean and member_std go together")
    if member_mean is not None:
        arrays["member_mean"] = _as_float("member_mean", member_mean, 3)
        arrays["member_std"] = _as_float("member_std", member_std, 3)
        for k in ("member_mean", "member_std"):
            if arrays[k].shape[1:] != (n, p):
                raise ValueError(f"{k}: shape {arrays[k].shape}, expected (M, {n}, {p})")
    if cov is not None:
        arrays["cov"] = _as_float("cov", cov, 3)
        if arrays["cov"].shape != (n, p, p):
            raise ValueError(f"cov: shape {arrays['cov'].shape}, expected {(n, p, p)}")
    for k, v in (extra_datasets or {}).items():
        if k in arrays or k in OPTIONAL:
            raise ValueError(f"extra dataset {k!r} clashes with a standard dataset")
        arrays[k] = {kk: np.asarray(vv) for kk, vv in v.items()} if isinstance(v, Mapping) else np.asarray(v)
    if predictive is not None and (predictive.n != n or predictive.p != p):
        raise ValueError(f"predictive: {predictive.n} items x {predictive.p} parameters, expected {(n, p)}")

    path = Path(path)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for k, v in arrays.items():
                if isinstance(v, dict):  # a dict-valued extra (exact_grid) is a group of datasets
                    g = f.create_group(k)
                    for kk, vv in v.items():
                        g.create_dataset(kk, data=vv, compression="gzip", compression_opts=1)
                else:
                    f.create_dataset(k, data=v)
            f.attrs["format_version"] = FORMAT_VERSION
            if predictive is not None:
                _write_predictive(f.create_group("predictive"), predictive)
            f.attrs["param_names"] = np.array([str(s) for s in param_names], dtype=h5py.string_dtype())
            f.attrs["method"] = str(method)
            f.attrs["split"] = str(split)
            f.attrs["task"] = str(task)
            if n_members is not None:
                f.attrs["n_members"] = int(n_members)
            if n_samples is not None:
                f.attrs["n_samples"] = int(n_samples)
            if priors is not None:
                f.attrs["priors"] = json.dumps([pr.to_dict() for pr in priors])
            for k, v in (extra_attrs or {}).items():
                f.attrs[k] = _attr_value(v)
    return path


def _write_predictive(g: h5py.Group, pred) -> None:
    g.attrs["kind"] = pred.kind
    g.attrs["bijection"] = json.dumps(pred.bijection.to_attrs())
    g.attrs["param_names"] = np.array(list(pred.param_names), dtype=h5py.string_dtype())
    if pred.kind == "gaussian_mixture":
        names = ("weights", "loc", "scale_tril")
    else:
        names = ("samples", "sample_log_prob", "truth_log_prob")
    for k in names:
        g.create_dataset(k, data=getattr(pred, k), compression="gzip", compression_opts=1, shuffle=True)


def _attr_value(v):
    if isinstance(v, (str, bool, int, float, np.integer, np.floating)):
        return v
    if isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v):
        return np.array(list(v), dtype=h5py.string_dtype())
    if isinstance(v, (list, tuple, np.ndarray)) and np.asarray(v).dtype.kind in "biuf":
        return np.asarray(v)
    return json.dumps(v)
