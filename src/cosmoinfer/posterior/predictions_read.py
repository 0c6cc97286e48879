"""Reading ``predictions.h5`` (layout: :mod:`cosmoinfer.posterior.predictions`) into :class:`Predictions`.

:func:`read_predictions` loads the file's datasets and attributes, has
:mod:`~cosmoinfer.posterior.predictions_validate` check them, and rebuilds the predictive: from the
``predictive`` group (format 2) or, for older files, from the stored Gaussians.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from cosmoinfer.errors import InputError
from cosmoinfer.posterior.bijection import Bijection
from cosmoinfer.posterior.mixture import MixturePredictive
from cosmoinfer.posterior.predictions_schema import Predictions, legacy_predictive
from cosmoinfer.posterior.predictions_validate import validate
from cosmoinfer.posterior.samples import SamplePredictive


def _decode(v) -> Any:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.ndarray) and v.dtype.kind in "OSU":
        return [x.decode() if isinstance(x, bytes) else str(x) for x in v.ravel()]
    if isinstance(v, np.generic):
        return v.item()
    return v


def read_predictions(path: str | os.PathLike) -> Predictions:
    """Read and validate ``predictions.h5``.

    Every problem (missing file, not HDF5, missing dataset or attribute, inconsistent shapes,
    non-finite values, non-positive widths, bad priors JSON) raises
    ``InputError(path, "<dataset>: <what>")`` with a one-line message naming the dataset.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found (pass the predictions.h5 written by cosmoinfer-evaluate)")
    if path.is_dir() or not h5py.is_hdf5(path):
        raise InputError(path, "not an HDF5 file (expected predictions.h5 written by cosmoinfer-evaluate)")
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: _decode(f.attrs[k]) for k in f.attrs.keys()}
            data: dict[str, np.ndarray] = {}
            for k in f.keys():
                obj = f[k]
                if isinstance(obj, h5py.Group) and k != "predictive":  # e.g. exact_grid: a dict of arrays
                    data[k] = {kk: obj[kk][()] for kk in obj.keys() if isinstance(obj[kk], h5py.Dataset)}
                if not isinstance(obj, h5py.Dataset):
                    continue
                data[k] = obj[()]
            group = None
            if "predictive" in f:
                g = f["predictive"]
                if not isinstance(g, h5py.Group):
                    raise InputError(path, "'predictive' is not a group")
                group = {"attrs": {k: _decode(g.attrs[k]) for k in g.attrs.keys()},
                         "data": {k: g[k][()] for k in g.keys() if isinstance(g[k], h5py.Dataset)}}
    except OSError as err:
        raise InputError(path, f"cannot read HDF5 file: {err}") from None
    pred = validate(path, data, attrs)
    if pred.task == "regression":
        pred.predictive = (_read_predictive(path, group, pred) if group is not None
                           else legacy_predictive(pred))
        pred.format_version = int(attrs.get("format_version", 1)) if group is not None else 1
    return pred


def _read_predictive(path: Path, group: dict, pred: Predictions):
    """Validate the ``predictive`` group against the file's N items and P parameters."""
    attrs, data = group["attrs"], group["data"]
    n, p = pred.n, pred.p
    kind = attrs.get("kind")
    try:
        bij = Bijection.from_attrs(json.loads(attrs["bijection"]))
    except (KeyError, ValueError, TypeError) as err:
        raise InputError(path, f"predictive: attribute 'bijection' is missing or invalid ({err})") from None
    if bij.p != p or len(bij.shift) != p or len(bij.log) != p:
        raise InputError(path, f"predictive: attribute 'bijection' describes {bij.p} parameters, expected {p}")

    def arr(k: str, shape_ok, what: str) -> np.ndarray:
        if k not in data:
            raise InputError(path, f"missing dataset 'predictive/{k}'")
        a = data[k]
        if not isinstance(a, np.ndarray) or a.dtype.kind not in "biuf":
            raise InputError(path, f"dataset 'predictive/{k}' is not numeric")
        if not shape_ok(a.shape):
            raise InputError(path, f"dataset 'predictive/{k}' has shape {a.shape}; expected {what}")
        return a.astype(np.float64)

    if kind == "gaussian_mixture":
        w = arr("weights", lambda s: len(s) == 2 and s[0] == n and s[1] >= 1, f"({n}, K)")
        k = w.shape[1]
        loc = arr("loc", lambda s: s == (n, k, p), f"({n}, {k}, {p})")
        tril = arr("scale_tril", lambda s: s == (n, k, p, p), f"({n}, {k}, {p}, {p})")
        for name, a in (("weights", w), ("loc", loc), ("scale_tril", tril)):
            if not np.all(np.isfinite(a)):
                raise InputError(path, f"dataset 'predictive/{name}' has non-finite values (NaN or inf)")
        if np.any(w < 0) or np.any(w.sum(axis=1) <= 0):
            raise InputError(path, "dataset 'predictive/weights' must be non-negative with a positive sum per item")
        if np.any(np.diagonal(tril, axis1=-2, axis2=-1) <= 0):
            raise InputError(path, "dataset 'predictive/scale_tril' has a diagonal entry <= 0 "
                                   "(Cholesky factors need a positive diagonal)")
        return MixturePredictive(w, loc, tril, bij, list(pred.param_names))
    if kind == "samples":
        smp = arr("samples", lambda s: len(s) == 3 and s[0] == n and s[1] >= 2 and s[2] == p, f"({n}, S, {p})")
        slp = arr("sample_log_prob", lambda s: s == smp.shape[:2], f"{smp.shape[:2]}")
        tlp = arr("truth_log_prob", lambda s: s == (n,), f"({n},)")
        if not (np.all(np.isfinite(smp)) and np.all(np.isfinite(slp))):
            raise InputError(path, "dataset 'predictive/samples' or 'predictive/sample_log_prob' has non-finite values")
        if np.any(np.isnan(tlp)) or np.any(tlp == np.inf):
            raise InputError(path, "dataset 'predictive/truth_log_prob' has NaN or +inf values")
        return SamplePredictive(smp, slp, tlp, bij, list(pred.param_names))
    raise InputError(path, f"predictive: attribute 'kind' is {kind!r}; expected 'gaussian_mixture' or 'samples'")
